"""An evaluation cut into (shard, attack) units, with progress kept on disk.

A :class:`Plan` fixes everything that determines an evaluation's numbers (attacks, radius,
seed, points, shard size, batch size, mode); its ``key`` names the progress directory, so a
changed setting never mixes with old results. In the ``cascade`` mode (:mod:`attacks.cascade`)
a shard's attacks are one unit, ``cascade``, that runs them in cascade order on the shard's
points (an interrupted shard's cascade is redone whole); the probes, the ε curve and the
margins keep their own units. Each finished unit is one JSON file written atomically: an
interrupted evaluation resumes with exactly the units that are missing, and ``merge`` rebuilds
the whole :class:`~attacks.evaluate.Report` from the files, in shard order, so the numbers do
not depend on which evaluator ran what or when.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from attacks.cascade import CASCADE, FULL, check_mode, run_cascade
from attacks.checks import CheckSettings, model_flags
from attacks.evaluate import (
    AttackResult,
    Broken,
    Report,
    attack_points,
    build_attack,
    build_report,
    clean_flags,
    indicator_records,
    merge_details,
    merge_flags,
    summary,
    worst_case_points,
)
from attacks.identity import column_of
from attacks.indicators import IndicatorSettings
from attacks.margins import amr_margin_lower_bound, effective_margin

CHECKS = "checks"  # the unit that probes the model itself (run on the first shard's points)
INDICATORS = "indicators"  # the indicators of attack failure (on the first shard's points)
MARGINS = "margins"  # per-example effective margin (EMR Eq. 3) and AMR's L2 margin bound
CURVE = "curve@"  # "curve@0.2": the plan's curve attack at radius 0.2
# model passes per point of the units that run no attack of the plan: the model probes, the
# indicators (five small attacks and the surrogate's transfer), the margins
PROBE_PASSES = {CHECKS: 20.0, INDICATORS: 1500.0, MARGINS: 300.0}
ADVERSARIAL = "adversarial"  # a unit's breaking points; kept in a safetensors file, not JSON


@dataclass(frozen=True)
class Plan:
    attacks: tuple[str, ...]
    epsilon: float
    norm: str
    seed: int
    n_examples: int
    shard_size: int
    batch_size: int = 256
    checks: CheckSettings = field(default_factory=CheckSettings)
    epsilon_curve: tuple[float, ...] = ()
    curve_attack: str = "aa-standard"
    margins: bool = False
    eot_samples: int = 0  # > 0: the model is random; attacks take their EOT forms
    indicators: IndicatorSettings | None = field(default_factory=IndicatorSettings)
    mode: str = FULL  # or CASCADE: one unit per shard runs the attacks as a cascade

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if not self.attacks:
            raise ValueError("a plan needs at least one attack")
        if self.n_examples <= 0 or self.shard_size <= 0:
            raise ValueError("n_examples and shard_size must be positive")
        refuse_repeats(self.attacks)

    @property
    def key(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """The plan as data; a full evaluation's has no ``mode`` (its key stays what it was
        before there were modes)."""
        data = {**asdict(self), "attacks": list(self.attacks), "checks": self.checks.to_dict(),
                "epsilon_curve": list(self.epsilon_curve),
                "indicators": None if self.indicators is None else self.indicators.to_dict()}
        if self.mode == FULL:
            del data["mode"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        indicators = data.get("indicators")
        return cls(**{**data, "attacks": tuple(data["attacks"]),
                      "checks": CheckSettings(**data["checks"]),
                      "epsilon_curve": tuple(data.get("epsilon_curve", ())),
                      "indicators": None if indicators is None
                      else IndicatorSettings(**indicators)})

    def shards(self) -> list[tuple[int, int]]:
        return [(start, min(start + self.shard_size, self.n_examples))
                for start in range(0, self.n_examples, self.shard_size)]

    def attack_kinds(self) -> list[str]:
        """The per-shard units of the attacks: one per attack, or the one cascade."""
        return [CASCADE] if self.mode == CASCADE else list(self.attacks)

    def extra_kinds(self) -> list[str]:
        """Per-shard units beyond the attacks: the ε curve's radii, then the margins."""
        return [f"{CURVE}{radius:g}" for radius in self.epsilon_curve] + (
            [MARGINS] if self.margins else [])

    def unit_cost(self, unit: Unit) -> float:
        """An estimate of the unit's work, in model passes: its attacks' declared cost per point
        (:attr:`attacks.suite.Attack.cost`) times its points; the probes and the margins at
        :data:`PROBE_PASSES` per point. The pool hands out the dearest units first, so that no
        long unit starts last while the other evaluators idle."""
        points = unit.stop - unit.start
        if unit.attack in PROBE_PASSES:
            return PROBE_PASSES[unit.attack] * points
        specs = list(self.attacks) if unit.attack == CASCADE else [
            self.curve_attack if unit.attack.startswith(CURVE) else unit.attack]
        return points * sum(build_attack(spec, epsilon=self.epsilon, norm=self.norm,
                                         seed=self.seed, eot_samples=self.eot_samples)[1].cost
                            for spec in specs)

    def units(self) -> list[Unit]:
        units = [Unit(index, start, stop, kind)
                 for kind in (*self.attack_kinds(), *self.extra_kinds())
                 for index, (start, stop) in enumerate(self.shards())]
        start, stop = self.shards()[0]
        probes = [CHECKS] + ([INDICATORS] if self.indicators is not None else [])
        return [*(Unit(0, start, stop, kind) for kind in probes), *units]


def refuse_repeats(attacks: tuple[str, ...] | list[str]) -> None:
    """Two spellings of one attack (``pgd-100-ce``, ``pgd:steps=100``) would fill one column
    twice: refused, like a repeated spec."""
    columns: dict[str, str] = {}
    for spec in attacks:
        column = column_of(spec)
        if column in columns or slug(spec) in map(slug, columns.values()):
            raise ValueError(f"attacks repeat: {columns.get(column, spec)!r} and {spec!r} are "
                             f"the same attack ({column})")
        columns[column] = spec


@dataclass(frozen=True)
class Unit:
    shard: int
    start: int
    stop: int
    attack: str  # an attack spec, CASCADE, or another kind (CHECKS, INDICATORS, ...)

    @property
    def filename(self) -> str:
        return f"shard{self.shard:04d}.{slug(self.attack)}.json"

    @property
    def points_filename(self) -> str:
        """The adversarial points that broke examples (safetensors), beside the record."""
        return f"shard{self.shard:04d}.{slug(self.attack)}.safetensors"


def slug(label: str) -> str:
    """A label usable as a file name and an MLflow key: ``square:queries=500`` →
    ``square_queries_500``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")


class Progress:
    """Finished units of one plan for one checkpoint, under ``root/<checkpoint>/<plan key>``."""

    def __init__(self, root: str | os.PathLike, checkpoint_id: str, plan: Plan) -> None:
        self.plan = plan
        self.records: dict[str, dict[str, Any]] = {}  # unit files never change once written
        self.directory = Path(root) / checkpoint_id / plan.key
        self.directory.mkdir(parents=True, exist_ok=True)
        plan_file = self.directory / "plan.json"
        if not plan_file.exists():
            _write_json(plan_file, plan.to_dict())

    def done(self, unit: Unit) -> bool:
        return (self.directory / unit.filename).is_file()

    def pending(self) -> list[Unit]:
        return [unit for unit in self.plan.units() if not self.done(unit)]

    def save(self, unit: Unit, result: dict[str, Any]) -> None:
        """Keep a finished unit: its adversarial points first, then the record that marks the
        unit done."""
        result = dict(result)
        points = result.pop(ADVERSARIAL, None)
        if points is not None:
            _write_points(self.directory / unit.points_filename, points)
        _write_json(self.directory / unit.filename, result)
        self.records[unit.filename] = result

    def broken(self, unit: Unit) -> Broken:
        """The points of ``unit``'s attack that broke examples, indexed among all points."""
        path = self.directory / unit.points_filename
        if not path.is_file():
            raise RuntimeError(f"{path} is missing: the unit's adversarial points were lost")
        tensors = load_file(str(path))
        return Broken(tensors["index"].long() + unit.start, tensors["x_adv"])

    def worst_points(self) -> Broken:
        """Per example, the adversarial point of the first attack (in plan order; in a
        cascade, in the order the attacks ran) that broke it: the evidence behind the
        worst-case accuracy."""
        shards = self.plan.shards()
        found = [self.broken(Unit(i, a, b, kind)) for kind in self.plan.attack_kinds()
                 for i, (a, b) in enumerate(shards)]
        return worst_case_points(self.clean(), found)

    def clean(self) -> torch.Tensor:
        """Per example, correct on the clean point (from the attack units)."""
        kind = self.plan.attack_kinds()[0]
        return torch.cat([_flags(self.load(Unit(i, a, b, kind)), "clean")
                          for i, (a, b) in enumerate(self.plan.shards())])

    def load(self, unit: Unit) -> dict[str, Any]:
        if unit.filename not in self.records:
            self.records[unit.filename] = json.loads((self.directory / unit.filename).read_text())
        return self.records[unit.filename]

    def complete(self) -> bool:
        return not self.pending()

    def merge(self) -> Report:
        """The report of the whole evaluation, from the unit files (all must exist)."""
        missing = self.pending()
        if missing:
            raise RuntimeError(f"{len(missing)} units of {self.directory} are not finished")
        shards, clean = self.plan.shards(), self.clean()
        if self.plan.mode == CASCADE:  # each shard's unit holds every attack, in cascade order
            cascades = [self.load(Unit(i, a, b, CASCADE))[CASCADE]
                        for i, (a, b) in enumerate(shards)]
            results = [_concatenate(entry["label"], [ran[k] for ran in cascades])
                       for k, entry in enumerate(cascades[0])]
        else:
            results = [_concatenate(attack, [self.load(Unit(i, a, b, attack))["result"]
                                             for i, (a, b) in enumerate(shards)])
                       for attack in self.plan.attacks]
        checks = self.load(self.plan.units()[0])
        curve = []
        for radius in self.plan.epsilon_curve:
            parts = [self.load(Unit(i, a, b, f"{CURVE}{radius:g}"))
                     for i, (a, b) in enumerate(shards)]
            robust = torch.cat([_flags(p["result"], "robust") for p in parts]) & clean
            curve.append({"epsilon": float(radius), **summary(robust)})
        margins: dict[str, list[float]] = {}
        if self.plan.margins:
            for i, (a, b) in enumerate(shards):
                for key, values in self.load(Unit(i, a, b, MARGINS))["margins"].items():
                    margins.setdefault(key, []).extend(values)
        start, stop = shards[0]
        indicators = (self.load(Unit(0, start, stop, INDICATORS))["indicators"]
                      if self.plan.indicators is not None else [])
        return build_report(clean, results, epsilon=self.plan.epsilon, norm=self.plan.norm,
                            seed=self.plan.seed, model_checks=checks["flags"],
                            settings=self.plan.checks, epsilon_curve=curve, margins=margins,
                            indicators=indicators, eot_samples=self.plan.eot_samples,
                            adversarial=self.worst_points(), mode=self.plan.mode)

    def spent_seconds(self) -> float:
        return sum(self.load(u).get("seconds", 0.0) for u in self.plan.units() if self.done(u))


def _flags(record: dict[str, Any], key: str) -> torch.Tensor:
    return torch.tensor(record[key], dtype=torch.bool)


def _concatenate(label: str, parts: list[dict[str, Any]]) -> AttackResult:
    """One attack's results on the shards (unit records' ``result`` entries), in order."""
    first = AttackResult.from_dict(label, parts[0])
    robust = torch.cat([_flags(p, "robust") for p in parts])
    flags: list[str] = []
    details: dict[str, Any] = {}
    for part in parts:
        flags = merge_flags(flags, part.get("flags", []))
        details = merge_details(details, part.get("details", {}))
    seconds = sum(p["seconds"] for p in parts)
    counts = {key: sum(p[key] for p in parts) if first.attacked is not None else None
              for key in ("attacked", "broken")}
    return AttackResult(label, first.name, first.white_box, first.settings, robust, seconds,
                        flags, details, **counts)


def _write_points(path: Path, broken: Broken) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    save_file({"index": broken.index.cpu().contiguous(),
               "x_adv": broken.x_adv.detach().float().cpu().contiguous()}, str(staging))
    os.replace(staging, path)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(payload))
    os.replace(staging, path)


def run_unit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, unit: Unit, plan: Plan,
             surrogate: Callable[[], torch.nn.Module] | None = None,
             **attack_extra: Any) -> dict[str, Any]:
    """Evaluate one unit on the plan's points ``x, y`` (all of them; the unit slices);
    ``surrogate`` makes the transfer indicator's surrogate model when it is needed."""
    started = time.perf_counter()
    xs, ys = x[unit.start:unit.stop], y[unit.start:unit.stop]
    clean = clean_flags(model, xs, ys, plan.batch_size)
    record: dict[str, Any] = {"clean": [bool(v) for v in clean.tolist()]}
    if unit.attack == CHECKS:
        record["flags"] = model_flags(model, xs, ys, epsilon=plan.epsilon, norm=plan.norm,
                                      settings=plan.checks, seed=plan.seed)
    elif unit.attack == INDICATORS:
        record["indicators"] = indicator_records(
            model, xs, ys, epsilon=plan.epsilon, norm=plan.norm, seed=plan.seed,
            settings=plan.indicators, surrogate=surrogate, eot_samples=plan.eot_samples)
    elif unit.attack == MARGINS:
        generator = torch.Generator(device=xs.device).manual_seed(plan.seed)
        record["margins"] = {
            "effective_margin": effective_margin(model, xs, ys).tolist(),
            "average_margin": amr_margin_lower_bound(model, xs, generator=generator).tolist()}
    elif unit.attack == CASCADE:
        built = [build_attack(spec, epsilon=plan.epsilon, norm=plan.norm, seed=plan.seed,
                              eot_samples=plan.eot_samples, **attack_extra)
                 for spec in plan.attacks]
        results, broken = run_cascade(model, xs, ys, built, clean=clean, epsilon=plan.epsilon,
                                      norm=plan.norm, batch_size=plan.batch_size,
                                      eot_samples=plan.eot_samples)
        record[CASCADE] = [result.to_dict() for result in results]
        record[ADVERSARIAL] = worst_case_points(clean, broken)
    else:
        spec, epsilon = unit.attack, plan.epsilon
        if spec.startswith(CURVE):
            spec, epsilon = plan.curve_attack, float(spec[len(CURVE):])
        label, attack = build_attack(spec, epsilon=epsilon, norm=plan.norm, seed=plan.seed,
                                     eot_samples=plan.eot_samples, **attack_extra)
        result, broken = attack_points(model, xs, ys, attack, label=label, clean=clean,
                                       batch_size=plan.batch_size, epsilon=epsilon,
                                       norm=plan.norm)
        record["result"] = result.to_dict()
        if unit.attack in plan.attacks:  # the ε curve's points are not the row's evidence
            record[ADVERSARIAL] = broken
    record["seconds"] = time.perf_counter() - started
    return record
