import pytest
import torch
import torch.nn.functional as F

from attacks.pgd import cw_loss, fgsm, pgd, project

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
                dict(restarts=0)):
        with pytest.raises(ValueError):
            pgd(model, x, y, epsilon=0.1, steps=1, step_size=0.1, **bad)
