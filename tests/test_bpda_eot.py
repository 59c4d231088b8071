"""Attacks against obfuscated gradients (Athalye et al. 2018, §4.1) on real MNIST: EOT for a
randomised model, BPDA for a model behind a non-differentiable preprocessing."""

import pytest
import torch
from torch import nn

from attacks.bpda import bpda
from attacks.pgd import pgd
from attacks.suite import create_attack

EPS = 0.1


# -- EOT ---------------------------------------------------------------------------------------
class NoisyInput(nn.Module):
    """A classifier that adds fresh N(0, σ²) noise to its input on every call, in eval mode
    too: every forward pass, and so every gradient, is a random draw."""

    def __init__(self, inner: nn.Module, sigma: float):
        super().__init__()
        self.inner, self.sigma = inner, sigma

    def forward(self, x):
        return self.inner(x + self.sigma * torch.randn_like(x))


def expected_accuracy(model, x, y, draws=10, seed=123):
    """Mean accuracy over ``draws`` forward passes of a randomised model, with a fixed seed."""
    torch.manual_seed(seed)
    with torch.no_grad():
        return sum((model(x).argmax(1) == y).float().mean().item() for _ in range(draws)) / draws


def attacked(spec, model, x, y, seed=0, **params):
    torch.manual_seed(seed)  # a randomised model draws its noise from the global generator
    return create_attack(spec, epsilon=EPS, **params)(model, x, y)


def test_eot_beats_single_sample_gradients_on_a_randomised_model(trained_mlp, mnist_test_slice):
    x, y = mnist_test_slice
    model = NoisyInput(trained_mlp, sigma=0.5).eval()
    clean = expected_accuracy(model, x, y)
    plain = expected_accuracy(model, attacked("pgd:steps=3", model, x, y), y)
    eot = expected_accuracy(model, attacked("pgd:steps=3,eot_samples=20", model, x, y), y)
    print(f"clean {clean:.3f}, PGD-3 {plain:.3f}, PGD-3 with EOT-20 {eot:.3f}")
    assert clean > 0.7
    assert plain < clean - 0.3  # a real fight either way
    assert eot < plain - 0.03  # averaging 20 passes per step finds clearly stronger points


def test_eot_on_a_deterministic_model_is_plain_pgd(trained_mlp, mnist_test_slice):
    x, y = mnist_test_slice
    x, y = x[:64], y[:64]
    settings = dict(epsilon=EPS, steps=5, step_size=0.03, keep="best")
    plain = pgd(trained_mlp, x, y, generator=torch.Generator().manual_seed(1), **settings)
    eot = pgd(trained_mlp, x, y, generator=torch.Generator().manual_seed(1), eot_samples=4,
              **settings)
    assert torch.allclose(plain, eot, atol=1e-6)  # the mean of equal gradients


def test_eot_and_bpda_settings_are_recorded_only_when_asked_for():
    plain = create_attack("pgd:steps=100", epsilon=EPS)
    assert not {"eot_samples", "bpda", "keep"} & set(plain.settings)
    eot = create_attack("pgd:steps=100,eot_samples=20", epsilon=EPS)
    assert eot.settings == {**plain.settings, "eot_samples": 20}
    assert create_attack("l2-pgd:eot_samples=5,bpda=true", epsilon=1.0).settings["bpda"] is True
    for spec in ("fgsm", "autoattack", "apgd-ce", "apgd-t", "fab-t", "square"):
        assert create_attack(f"{spec}:bpda=true", epsilon=EPS).settings["bpda"] is True
        assert "bpda" not in create_attack(spec, epsilon=EPS).settings
    with pytest.raises(ValueError, match="eot_samples"):
        create_attack("pgd:eot_samples=0", epsilon=EPS)


# -- BPDA --------------------------------------------------------------------------------------
class Quantise(nn.Module):
    """Round every pixel to one of ``levels`` grey levels: gradient zero almost everywhere."""

    def __init__(self, levels: int = 8):
        super().__init__()
        self.levels = levels

    def forward(self, x):
        return torch.round(x * (self.levels - 1)) / (self.levels - 1)


class SoftQuantise(Quantise):
    """Quantisation with a smooth approximation for the backward pass: a sum of sigmoids, one
    per threshold between grey levels, with temperature ``tau``."""

    tau = 0.2

    def approximation(self, x):
        thresholds = torch.arange(self.levels - 1, dtype=x.dtype) + 0.5
        steps = torch.sigmoid((x.unsqueeze(-1) * (self.levels - 1) - thresholds) / self.tau)
        return steps.sum(-1) / (self.levels - 1)


class Preprocessed(nn.Module):
    """A classifier behind a declared preprocessing, which its forward applies first."""

    def __init__(self, inner: nn.Module, preprocessing: nn.Module):
        super().__init__()
        self.inner, self.preprocessing = inner, preprocessing

    def forward(self, x):
        return self.inner(self.preprocessing(x))


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def input_gradient(model, x, y):
    x = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
    return torch.autograd.grad(loss, x)[0]


@pytest.mark.parametrize("spec", ["pgd:steps=20", "fgsm", "apgd-ce"])
def test_bpda_breaks_a_quantised_mlp_that_masks_gradients(trained_mlp, mnist_test_slice, spec):
    x, y = mnist_test_slice
    x, y = x[:256], y[:256]
    model = Preprocessed(trained_mlp, Quantise(levels=8)).eval()
    clean = accuracy(model, x, y)
    assert input_gradient(model, x, y).abs().max() == 0  # the gradient is masked
    without = accuracy(model, create_attack(spec, epsilon=0.15)(model, x, y), y)
    x_adv = create_attack(spec, epsilon=0.15, bpda=True)(model, x, y)
    with_bpda = accuracy(model, x_adv, y)  # judged by the real, quantising model
    print(f"{spec}: clean {clean:.3f}, without BPDA {without:.3f}, with BPDA {with_bpda:.3f}")
    assert clean > 0.85
    assert without > clean - 0.05  # zero gradients: the attack goes nowhere
    assert with_bpda < clean - 0.6
    assert (x_adv - x).abs().max() <= 0.15 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert input_gradient(model, x, y).abs().max() == 0  # the model is left as it was


def test_bpda_keeps_the_forward_values_and_back_propagates_the_approximation(trained_mlp,
                                                                             mnist_test_slice):
    x, y = mnist_test_slice
    x, y = x[:32], y[:32]
    quantise = SoftQuantise(levels=8)
    model = Preprocessed(trained_mlp, quantise).eval()
    with torch.no_grad():
        exact = model(x)
    # d loss / dx = (d loss / d p(x)) · g'(x), g the approximation, elementwise
    p = quantise(x).requires_grad_(True)
    upstream = torch.autograd.grad(nn.functional.cross_entropy(trained_mlp(p), y,
                                                               reduction="sum"), p)[0]
    x_g = x.clone().requires_grad_(True)
    slope = torch.autograd.grad(quantise.approximation(x_g).sum(), x_g)[0]
    with bpda(model) as attackable:
        x_in = x.clone().requires_grad_(True)
        logits = attackable(x_in)
        assert torch.equal(logits.detach(), exact)  # bit for bit the real model's values
        grad = torch.autograd.grad(nn.functional.cross_entropy(logits, y, reduction="sum"),
                                   x_in)[0]
    assert torch.allclose(grad, upstream * slope, atol=1e-6)
    assert grad.abs().max() > 0
    # without an approximation, the backward pass is the identity: g'(x) = 1
    plain = Preprocessed(trained_mlp, Quantise(levels=8)).eval()
    with bpda(plain) as attackable:
        assert torch.allclose(input_gradient(attackable, x, y), upstream, atol=1e-6)
    # and the user's approximation is what a BPDA attack follows
    x_adv = create_attack("pgd:steps=20", epsilon=0.15, bpda=True)(model, x, y)
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.5


def test_bpda_on_a_model_without_preprocessing_names_the_model(trained_mlp, mnist_test_slice):
    x, y = mnist_test_slice
    attack = create_attack("pgd:steps=2,bpda=true", epsilon=EPS)
    with pytest.raises(ValueError, match=type(trained_mlp).__name__):
        attack(trained_mlp, x[:4], y[:4])
    with bpda(trained_mlp, enabled=False) as same:  # asked for nothing, nothing needed
        assert same is trained_mlp


class RandomPhase(nn.Module):
    """Input jitter ``a·sin(ω·x + φ)`` with a fresh random phase φ per pixel and pass: the
    logits barely move (a is small), but every single-pass input gradient is dominated by a
    random ``a·ω·cos(·)`` factor whose expectation is zero — EOT recovers the true gradient."""

    def __init__(self, inner: nn.Module, a: float = 0.02, omega: float = 1000.0):
        super().__init__()
        self.inner, self.a, self.omega = inner, a, omega

    def forward(self, x):
        phase = 2 * torch.pi * torch.rand_like(x)
        return self.inner(x + self.a * torch.sin(self.omega * x + phase))


def test_a_randomised_model_plain_autoattack_overrates_is_rated_lower_with_eot(
        trained_mlp, mnist_test_slice):
    from attacks.evaluate import evaluate_model

    x, y = (t[:64] for t in mnist_test_slice)
    model = RandomPhase(trained_mlp).eval()
    rated = {}
    for eot in ("never", "auto"):
        torch.manual_seed(0)
        rated[eot] = evaluate_model(model, x, y, attacks=["aa-standard"], epsilon=EPS, eot=eot,
                                    indicators=None)
    plain, with_eot = rated["never"], rated["auto"]
    assert plain.eot_samples == 0 and with_eot.eot_samples == 20
    assert plain.attacks["aa-standard"].settings["version"] == "standard"
    assert with_eot.attacks["aa-standard"].settings["version"] == "rand"
    plain_accuracy = plain.worst_case.float().mean().item()
    eot_accuracy = with_eot.worst_case.float().mean().item()
    assert eot_accuracy < plain_accuracy - 0.1, (plain_accuracy, eot_accuracy)
    assert not plain.trusted  # pyautoattack and the probes say: randomised, use EOT
    assert with_eot.trusted  # the randomness is accounted for
    record = with_eot.to_record()
    assert record.eot and record.eot_samples == 20
    assert record.attacks[0].column == "autoattack_rand"

    from attacks.rows import row_metrics, row_tags
    from attacks.shards import Plan

    plan = Plan(attacks=("aa-standard",), epsilon=EPS, norm="linf", seed=0, n_examples=64,
                shard_size=64, eot_samples=20)
    tags = row_tags(record, source_experiment="0", source_tags={}, seconds=1.0, plan=plan)
    metrics = row_metrics(record)
    assert tags["eot"] == "true" and tags["eot_samples"] == "20"  # the row says EOT
    assert metrics["autoattack_rand_accuracy"] == pytest.approx(eot_accuracy)
    assert "autoattack_accuracy" not in metrics  # no deterministic number to rank by
