import pytest
import torch
import torch.nn.functional as F

from attacks.pgd import ascend, cw_loss, fgsm, pgd, prediction_judge, project
from attacks.suite import create_attack

EPS = 0.1


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def mean_ce(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


@pytest.mark.parametrize("start", ["uniform", "gaussian", "none"])
def test_linf_pgd_stays_in_the_ball_and_the_box(trained_mlp, mnist_test_slice, start):
    x, y = mnist_test_slice
    x_adv = pgd(trained_mlp, x, y, epsilon=EPS, steps=10, step_size=0.01, random_start=start)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not x_adv.requires_grad
    assert accuracy(trained_mlp, x_adv, y) < accuracy(trained_mlp, x, y)


def test_l2_pgd_stays_in_the_ball_and_the_box(trained_mlp, mnist_test_slice):
    x, y = mnist_test_slice
    x_adv = pgd(trained_mlp, x, y, epsilon=1.5, steps=10, step_size=0.3, norm="l2")
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= 1.5 + 1e-4
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert accuracy(trained_mlp, x_adv, y) < accuracy(trained_mlp, x, y)


def test_robust_accuracy_never_exceeds_clean(trained_mlp, mnist_test_slice):
    x, y = mnist_test_slice
    clean = accuracy(trained_mlp, x, y)
    assert clean > 0.85
    for loss in ("ce", "cw"):
        x_adv = pgd(trained_mlp, x, y, epsilon=EPS, steps=20, step_size=0.01, loss=loss,
                    random_start="none")
        assert accuracy(trained_mlp, x_adv, y) <= clean
        # an example the attack leaves correctly classified was correct to begin with
        with torch.no_grad():
            robust = trained_mlp(x_adv).argmax(1) == y
            assert not (robust & (trained_mlp(x).argmax(1) != y)).any()


def test_more_steps_never_help_the_model_on_average(trained_mlp, mnist_test_slice):
    x, y = mnist_test_slice
    results = []
    for steps in (1, 5, 20, 50):
        x_adv = pgd(trained_mlp, x, y, epsilon=0.05, steps=steps, step_size=0.0125,
                    random_start="none")
        results.append((accuracy(trained_mlp, x_adv, y), mean_ce(trained_mlp, x_adv, y)))
    pairs = list(zip(results, results[1:], strict=False))
    assert all(after[0] <= before[0] + 1 / len(y) for before, after in pairs)  # accuracy
    assert all(after[1] >= before[1] for before, after in pairs)  # mean CE


def test_restarts_keep_each_examples_strongest_run(trained_mlp, mnist_test_slice):
    x, y = mnist_test_slice
    x, y = x[:128], y[:128]
    kwargs = dict(epsilon=0.05, steps=3, step_size=0.02, random_start="uniform")
    best = pgd(trained_mlp, x, y, restarts=4, generator=torch.Generator().manual_seed(7), **kwargs)
    generator = torch.Generator().manual_seed(7)
    runs = [pgd(trained_mlp, x, y, generator=generator, **kwargs) for _ in range(4)]
    with torch.no_grad():
        fooled = torch.stack([trained_mlp(r).argmax(1) != y for r in runs])
        losses = torch.stack([F.cross_entropy(trained_mlp(r), y, reduction="none")
                              for r in runs])
        best_fooled = trained_mlp(best).argmax(1) != y
        best_loss = F.cross_entropy(trained_mlp(best), y, reduction="none")
    assert torch.equal(best_fooled, fooled.any(0))
    # among the runs of the same outcome, the kept one has the highest loss
    same_outcome = fooled == best_fooled[None]
    expected = losses.masked_fill(~same_outcome, float("-inf")).max(0).values
    assert torch.allclose(best_loss, expected, atol=1e-5)
    assert best_fooled.float().mean() >= fooled.float().mean(1).max()


def test_fgsm_is_one_signed_step(trained_mlp, mnist_test_slice):
    x, y = mnist_test_slice
    x = x[:32].clone().requires_grad_(True)
    y = y[:32]
    (grad,) = torch.autograd.grad(F.cross_entropy(trained_mlp(x), y, reduction="sum"), x)
    expected = (x + EPS * grad.sign()).clamp(0, 1).detach()
    assert torch.allclose(fgsm(trained_mlp, x.detach(), y, epsilon=EPS), expected)


def test_no_parameter_gradients_and_modes_are_restored():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10))
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    model.train()
    bn_before = model[1].running_mean.clone()
    pgd(model, x, y, epsilon=0.1, steps=3, step_size=0.03)
    assert model.training
    assert torch.equal(model[1].running_mean, bn_before)  # eval mode during the attack
    assert all(p.grad is None for p in model.parameters())
    pgd(model, x, y, epsilon=0.1, steps=1, step_size=0.03, mode="train")
    assert not torch.equal(model[1].running_mean, bn_before)  # asked for train mode
    model.eval()
    pgd(model, x, y, epsilon=0.1, steps=1, step_size=0.03, mode="train")
    assert not model.training


def test_custom_loss_callable_is_maximised(trained_mlp, mnist_test_slice):
    x, y = mnist_test_slice
    target = torch.full_like(y, 3)

    def toward_three(logits, labels):
        return -F.cross_entropy(logits, target, reduction="none")

    x_adv = pgd(trained_mlp, x, y, epsilon=0.2, steps=20, step_size=0.02, loss=toward_three)
    with torch.no_grad():
        assert (trained_mlp(x_adv).argmax(1) == 3).float().mean() > 0.5


def test_cw_loss_is_the_margin():
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 4.0]])
    y = torch.tensor([1, 0])
    assert torch.allclose(cw_loss(logits, y), torch.tensor([-1.0, 3.5]))


def test_projection_and_bad_arguments():
    x = torch.full((1, 4), 0.5)
    assert torch.allclose(project(x + 1.0, x, 0.1, "linf"), torch.full((1, 4), 0.6))
    l2 = project(x + torch.tensor([[0.3, 0.4, 0.0, 0.0]]), x, 0.25, "l2")
    assert torch.allclose((l2 - x).norm(), torch.tensor(0.25))
    model = torch.nn.Linear(4, 2)
    y = torch.tensor([0])
    for bad in (dict(norm="l1"), dict(loss="hinge"), dict(random_start="normal"),
                dict(restarts=0), dict(keep="first"), dict(eot_samples=0)):
        with pytest.raises(ValueError):
            pgd(model, x, y, epsilon=0.1, steps=1, step_size=0.1, **bad)


# -- the strongest iterate: keep="best" ------------------------------------------------------
class Band(torch.nn.Module):
    """Two classes on one input u: z₁ − z₀ = a − b·(u − c)², so the wrong class 1 wins only in
    the band |u − c| < √(a/b) (none when a < 0). L∞ PGD with steps of 0.1 climbs to c and then
    oscillates around it: from u = 0.5 with c = 0.63 the iterates are 0.5, 0.6, 0.7, 0.6, 0.7,
    …, and with a = 1, b = 400 the band (half-width 0.05) holds 0.6 but not 0.7."""

    def __init__(self, a=1.0, b=400.0, c=0.63):
        super().__init__()
        self.a, self.b, self.c = a, b, c
        self.calls = 0  # forward passes, to account for the cost of judging

    def forward(self, x):
        self.calls += 1
        wrong = self.a - self.b * (x[:, 0] - self.c) ** 2
        return torch.stack([torch.zeros_like(wrong), wrong], dim=1)


BAND = dict(epsilon=0.45, steps=4, step_size=0.1, random_start="none")


def band_points():
    """Starts 0.5 (in the band at step 1 and 3, out of it at the end), 0.54 (in at 0.64 on
    steps 1 and 3, out at 0.54 at the end) and 0.2 (0.3, 0.4, 0.5, 0.6: in the band only at
    the end); true class 0 everywhere."""
    x = torch.tensor([[0.5], [0.54], [0.2]], dtype=torch.float64)
    return x, torch.zeros(3, dtype=torch.long)


def fooled(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def test_best_keeps_a_misclassified_iterate_the_last_one_left():
    model = Band()
    x, y = band_points()
    last = pgd(model, x, y, **BAND)
    best = pgd(model, x, y, keep="best", **BAND)
    assert torch.allclose(last, torch.tensor([[0.7], [0.54], [0.6]], dtype=torch.float64))
    assert fooled(model, last, y).tolist() == [False, False, True]  # last: two look robust
    assert fooled(model, best, y).all()  # best: every example is broken
    assert torch.allclose(best, torch.tensor([[0.6], [0.64], [0.6]], dtype=torch.float64))
    assert (best - x).abs().max() <= BAND["epsilon"] + 1e-12
    assert best.min() >= 0 and best.max() <= 1 and not best.requires_grad
    # the same with restarts (runs combine by the same rule) and through the evaluation suite
    assert fooled(model, pgd(model, x, y, keep="best", restarts=3, **BAND), y).all()
    suite_pgd = create_attack("pgd", **BAND)
    assert "keep" not in suite_pgd.settings  # a correctness fix, not a new attack
    assert fooled(model, suite_pgd(model, x, y), y).all()


def test_best_never_has_lower_loss_than_last_when_nothing_is_misclassified():
    model = Band(a=-1.0)  # class 1 never wins
    x, y = band_points()
    last = pgd(model, x, y, **BAND)
    best = pgd(model, x, y, keep="best", **BAND)
    assert not fooled(model, best, y).any()
    with torch.no_grad():
        loss_last = F.cross_entropy(model(last), y, reduction="none")
        loss_best = F.cross_entropy(model(best), y, reduction="none")
    assert (loss_best >= loss_last).all()
    assert loss_best[0] > loss_last[0]  # 0.6 is nearer the peak than the final 0.7


def test_start_point_counts_and_judging_reuses_the_steps_forward_passes():
    model = Band(c=0.5)  # the start itself is misclassified; the steps leave the band
    x, y = torch.tensor([[0.5 + 1e-3]], dtype=torch.float64), torch.zeros(1, dtype=torch.long)
    settings = dict(BAND, steps=3)  # 0.501, 0.401, 0.501, 0.401
    assert fooled(model, x, y).all()
    assert not fooled(model, pgd(model, x, y, **settings), y).any()
    assert torch.equal(pgd(model, x, y, keep="best", **settings), x)
    # one forward pass per step for the gradient (iterate t is judged from it), one for the end;
    # restarts with "last" judge each run's end as before, with "best" they reuse the verdicts
    for keep, restarts, eot, calls in (("last", 1, 1, 3), ("best", 1, 1, 4), ("best", 3, 1, 12),
                                       ("last", 3, 1, 12), ("best", 1, 5, 20)):
        model.calls = 0
        pgd(model, x, y, keep=keep, restarts=restarts, eot_samples=eot, **settings)
        assert model.calls == calls, (keep, restarts, eot)


def test_ascend_on_an_opaque_objective_keeps_the_best_by_the_models_prediction():
    model = Band()
    x, y = band_points()

    def objective(x_adv):
        return F.cross_entropy(model(x_adv), y, reduction="sum")

    settings = dict(BAND, random_start="none")
    assert fooled(model, ascend(objective, x, **settings), y).tolist() == [False, False, True]
    best = ascend(objective, x, keep="best", judge=prediction_judge(model, y), **settings)
    assert fooled(model, best, y).all()
    with pytest.raises(ValueError, match="judge"):
        ascend(objective, x, keep="best", **settings)
    with pytest.raises(ValueError, match="keep"):
        ascend(objective, x, keep="first", **settings)


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_on_mnist_best_keeps_every_break_of_last_and_at_least_its_loss(trained_mlp,
                                                                        mnist_test_slice, loss):
    """Same seed, same trajectory: "best" only chooses among the iterates "last" walked
    through, so every example last breaks stays broken, and the rest lose no loss."""
    x, y = mnist_test_slice
    x, y = x[:256], y[:256]
    settings = dict(epsilon=0.1, steps=10, step_size=0.05, loss=loss)  # large steps oscillate
    last = pgd(trained_mlp, x, y, generator=torch.Generator().manual_seed(3), **settings)
    best = pgd(trained_mlp, x, y, generator=torch.Generator().manual_seed(3), keep="best",
               **settings)
    broken_last, broken_best = fooled(trained_mlp, last, y), fooled(trained_mlp, best, y)
    assert broken_last.sum() > 100  # a real fight
    assert (broken_best | ~broken_last).all()
    loss_fn = F.cross_entropy if loss == "ce" else cw_loss
    with torch.no_grad():
        kwargs = {"reduction": "none"} if loss == "ce" else {}
        loss_last = loss_fn(trained_mlp(last), y, **kwargs)
        loss_best = loss_fn(trained_mlp(best), y, **kwargs)
    unbroken = ~broken_best
    assert (loss_best[unbroken] >= loss_last[unbroken] - 1e-5).all()
    assert (best - x).abs().max() <= 0.1 + 1e-6 and best.min() >= 0 and best.max() <= 1
