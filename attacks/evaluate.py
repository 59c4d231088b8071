"""A model × an attack suite → per-example results, accuracies with intervals, integrity flags.

``evaluate_model`` works on any ``nn.Module`` and tensors; it always attacks in eval mode,
draws randomness only from generators seeded by ``seed`` (the caller's RNG is left as it was),
and returns a :class:`Report`: per attack the per-example robust flags, accuracy with a 95%
Wilson interval and n, seconds spent; the per-example worst case over all attacks; and the
flags of :mod:`attacks.checks`. The pieces (``clean_flags``, ``run_attack``, ``build_report``)
are public so the evaluation pool can run them shard by shard and merge the results.

CLI for checkpoints: ``python -m attacks.evaluate CHECKPOINT --attacks aa-standard pgd-100-ce
--n-examples 1000 --json out.json`` (see ``attacks.evaluate_cli``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attacks.checks import DEFAULT_CHECKS, CheckSettings, model_flags, result_flags
from attacks.pgd import model_mode
from attacks.suite import Attack, create_attack

Z_95 = 1.959963984540054
Progress = Callable[[str], None]


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (0, 1 when n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summary(robust: torch.Tensor) -> dict[str, float | int]:
    n, k = len(robust), int(robust.sum())
    low, high = wilson_interval(k, n)
    return {"accuracy": k / n if n else math.nan, "ci_low": low, "ci_high": high, "n": n}


@dataclass
class AttackResult:
    """One attack's outcome on the evaluated points (robust = still correctly classified)."""

    label: str
    name: str
    white_box: bool
    settings: dict[str, Any]
    robust: torch.Tensor
    seconds: float
    flags: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**summary(self.robust), "name": self.name, "white_box": self.white_box,
                "seconds": self.seconds, "settings": self.settings, "flags": self.flags,
                "details": self.details, "robust": [bool(v) for v in self.robust.tolist()]}

    @classmethod
    def from_dict(cls, label: str, data: dict[str, Any]) -> AttackResult:
        return cls(label, data["name"], data["white_box"], data["settings"],
                   torch.tensor(data["robust"], dtype=torch.bool), data["seconds"],
                   list(data.get("flags", [])), dict(data.get("details", {})))


@dataclass
class Report:
    epsilon: float
    norm: str
    seed: int
    clean: torch.Tensor
    attacks: dict[str, AttackResult]
    flags: list[str]
    epsilon_curve: list[dict[str, float]] = field(default_factory=list)
    check_settings: CheckSettings = field(default_factory=CheckSettings)
    margins: dict[str, list[float]] = field(default_factory=dict)  # per-example, by kind

    @property
    def n(self) -> int:
        return len(self.clean)

    @property
    def worst_case(self) -> torch.Tensor:
        """Robust under every attack (and correct on the clean point)."""
        robust = self.clean.clone()
        for result in self.attacks.values():
            robust &= result.robust
        return robust

    @property
    def trusted(self) -> bool:
        """No integrity flag: only such results may be ranked as robust."""
        return not self.flags

    def accuracy(self, label: str) -> float:
        return self.attacks[label].robust.float().mean().item()

    def to_dict(self) -> dict[str, Any]:
        clean, worst = summary(self.clean), summary(self.worst_case)
        return {"n": self.n, "epsilon": self.epsilon, "norm": self.norm, "seed": self.seed,
                "clean_accuracy": clean["accuracy"], "clean": clean,
                "worst_case_accuracy": worst["accuracy"], "worst_case": worst,
                "flags": list(self.flags), "trusted": self.trusted,
                "check_settings": self.check_settings.to_dict(),
                "attacks": {label: r.to_dict() for label, r in self.attacks.items()},
                "epsilon_curve": self.epsilon_curve, "margins": self.margins,
                "clean_correct": [bool(v) for v in self.clean.tolist()]}


# -- pieces ------------------------------------------------------------------------------------
@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.long, device=x.device)
    with model_mode(model, "eval"):
        return torch.cat([model(x[i:i + batch_size]).argmax(1)
                          for i in range(0, len(x), batch_size)])


def clean_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                batch_size: int = 256) -> torch.Tensor:
    return predictions(model, x, batch_size) == y


def build_attack(spec: str | Attack, *, epsilon: float, norm: str, seed: int,
                 **extra: Any) -> tuple[str, Attack]:
    """``(label, attack)``; the shared ``epsilon``/``norm``/``seed`` fill what a spec omits."""
    if isinstance(spec, Attack):
        return spec.name, spec
    return spec, create_attack(spec, defaults={"epsilon": epsilon, "norm": norm, "seed": seed,
                                               **extra})


def _outside(x_adv: torch.Tensor, x: torch.Tensor, epsilon: float, norm: str) -> int:
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    box = (x_adv < -1e-6).flatten(1).any(1) | (x_adv > 1 + 1e-6).flatten(1).any(1)
    return int(((size > epsilon * (1 + 1e-4) + 1e-6) | box).sum())


def run_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack, *,
               label: str | None = None, clean: torch.Tensor | None = None,
               batch_size: int = 256, epsilon: float | None = None,
               norm: str = "linf") -> AttackResult:
    """Attack the clean-correct points in batches; per-example robust flags for all points."""
    started = time.perf_counter()
    clean = clean_flags(model, x, y, batch_size) if clean is None else clean
    robust = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    index = clean.nonzero().flatten()
    flags: list[str] = []
    details: dict[str, Any] = {}
    epsilon = attack.settings.get("epsilon") if epsilon is None else epsilon
    # AutoAttack batches internally; passing it every clean-correct point at once keeps its
    # batches identical to a direct pyautoattack call on the same points.
    chunk = len(index) if attack.name in _AUTOATTACK_NAMES else batch_size
    outside = 0
    for start in range(0, len(index), max(chunk, 1)):
        part = index[start:start + chunk]
        output = attack.run(model, x[part], y[part])
        outside += _outside(output.x_adv, x[part], epsilon, norm)
        robust[part] = predictions(model, output.x_adv, batch_size) == y[part]
        flags = merge_flags(flags, output.flags)
        details = merge_details(details, output.details)
    if outside:
        raise RuntimeError(f"attack {label or attack.name} left the threat model on {outside} "
                           "points")
    return AttackResult(label or attack.name, attack.name, attack.white_box, attack.settings,
                        robust, time.perf_counter() - started, flags, details)


_AUTOATTACK_NAMES = ("autoattack", "apgd-ce", "apgd-t", "fab-t", "square")


def merge_flags(flags: Sequence[str], new: Sequence[str]) -> list[str]:
    """``flags`` then the ``new`` ones not already there, in order."""
    return [*flags, *(f for f in dict.fromkeys(new) if f not in flags)]


def merge_details(details: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Details of one more batch or shard: counts (dicts of ints) add up; anything else keeps
    its latest value."""
    merged = dict(details)
    for key, value in new.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            value = {k: old.get(k, 0) + v if isinstance(v, int) else v for k, v in value.items()}
        merged[key] = value
    return merged


def build_report(clean: torch.Tensor, results: Sequence[AttackResult], *, epsilon: float,
                 norm: str, seed: int, model_checks: Sequence[str] = (),
                 epsilon_curve: Sequence[dict[str, float]] = (),
                 settings: CheckSettings = DEFAULT_CHECKS,
                 margins: dict[str, list[float]] | None = None) -> Report:
    attacks = {r.label: r for r in results}
    robust = {label: r.robust & clean for label, r in attacks.items()}
    curve = [(point["epsilon"], point["accuracy"]) for point in epsilon_curve]
    flags = list(model_checks)
    for result in results:
        flags = merge_flags(flags, result.flags)
    flags += result_flags(robust, {label: r.name for label, r in attacks.items()},
                          {label: r.white_box for label, r in attacks.items()},
                          curve=curve, settings=settings)
    return Report(epsilon, norm, seed, clean, attacks, flags, list(epsilon_curve), settings,
                  dict(margins or {}))


# -- the whole evaluation ----------------------------------------------------------------------
def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                   attacks: Sequence[str | Attack], epsilon: float, norm: str = "linf",
                   seed: int = 0, batch_size: int = 256, checks: bool = True,
                   epsilon_curve: Sequence[float] = (), curve_attack: str = "aa-standard",
                   settings: CheckSettings = DEFAULT_CHECKS,
                   progress: Progress | None = None, **attack_extra: Any) -> Report:
    """Evaluate ``model`` on ``(x, y)`` under every attack in ``attacks`` at radius ``epsilon``.

    ``attacks`` are spec strings (``"pgd-100-cw"``, ``"square:queries=1000"``) or
    :class:`Attack` objects; ``epsilon_curve`` (radii) adds ``curve_attack``'s accuracy at each.
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many labels as inputs (got {len(x)} and {len(y)}), and some")
    if not attacks:
        raise ValueError("no attacks given")
    say = progress or (lambda message: None)
    clean = clean_flags(model, x, y, batch_size)
    say(f"clean accuracy {clean.float().mean():.2%} on {len(x)} points")
    results = []
    for spec in attacks:
        label, attack = build_attack(spec, epsilon=epsilon, norm=norm, seed=seed, **attack_extra)
        results.append(run_attack(model, x, y, attack, label=label, clean=clean,
                                  batch_size=batch_size, epsilon=epsilon, norm=norm))
        say(f"{label}: {results[-1].robust.float().mean():.2%} in {results[-1].seconds:.1f} s")
    curve = []
    for radius in epsilon_curve:
        robust = clean
        if radius > 0:
            _, attack = build_attack(curve_attack, epsilon=radius, norm=norm, seed=seed)
            robust = run_attack(model, x, y, attack, clean=clean, batch_size=batch_size,
                                epsilon=radius, norm=norm).robust & clean
        curve.append({"epsilon": float(radius), **summary(robust)})
        say(f"ε={radius:g}: {curve[-1]['accuracy']:.2%}")
    found = model_flags(model, x, y, epsilon=epsilon, norm=norm, settings=settings,
                        seed=seed) if checks else []
    return build_report(clean, results, epsilon=epsilon, norm=norm, seed=seed,
                        model_checks=found, epsilon_curve=curve, settings=settings)


if __name__ == "__main__":  # `python -m attacks.evaluate`: the command line, this module once
    import importlib
    import sys

    sys.modules["attacks.evaluate"] = sys.modules[__name__]
    importlib.import_module("attacks.evaluate_cli").main()
