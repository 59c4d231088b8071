"""A model × an attack suite → per-example results, accuracies with intervals, integrity flags.

``evaluate_model`` works on any ``nn.Module`` and tensors; it always attacks in eval mode,
draws randomness only from generators seeded by ``seed`` (the caller's RNG is left as it was),
and returns a :class:`Report`: per attack the per-example robust flags, accuracy with a 95%
Wilson interval and n, seconds spent; the per-example worst case over all attacks; the flags
of :mod:`attacks.checks`; and the points' labels, from which the record's per-class clean and
worst-case accuracies follow (:attr:`attacks.schema.EvaluationRecord.per_class`). The pieces
(``clean_flags``, ``run_attack``, ``build_report``) are public so the evaluation pool can run
them shard by shard and merge the results.

Two modes: ``full`` runs every attack on every clean-correct point (every per-attack accuracy
is the attack's own); ``cascade`` runs the attacks from cheapest to dearest and lets an attack
whose verdict on a point depends on that point alone skip the points an earlier white-box attack
broke, with the same worst case and integrity flags (:mod:`attacks.cascade`).

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

from attacks.checks import (
    DEFAULT_CHECKS,
    CheckSettings,
    is_random,
    model_flags,
    result_flags,
)
from attacks.identity import column_of
from attacks.indicators import DEFAULT_INDICATORS, IndicatorSettings, run_indicators
from attacks.pgd import model_mode
from attacks.schema import (
    Accuracy,
    AttackRecord,
    CurvePoint,
    EvaluationRecord,
    Source,
    TrainingRecord,
    wilson_interval,
)
from attacks.streams import pad_rows
from attacks.suite import Attack, create_attack

Progress = Callable[[str], None]


def summary(robust: torch.Tensor) -> dict[str, float | int]:
    n, k = len(robust), int(robust.sum())
    low, high = wilson_interval(k, n)
    return {"accuracy": k / n if n else math.nan, "ci_low": low, "ci_high": high, "n": n}


@dataclass
class AttackResult:
    """One attack's outcome on the evaluated points (robust = still correctly classified).

    ``column``: the leaderboard column of the attack's canonical identity
    (:mod:`attacks.identity`); empty until :meth:`to_record` derives it. ``attacked`` and
    ``broken``: in a cascade, how many points the attack ran on and how many of them it broke
    (None in the full evaluation, where it runs on every clean-correct point)."""

    label: str
    name: str
    white_box: bool
    settings: dict[str, Any]
    robust: torch.Tensor
    seconds: float
    flags: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    column: str = ""
    attacked: int | None = None
    broken: int | None = None

    def to_record(self, clean: torch.Tensor | None = None) -> AttackRecord:
        """As schema data; the accuracy is over the points also correct on ``clean``."""
        counted = self.robust if clean is None else self.robust & clean
        eot_samples = self.settings.get("eot_samples", 1)
        return AttackRecord(
            self.label, self.name, self.column or column_of(self.label, self.name, self.settings),
            self.white_box, self.settings, tuple(bool(v) for v in self.robust.tolist()),
            Accuracy.of(counted.tolist()), self.seconds, tuple(self.flags), self.details,
            isinstance(eot_samples, int) and eot_samples > 1, self.attacked, self.broken)

    @classmethod
    def from_record(cls, record: AttackRecord) -> AttackResult:
        return cls(record.label, record.name, record.white_box, dict(record.settings),
                   torch.tensor(record.robust, dtype=torch.bool), record.seconds,
                   list(record.flags), dict(record.details), record.column, record.attacked,
                   record.broken)

    def to_dict(self) -> dict[str, Any]:
        return self.to_record().to_dict()

    @classmethod
    def from_dict(cls, label: str, data: dict[str, Any]) -> AttackResult:
        result = cls.from_record(AttackRecord.from_dict(data, label))
        result.label = label
        if "column" not in data:  # an entry older than columns: derive the canonical one
            result.column = ""
        return result


@dataclass
class Report:
    """A whole evaluation, per-example flags as tensors; :meth:`to_record` gives it as schema
    data (:class:`attacks.schema.EvaluationRecord`), :meth:`from_record` rebuilds it.
    ``eot_samples`` > 0: the forward pass is random and the attacks ran in their EOT forms over
    that many passes; ``adversarial``: per broken example, the point that broke it;
    ``labels``: each point's true class (None when not known: no per-class accuracies)."""

    epsilon: float
    norm: str
    seed: int
    clean: torch.Tensor
    attacks: dict[str, AttackResult]
    flags: list[str]
    epsilon_curve: list[dict[str, float]] = field(default_factory=list)
    check_settings: CheckSettings = field(default_factory=CheckSettings)
    margins: dict[str, list[float]] = field(default_factory=dict)  # per-example, by kind
    indicators: list[dict[str, Any]] = field(default_factory=list)
    eot_samples: int = 0
    mode: str = "full"
    adversarial: Broken | None = None
    labels: torch.Tensor | None = None

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

    def to_record(self, *, plan: dict[str, Any] | None = None, source: Source | None = None,
                  training: TrainingRecord | None = None,
                  dataset: str | None = None) -> EvaluationRecord:
        """The evaluation as schema data, with its plan (``Plan.to_dict()``), source and
        training record; EOT when the report or the plan says so."""
        samples = max(self.eot_samples, int((plan or {}).get("eot_samples") or 0))
        return EvaluationRecord(
            n=self.n, epsilon=self.epsilon, norm=self.norm, eval_seed=self.seed,
            clean_correct=tuple(bool(v) for v in self.clean.tolist()),
            attacks=tuple(r.to_record(self.clean) for r in self.attacks.values()),
            flags=tuple(self.flags), trusted=self.trusted,
            check_settings=self.check_settings.to_dict(),
            epsilon_curve=tuple(CurvePoint.from_dict(p) for p in self.epsilon_curve),
            margins={kind: tuple(values) for kind, values in self.margins.items()},
            indicators=tuple(dict(i) for i in self.indicators), eot=samples > 0,
            eot_samples=max(samples, 1), mode=self.mode, dataset=dataset, plan=plan,
            source=source or Source(), training=training,
            labels=() if self.labels is None else tuple(int(v) for v in self.labels.tolist()))

    @classmethod
    def from_record(cls, record: EvaluationRecord) -> Report:
        return cls(record.epsilon, record.norm, record.eval_seed,
                   torch.tensor(record.clean_correct, dtype=torch.bool),
                   {a.label: AttackResult.from_record(a) for a in record.attacks},
                   list(record.flags), [p.to_dict() for p in record.epsilon_curve],
                   CheckSettings(**record.check_settings),
                   {kind: list(values) for kind, values in record.margins.items()},
                   [dict(i) for i in record.indicators],
                   record.eot_samples if record.eot else 0, record.mode,
                   labels=torch.tensor(record.labels, dtype=torch.long) if record.labels
                   else None)

    def to_dict(self) -> dict[str, Any]:
        """The schema document (:meth:`to_record`, as JSON-ready data)."""
        return self.to_record().to_dict()


# -- pieces ------------------------------------------------------------------------------------
NOT_A_CLASS = -1  # the prediction recorded for NaN or infinite logits: never a label


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Predicted classes; a point whose logits hold NaN or ±∞ gets ``NOT_A_CLASS``, so it
    counts as misclassified (a model that breaks down is not robust)."""
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.long, device=x.device)
    with model_mode(model, "eval"):
        parts = []
        for i in range(0, len(x), batch_size):
            logits = model(x[i:i + batch_size])
            finite = torch.isfinite(logits).all(1)
            parts.append(torch.where(finite, logits.argmax(1), NOT_A_CLASS))
        return torch.cat(parts)


def clean_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                batch_size: int = 256) -> torch.Tensor:
    return predictions(model, x, batch_size) == y


# How an attack averages over a randomised forward pass (Expectation over Transformation,
# Athalye et al. 2018, §4.1): AutoAttack's own ``rand`` version (Croce & Hein 2020, §5), and
# PGD's gradient averaged over ``eot_samples`` passes. Attacks without an entry run as they are.
EOT_FORMS: dict[str, Callable[[int], dict[str, Any]]] = {
    "autoattack": lambda samples: {"version": "rand", "eot_samples": samples},
    "pgd": lambda samples: {"eot_samples": samples},
    "l2-pgd": lambda samples: {"eot_samples": samples},
}
EOT_MODES = ("auto", "always", "never")


def build_attack(spec: str | Attack, *, epsilon: float, norm: str, seed: int,
                 eot_samples: int = 0, **extra: Any) -> tuple[str, Attack]:
    """``(label, attack)``; the shared ``epsilon``/``norm``/``seed`` fill what a spec omits.
    With ``eot_samples`` the attack takes its EOT form (:data:`EOT_FORMS`), whatever the spec
    said: numbers of a deterministic attack on a random model never stand."""
    if isinstance(spec, Attack):
        return spec.name, spec
    defaults = {"epsilon": epsilon, "norm": norm, "seed": seed, **extra}
    attack = create_attack(spec, defaults=defaults)
    if eot_samples and attack.name in EOT_FORMS:
        attack = create_attack(spec, defaults=defaults, **EOT_FORMS[attack.name](eot_samples))
    return spec, attack


def needs_eot(model: nn.Module, x: torch.Tensor, mode: str = "auto", probe: int = 64) -> bool:
    """Whether to attack with EOT: ``always``, ``never``, or (``auto``) when the same input
    gives different logits in eval mode."""
    if mode not in EOT_MODES:
        raise ValueError(f"unknown EOT mode {mode!r}; known: {', '.join(EOT_MODES)}")
    if mode != "auto":
        return mode == "always"
    with model_mode(model, "eval"):
        return is_random(model, x[:probe])


def threat_model_violations(x_adv: torch.Tensor, x: torch.Tensor, epsilon: float,
                            norm: str) -> dict[str, int]:
    """How many adversarial points hold NaN or ±∞, leave [0, 1], or leave the ε-ball."""
    finite = torch.isfinite(x_adv).flatten(1).all(1)
    safe = torch.where(torch.isfinite(x_adv), x_adv, x)
    delta = (safe - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    box = (safe < -1e-6).flatten(1).any(1) | (safe > 1 + 1e-6).flatten(1).any(1)
    ball = size > epsilon * (1 + 1e-4) + 1e-6
    return {"not finite": int((~finite).sum()), "outside [0, 1]": int((finite & box).sum()),
            "outside the ε-ball": int((finite & ball).sum())}


@dataclass(frozen=True)
class Broken:
    """Adversarial points that broke examples: ``index`` among the evaluated points."""

    index: torch.Tensor  # long, ascending
    x_adv: torch.Tensor

    @classmethod
    def none(cls, like: torch.Tensor) -> Broken:
        return cls(torch.zeros(0, dtype=torch.long, device=like.device), like[:0].clone())

    def shifted(self, offset: int) -> Broken:
        return Broken(self.index + offset, self.x_adv)


def attack_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack, *,
                  label: str | None = None, clean: torch.Tensor | None = None,
                  batch_size: int = 256, epsilon: float | None = None,
                  norm: str = "linf", targets: torch.Tensor | None = None
                  ) -> tuple[AttackResult, Broken]:
    """Attack the clean-correct points in batches: per-example robust flags for all points, and
    the adversarial points that broke them. An attack whose points hold NaN or leave the threat
    model is refused (RuntimeError); NaN or infinite logits at an adversarial point count as
    broken and raise a flag. ``targets`` (a cascade's): attack only these clean-correct points,
    the others count as not robust, and the result says how many points the attack ran on and
    how many of them it broke. A pointwise attack (:class:`attacks.suite.Attack`) never sees a
    batch under :data:`attacks.streams.MIN_ROWS` rows, so its verdict on a point is the same in
    any batch."""
    started = time.perf_counter()
    clean = clean_flags(model, x, y, batch_size) if clean is None else clean
    robust = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    index = (clean if targets is None else clean & targets).nonzero().flatten()
    flags: list[str] = []
    details: dict[str, Any] = {}
    epsilon = attack.settings.get("epsilon") if epsilon is None else epsilon
    # AutoAttack batches internally; passing it every clean-correct point at once keeps its
    # batches identical to a direct pyautoattack call on the same points.
    chunk = len(index) if attack.name in _AUTOATTACK_NAMES else batch_size
    violations: dict[str, int] = {}
    broken_index, broken_points, non_finite = [], [], 0
    for start in range(0, len(index), max(chunk, 1)):
        part = index[start:start + chunk]
        if attack.pointwise:
            output = attack.run(model, pad_rows(x[part]), pad_rows(y[part]))
            output.x_adv = output.x_adv[:len(part)]
            predicted = predictions(model, pad_rows(output.x_adv), batch_size)[:len(part)]
        else:
            output = attack.run(model, x[part], y[part])
            predicted = predictions(model, output.x_adv, batch_size)
        for kind, count in threat_model_violations(output.x_adv, x[part], epsilon,
                                                   norm).items():
            violations[kind] = violations.get(kind, 0) + count
        non_finite += int((predicted == NOT_A_CLASS).sum())
        robust[part] = predicted == y[part]
        broken_index.append(part[predicted != y[part]])
        broken_points.append(output.x_adv[predicted != y[part]])
        flags = merge_flags(flags, output.flags)
        details = merge_details(details, output.details)
    refused = {kind: count for kind, count in violations.items() if count}
    if refused:
        found = ", ".join(f"{count} {kind}" for kind, count in refused.items())
        raise RuntimeError(f"attack {label or attack.name} left the threat model ({norm} "
                           f"ε={epsilon:g}, [0, 1]) on points: {found}")
    if non_finite:
        flags = merge_flags(flags, [f"NaN or infinite logits on {non_finite} adversarial "
                                    f"points of {label or attack.name} (counted as broken)"])
    broken = Broken(torch.cat(broken_index), torch.cat(broken_points).detach()) \
        if broken_index else Broken.none(x)
    result = AttackResult(label or attack.name, attack.name, attack.white_box, attack.settings,
                          robust, time.perf_counter() - started, flags, details)
    if targets is not None:
        result.attacked, result.broken = len(index), len(broken.index)
    return result, broken


def run_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack, *,
               label: str | None = None, clean: torch.Tensor | None = None,
               batch_size: int = 256, epsilon: float | None = None,
               norm: str = "linf") -> AttackResult:
    """:func:`attack_points` without the points."""
    return attack_points(model, x, y, attack, label=label, clean=clean, batch_size=batch_size,
                         epsilon=epsilon, norm=norm)[0]


def worst_case_points(clean: torch.Tensor, broken: Sequence[Broken]) -> Broken:
    """Per example, the point of the first attack (in order) that broke it; ``clean``-wrong
    examples need no point (the clean input is already misclassified)."""
    chosen: dict[int, torch.Tensor] = {}
    for found in broken:
        for i, point in zip(found.index.tolist(), found.x_adv, strict=True):
            if clean[i] and i not in chosen:
                chosen[i] = point
    if not chosen:
        return Broken.none(broken[0].x_adv if broken else clean.float())
    order = sorted(chosen)
    return Broken(torch.tensor(order, dtype=torch.long), torch.stack([chosen[i] for i in order]))


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


def indicator_records(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
                      norm: str, seed: int, settings: IndicatorSettings | None,
                      surrogate: Callable[[], nn.Module] | nn.Module | None = None,
                      eot_samples: int = 0) -> list[dict[str, Any]]:
    """The indicators of attack failure (:mod:`attacks.indicators`) as plain records; none
    when ``settings`` is None. They attack a deterministic forward pass, so on a random model
    (``eot_samples`` > 0) they are left out and the record says why. ``surrogate`` may be a
    model or a function that makes one (built only when the transfer indicator runs)."""
    if settings is None:
        return []
    if eot_samples:
        return [{"name": "indicators", "fired": False, "value": math.nan, "threshold": math.nan,
                 "n": 0, "seconds": 0.0, "message": "indicators skipped: the forward pass is "
                 "random and the attacks ran with EOT"}]
    if callable(surrogate) and not isinstance(surrogate, nn.Module):
        surrogate = surrogate()
    found = run_indicators(model, x, y, epsilon=epsilon, norm=norm, seed=seed,
                           settings=settings, surrogate=surrogate)
    return [indicator.to_dict() for indicator in found]


RANDOMNESS_FLAGS = ("randomness in the forward pass", "randomized defense")


def resolved_by_eot(flags: Sequence[str]) -> list[str]:
    """The flags left once the attacks ran with EOT: randomness is then accounted for."""
    return [flag for flag in flags if not any(mark in flag for mark in RANDOMNESS_FLAGS)]


def build_report(clean: torch.Tensor, results: Sequence[AttackResult], *, epsilon: float,
                 norm: str, seed: int, model_checks: Sequence[str] = (),
                 epsilon_curve: Sequence[dict[str, float]] = (),
                 settings: CheckSettings = DEFAULT_CHECKS,
                 margins: dict[str, list[float]] | None = None,
                 indicators: Sequence[dict[str, Any]] = (), eot_samples: int = 0,
                 adversarial: Broken | None = None,
                 labels: torch.Tensor | None = None, mode: str = "full") -> Report:
    """The report of finished attacks: flags from the model probes, the attacks themselves,
    the results (:func:`attacks.checks.result_flags`) and every fired indicator of attack
    failure (its sentence names the remedy); ``labels``, the points' true classes, give the
    per-class accuracies; ``mode``: the evaluation mode the results come from."""
    if labels is not None and len(labels) != len(clean):
        raise ValueError(f"{len(labels)} labels for {len(clean)} points")
    attacks = {r.label: r for r in results}
    robust = {label: r.robust & clean for label, r in attacks.items()}
    curve = [(point["epsilon"], point["accuracy"]) for point in epsilon_curve]
    flags = list(model_checks)
    for result in results:
        flags = merge_flags(flags, result.flags)
    flags += result_flags(robust, {label: r.name for label, r in attacks.items()},
                          {label: r.white_box for label, r in attacks.items()},
                          curve=curve, settings=settings)
    flags = merge_flags(flags, [i["message"] for i in indicators if i["fired"]])
    if eot_samples:
        flags = resolved_by_eot(flags)
    return Report(epsilon, norm, seed, clean, attacks, flags, list(epsilon_curve), settings,
                  dict(margins or {}), [dict(i) for i in indicators], eot_samples,
                  mode=mode, adversarial=adversarial,
                  labels=None if labels is None else labels.detach().long().cpu())


# -- the whole evaluation ----------------------------------------------------------------------
def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                   attacks: Sequence[str | Attack], epsilon: float, norm: str = "linf",
                   seed: int = 0, batch_size: int = 256, checks: bool = True,
                   epsilon_curve: Sequence[float] = (), curve_attack: str = "aa-standard",
                   settings: CheckSettings = DEFAULT_CHECKS, eot: str = "auto",
                   eot_samples: int = 20,
                   indicators: IndicatorSettings | None = DEFAULT_INDICATORS,
                   surrogate: Callable[[], nn.Module] | nn.Module | None = None,
                   progress: Progress | None = None, mode: str = "full",
                   **attack_extra: Any) -> Report:
    """Evaluate ``model`` on ``(x, y)`` under every attack in ``attacks`` at radius ``epsilon``.

    ``attacks`` are spec strings (``"pgd-100-cw"``, ``"square:queries=1000"``) or
    :class:`Attack` objects; ``epsilon_curve`` (radii) adds ``curve_attack``'s accuracy at each.
    A random forward pass (``eot="auto"``) or ``eot="always"`` runs every attack in its EOT
    form over ``eot_samples`` passes (:func:`build_attack`). The indicators of attack failure
    run on the first points (``indicators``; None leaves them out), the transfer one from
    ``surrogate``. The report keeps, per broken example, the point that broke it
    (``report.adversarial``), and the labels ``y`` (``report.labels``) from which its record
    gives per-class accuracies. ``mode``: ``"full"`` (every attack on every clean-correct
    point, in the given order) or ``"cascade"`` (:mod:`attacks.cascade`: the same worst case
    and flags; per-attack accuracies only for the attacks that ran on every point).
    """
    from attacks.cascade import check_mode, run_cascade  # the cascade builds on this module

    check_mode(mode)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many labels as inputs (got {len(x)} and {len(y)}), and some")
    if not attacks:
        raise ValueError("no attacks given")
    say = progress or (lambda message: None)
    samples = eot_samples if needs_eot(model, x, eot) else 0
    if samples:
        say(f"the forward pass is random: attacks average over {samples} samples (EOT)")
    clean = clean_flags(model, x, y, batch_size)
    say(f"clean accuracy {clean.float().mean():.2%} on {len(x)} points")
    built = [build_attack(spec, epsilon=epsilon, norm=norm, seed=seed, eot_samples=samples,
                          **attack_extra) for spec in attacks]
    if mode == "cascade":
        results, broken = run_cascade(model, x, y, built, clean=clean, epsilon=epsilon,
                                      norm=norm, batch_size=batch_size, eot_samples=samples,
                                      say=say)
    else:
        results, broken = [], []
        for label, attack in built:
            result, points = attack_points(model, x, y, attack, label=label, clean=clean,
                                           batch_size=batch_size, epsilon=epsilon, norm=norm)
            results.append(result)
            broken.append(points)
            say(f"{label}: {result.robust.float().mean():.2%} in {result.seconds:.1f} s")
    curve = []
    for radius in epsilon_curve:
        robust = clean
        if radius > 0:
            _, attack = build_attack(curve_attack, epsilon=radius, norm=norm, seed=seed,
                                     eot_samples=samples)
            robust = run_attack(model, x, y, attack, clean=clean, batch_size=batch_size,
                                epsilon=radius, norm=norm).robust & clean
        curve.append({"epsilon": float(radius), **summary(robust)})
        say(f"ε={radius:g}: {curve[-1]['accuracy']:.2%}")
    found = model_flags(model, x, y, epsilon=epsilon, norm=norm, settings=settings,
                        seed=seed) if checks else []
    failures = indicator_records(model, x, y, epsilon=epsilon, norm=norm, seed=seed,
                                 settings=indicators, surrogate=surrogate, eot_samples=samples)
    for indicator in failures:
        say(f"indicator {indicator['name']}: {indicator['message']}")
    return build_report(clean, results, epsilon=epsilon, norm=norm, seed=seed,
                        model_checks=found, epsilon_curve=curve, settings=settings,
                        indicators=failures, eot_samples=samples,
                        adversarial=worst_case_points(clean, broken), labels=y, mode=mode)


if __name__ == "__main__":  # `python -m attacks.evaluate`: the command line, this module once
    import importlib
    import sys

    sys.modules["attacks.evaluate"] = sys.modules[__name__]
    importlib.import_module("attacks.evaluate_cli").main()
