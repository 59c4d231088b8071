"""Integrity flags: signs that an evaluation overstates robustness.

Two kinds. ``model_flags`` probes the model itself: NaN or infinite logits, randomness in the
forward pass, modules still in training mode after ``eval()``, outputs that depend on the rest
of the batch, probabilities instead of logits, zero input gradients on many points, and
pyautoattack's own checks (randomness, output range, dynamic graph) run with its global counter
reset.
``result_flags`` reads attack results: a black-box attack breaking points every white-box attack
missed, PGD far weaker than AutoAttack, robust accuracy not falling as ε grows. Every flag is a
plain sentence; an empty list means nothing looked wrong. Thresholds live in
:class:`CheckSettings`, so a result records what it was checked against.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from pyautoattack import checks as aa_checks
from torch import nn

from attacks.autoattack import captured_log, fresh_checks, warnings_of
from attacks.pgd import random_start_point

CHECK_LOGGER = "robust-sweeps.checks"


@dataclass(frozen=True)
class CheckSettings:
    black_box_margin: float = 0.01    # fraction of points only a black-box attack breaks
    autoattack_gap: float = 0.05      # PGD accuracy above AutoAttack's by more than this
    epsilon_tolerance: float = 0.005  # accuracy may rise this much between growing ε
    zero_gradient_fraction: float = 0.1
    probe_examples: int = 64

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


DEFAULT_CHECKS = CheckSettings()


# -- the model -------------------------------------------------------------------------------
@torch.no_grad()
def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).float()


def training_modules(model: nn.Module) -> list[str]:
    """Names of submodules still training after ``model.eval()``."""
    model.eval()
    return [name or type(model).__name__ for name, m in model.named_modules() if m.training]


def non_finite_fraction(model: nn.Module, x: torch.Tensor) -> float:
    """Share of points whose logits hold NaN or ±∞."""
    model.eval()
    return (~torch.isfinite(_forward(model, x)).all(-1)).float().mean().item()


def is_random(model: nn.Module, x: torch.Tensor, repeats: int = 3) -> bool:
    first = _forward(model, x)
    return any(not torch.equal(first, _forward(model, x)) for _ in range(repeats))


def depends_on_batch(model: nn.Module, x: torch.Tensor, atol: float = 1e-4) -> bool:
    """True if a point's logits change with the rest of its batch (e.g. BatchNorm training)."""
    together = _forward(model, x)
    alone = torch.cat([_forward(model, x[i:i + 1]) for i in range(min(len(x), 8))])
    scale = together.abs().max().clamp_min(1.0)
    return not torch.allclose(together[:len(alone)], alone, atol=atol * scale, rtol=1e-3)


def looks_like_probabilities(model: nn.Module, x: torch.Tensor, alpha: float = 1e-5) -> bool:
    out = _forward(model, x)
    return bool(out.max() < 1 + alpha and out.min() > -alpha
                and ((out.sum(-1) - 1).abs() < alpha).all())


def zero_gradient_fraction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float,
                           norm: str = "linf", seed: int = 0) -> float:
    """Share of points whose CE input gradient is exactly zero at x or at a random point of
    the ε-ball (quantised inputs, saturated softmax, hard thresholds)."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    starts = (x, random_start_point(x, epsilon, norm, "uniform", generator))
    zero = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for start in starts:
        point = start.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(point), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, point, allow_unused=True)
        if grad is None:
            return 1.0
        zero |= grad.flatten(1).abs().sum(1) == 0
    return zero.float().mean().item()


def pyautoattack_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """pyautoattack's randomness, output-range and dynamic-graph checks, counter reset."""
    with fresh_checks(), captured_log(CHECK_LOGGER) as capture:
        logger = logging.getLogger(CHECK_LOGGER)
        with torch.no_grad():
            aa_checks.check_randomized(model, x, y, bs=len(x), logger=logger)
            aa_checks.check_range_output(model, x, logger=logger)
        aa_checks.check_dynamic(model, x, False, logger=logger)
    return warnings_of(capture, prefix="pyautoattack check")


def model_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
                norm: str = "linf", settings: CheckSettings = DEFAULT_CHECKS,
                seed: int = 0) -> list[str]:
    """Flags about the model alone, probed on the first ``settings.probe_examples`` points."""
    x, y = x[:settings.probe_examples], y[:settings.probe_examples]
    was_training = model.training
    flags: list[str] = []
    try:
        bad = non_finite_fraction(model, x)
        if bad:
            flags.append(f"NaN or infinite logits on {bad:.0%} of clean points (counted as "
                         "misclassified)")
        stuck = training_modules(model)
        if stuck:
            shown = ", ".join(stuck[:5]) + (" …" if len(stuck) > 5 else "")
            flags.append(f"modules still in training mode after eval(): {shown}")
        if is_random(model, x):
            flags.append("randomness in the forward pass: the same input gives different "
                         "logits in eval mode")
        elif depends_on_batch(model, x):
            flags.append("outputs depend on the rest of the batch (BatchNorm in training mode?)")
        if looks_like_probabilities(model, x):
            flags.append("outputs look like probabilities, not logits")
        fraction = zero_gradient_fraction(model, x, y, epsilon, norm, seed)
        if fraction > settings.zero_gradient_fraction:
            flags.append(f"zero input gradient on {fraction:.0%} of points (gradient masking)")
        flags += pyautoattack_flags(model, x, y)
    finally:
        model.train(was_training)
    return flags


# -- the results -------------------------------------------------------------------------------
def black_box_flags(robust: Mapping[str, torch.Tensor], white_box: Mapping[str, bool],
                    margin: float) -> list[str]:
    """Black-box attacks that break points every white-box attack left standing."""
    whites = [robust[name] for name, white in white_box.items() if white]
    if not whites:
        return []
    white_robust = torch.stack(whites).all(0)
    flags = []
    for name, is_white in white_box.items():
        if is_white:
            continue
        only_black = (white_robust & ~robust[name]).float().mean().item()
        if only_black > margin:
            flags.append(f"black-box {name} stronger than white-box attacks: it breaks "
                         f"{only_black:.1%} of points they all missed (gradient masking)")
    return flags


def autoattack_gap_flags(accuracy: Mapping[str, float], names: Mapping[str, str],
                         gap: float) -> list[str]:
    """The strongest PGD (CE or CW, by attack name) far weaker than AutoAttack.

    One loss alone may trail AutoAttack on an honest model (CE against its targeted DLR); all
    PGD variants trailing by more than ``gap`` means gradients mislead the attacks.
    """
    auto = [accuracy[label] for label, name in names.items() if name == "autoattack"]
    pgds = {label: accuracy[label] for label, name in names.items() if name in ("pgd", "l2-pgd")}
    if not auto or not pgds:
        return []
    reference, (label, best) = min(auto), min(pgds.items(), key=lambda item: item[1])
    if best - reference <= gap:
        return []
    return [f"{label} far weaker than AutoAttack ({best:.1%} vs {reference:.1%})"]


def epsilon_flags(curve: Sequence[tuple[float, float]], tolerance: float) -> list[str]:
    """Robust accuracy should not rise as ε grows (beyond ``tolerance``)."""
    points = sorted(curve)
    return [f"robust accuracy rises with ε: {a0:.1%} at ε={e0:g} but {a1:.1%} at ε={e1:g}"
            for (e0, a0), (e1, a1) in zip(points, points[1:], strict=False)
            if a1 > a0 + tolerance]


def result_flags(robust: Mapping[str, torch.Tensor], names: Mapping[str, str],
                 white_box: Mapping[str, bool], *, curve: Sequence[tuple[float, float]] = (),
                 settings: CheckSettings = DEFAULT_CHECKS) -> list[str]:
    accuracy = {label: flags.float().mean().item() for label, flags in robust.items()}
    return (black_box_flags(robust, white_box, settings.black_box_margin)
            + autoattack_gap_flags(accuracy, names, settings.autoattack_gap)
            + epsilon_flags(curve, settings.epsilon_tolerance))
