"""The evaluation report as versioned, typed data (no torch: readers load it cheaply).

An :class:`EvaluationRecord` is everything one evaluation of one model produced and everything
needed to redo it: the threat model (``epsilon``, ``norm``), the evaluation's own seed
(``eval_seed``), per-example clean correctness, each attack's per-example robust flags
(:class:`AttackRecord`, in the order they ran) with its accuracy, 95 % Wilson interval and n,
the integrity flags and the thresholds they were checked against, the ε curve, the margins, the
indicators of attack failure, whether the numbers come from EOT attacks (Athalye et al. 2018,
§4.1: a random forward pass is attacked through the expectation over its randomness), the plan
of the evaluation, where the model and the points came from (:class:`Source`), how the model
was trained (:class:`TrainingRecord`) and each evaluated point's true class (``labels``), from
which the per-class accuracies follow (:func:`class_accuracies`, :class:`ClassAccuracy`).

``to_dict`` writes JSON-ready data with ``schema_version`` = :data:`SCHEMA_VERSION`;
``from_dict`` reads it back exactly (``from_dict(r.to_dict()) == r``), refuses a newer or
unknown version, and upgrades older documents step by step through :data:`UPGRADES`. The
written document also holds a few derived values for readers of the JSON (``clean``,
``clean_accuracy``, ``worst_case``, ``worst_case_accuracy``, ``per_class``); they are
recomputed, never read. A version-2 document written before ``labels`` existed reads as a record
without labels (and so without per-class accuracies).

Version 1 is the version-less ``report.json`` of earlier releases: the same data with ``seed``
for ``eval_seed``, ``source_run`` / ``checkpoint`` / ``data_checksum`` at the top level and no
attack columns. Its attacks get the column its leaderboard row was written under (the label
with every run of characters other than letters, digits, ``.``, ``_`` and ``-`` made one
``_``); :func:`attacks.identity.canonical_columns` replaces those with canonical columns.
Pieces a hand-written version-1 document may leave out take neutral values: an attack's name is
its label's first word, it counts as white-box, with no settings, no flags and no time spent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

SCHEMA_VERSION = 2
Z_95 = 1.959963984540054
MODES = ("full", "cascade")  # every attack on every point; or a cascade (attacks.cascade)


class SchemaError(ValueError):
    """A report document this code cannot read (a newer or unknown schema version)."""


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """95 % Wilson score interval for a binomial proportion (Wilson 1927); (0, 1) for n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Accuracy:
    """A share of points with its 95 % Wilson interval and the number of points."""

    accuracy: float
    ci_low: float
    ci_high: float
    n: int

    @classmethod
    def of(cls, flags: Iterable[bool]) -> Accuracy:
        values = [bool(v) for v in flags]
        return cls.of_counts(sum(values), len(values))

    @classmethod
    def of_counts(cls, k: int, n: int) -> Accuracy:
        """``k`` of ``n`` points."""
        low, high = wilson_interval(k, n)
        return cls(k / n if n else math.nan, low, high, n)

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "n": self.n}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Accuracy:
        return cls(data["accuracy"], data["ci_low"], data["ci_high"], data["n"])


def legacy_column(label: str) -> str:
    """The metric prefix a version-1 row used for an attack: its label, slugged."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")


@dataclass(frozen=True)
class AttackRecord:
    """One attack's outcome: per-example robust flags (still correctly classified), accuracy
    over the evaluated points, seconds spent, what the attack noticed (``flags``, ``details``),
    its settings and the leaderboard ``column`` its canonical identity names
    (:mod:`attacks.identity`). ``eot``: the attack averaged gradients over several forward
    passes. ``attacked`` and ``broken`` (a cascade's counts; None in the full evaluation): how
    many points the attack ran on and how many of those it broke."""

    label: str
    name: str
    column: str
    white_box: bool
    settings: dict[str, Any]
    robust: tuple[bool, ...]
    accuracy: Accuracy
    seconds: float
    flags: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    eot: bool = False
    attacked: int | None = None
    broken: int | None = None

    def __post_init__(self) -> None:
        if not self.column:
            raise ValueError(f"attack {self.label!r} has no column")

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "name": self.name, "column": self.column,
                "white_box": self.white_box, "settings": self.settings,
                "robust": list(self.robust), **self.accuracy.to_dict(), "seconds": self.seconds,
                "flags": list(self.flags), "details": self.details, "eot": self.eot,
                **({} if self.attacked is None else {"attacked": self.attacked,
                                                     "broken": self.broken})}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], label: str | None = None) -> AttackRecord:
        """An attack entry of a version-2 document (``label`` when the entry lacks its own);
        a version-1 entry (no ``column``) is upgraded on the way."""
        label = data.get("label", label)
        if label is None:
            raise SchemaError("an attack entry needs its label")
        if "column" not in data:
            data = _attack_v1_to_v2(label, data)
        return cls(label, data["name"], data["column"], data["white_box"], dict(data["settings"]),
                   tuple(bool(v) for v in data["robust"]), Accuracy.from_dict(data),
                   data["seconds"], tuple(data["flags"]), dict(data["details"]), data["eot"],
                   data.get("attacked"), data.get("broken"))


@dataclass(frozen=True)
class CurvePoint:
    """Robust accuracy of the curve attack at one radius."""

    epsilon: float
    accuracy: Accuracy

    def to_dict(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, **self.accuracy.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CurvePoint:
        return cls(data["epsilon"], Accuracy.from_dict(data))


@dataclass(frozen=True)
class Source:
    """Where the evaluated model and points came from: the training run, the checkpoint and a
    checksum of the evaluated points (rows with equal checksums are paired)."""

    source_run: str | None = None
    checkpoint: str | None = None
    data_checksum: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Source:
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class ClassAccuracy:
    """The evaluated points of one true class: how many (``n``), how many were classified
    correctly (``clean``), how many stayed correct under every attack (``worst_case``) and,
    by attack column, how many stayed correct under that attack (``attacks``)."""

    label: int
    n: int
    clean: int
    worst_case: int
    attacks: dict[str, int] = field(default_factory=dict)

    @property
    def clean_accuracy(self) -> Accuracy:
        return Accuracy.of_counts(self.clean, self.n)

    @property
    def worst_case_accuracy(self) -> Accuracy:
        return Accuracy.of_counts(self.worst_case, self.n)

    def attack_accuracy(self, column: str) -> Accuracy:
        return Accuracy.of_counts(self.attacks[column], self.n)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "n": self.n, "clean_correct": self.clean,
                "worst_case_correct": self.worst_case, "attacks_correct": dict(self.attacks),
                "clean": self.clean_accuracy.to_dict(),
                "worst_case": self.worst_case_accuracy.to_dict()}


def class_accuracies(labels: Sequence[int], clean: Sequence[bool], worst_case: Sequence[bool],
                     attacks: Mapping[str, Sequence[bool]] | None = None
                     ) -> tuple[ClassAccuracy, ...]:
    """Per true class (ascending), the counts of points, of clean-correct points, of points
    correct under every attack (``worst_case``) and, per attack column, of points correct under
    that attack (``attacks``: per-example flags already and-ed with ``clean``). Every sequence
    holds one entry per point; no labels give no classes."""
    attacks = attacks or {}
    for what, flags in (("clean", clean), ("worst-case", worst_case), *attacks.items()):
        if len(flags) != len(labels):
            raise ValueError(f"{len(flags)} {what} flags for {len(labels)} labels")
    counts: dict[int, list[int]] = {}
    columns = list(attacks)
    for i, label in enumerate(labels):
        row = counts.setdefault(int(label), [0] * (3 + len(columns)))
        row[0] += 1
        row[1] += bool(clean[i])
        row[2] += bool(worst_case[i])
        for j, column in enumerate(columns):
            row[3 + j] += bool(attacks[column][i])
    return tuple(ClassAccuracy(label, row[0], row[1], row[2],
                               dict(zip(columns, row[3:], strict=True)))
                 for label, row in sorted(counts.items()))


TRAINING_FIELDS = ("seed", "epochs", "batch_size", "lr", "schedule", "lr_milestones", "lr_gamma",
                   "momentum", "weight_decay")


@dataclass(frozen=True)
class TrainingRecord:
    """How the evaluated model was trained, as far as its numbers depend on it: the training
    seed, the optimiser's schedule (lr, schedule, milestones, γ, momentum, weight decay), batch
    size, epochs, whether data beyond the dataset's training split was used, and the checksum
    of the training data the run logged. ``None``: not known."""

    seed: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    schedule: str | None = None
    lr_milestones: tuple[int, ...] | None = None
    lr_gamma: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    extra_data: bool = False
    data_checksum: str | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any],
                    data_checksum: str | None = None) -> TrainingRecord:
        """From a training config (``TrialConfig.to_dict()``); ``extra_data`` is the config's
        field of that name where it has one, else False."""
        values = {name: config.get(name) for name in TRAINING_FIELDS}
        if values["lr_milestones"] is not None:
            values["lr_milestones"] = tuple(values["lr_milestones"])
        return cls(**values, extra_data=bool(config.get("extra_data", False)),
                   data_checksum=data_checksum)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.lr_milestones is not None:
            data["lr_milestones"] = list(self.lr_milestones)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingRecord:
        values = {f.name: data.get(f.name, f.default) for f in fields(cls)}
        if values["lr_milestones"] is not None:
            values["lr_milestones"] = tuple(values["lr_milestones"])
        return cls(**values)


@dataclass(frozen=True)
class EvaluationRecord:
    """One evaluation of one model, schema version :data:`SCHEMA_VERSION`.

    ``eot``: the forward pass is random and every number comes from the attacks' EOT forms,
    averaging over ``eot_samples`` forward passes (1 when not EOT). ``mode``: ``"full"`` (every
    attack on every point) or ``"cascade"`` (:mod:`attacks.cascade`: the same worst case; an
    attack that skipped points has no accuracy of its own, :meth:`complete`). ``indicators``:
    the indicators of attack failure, plain dicts (name, fired, value, threshold, n, seconds,
    message). ``plan``: the evaluation's plan
    (:class:`attacks.shards.Plan` as a dict), None for an evaluation without one.
    ``labels``: each evaluated point's true class, in the order of the per-example flags
    (empty when not recorded); :attr:`per_class` follows from them.
    """

    n: int
    epsilon: float
    norm: str
    eval_seed: int
    clean_correct: tuple[bool, ...]
    attacks: tuple[AttackRecord, ...]
    flags: tuple[str, ...] = ()
    trusted: bool = True
    check_settings: dict[str, Any] = field(default_factory=dict)
    epsilon_curve: tuple[CurvePoint, ...] = ()
    margins: dict[str, tuple[float, ...]] = field(default_factory=dict)
    indicators: tuple[dict[str, Any], ...] = ()
    eot: bool = False
    eot_samples: int = 1
    mode: str = "full"
    dataset: str | None = None
    plan: dict[str, Any] | None = None
    source: Source = field(default_factory=Source)
    training: TrainingRecord | None = None
    labels: tuple[int, ...] = ()
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise SchemaError(f"an EvaluationRecord is schema version {SCHEMA_VERSION}, "
                              f"not {self.schema_version}")
        if len(self.clean_correct) != self.n:
            raise ValueError(f"{len(self.clean_correct)} clean flags for n = {self.n} points")
        if self.labels and len(self.labels) != self.n:
            raise ValueError(f"{len(self.labels)} labels for n = {self.n} points")
        for attack in self.attacks:
            if len(attack.robust) != self.n:
                raise ValueError(f"attack {attack.label!r} has {len(attack.robust)} robust "
                                 f"flags for n = {self.n} points")
        for what, values in (("label", [a.label for a in self.attacks]),
                             ("column", [a.column for a in self.attacks])):
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"attacks share a {what} ({', '.join(repeated)}): the same "
                                 "attack ran twice")
        if self.mode not in MODES:
            raise ValueError(f"unknown evaluation mode {self.mode!r}; known: {', '.join(MODES)}")
        if self.eot_samples < 1:
            raise ValueError(f"eot_samples must be >= 1, got {self.eot_samples}")

    # -- derived values -----------------------------------------------------------------------
    @property
    def clean(self) -> Accuracy:
        return Accuracy.of(self.clean_correct)

    @property
    def worst_case(self) -> tuple[bool, ...]:
        """Per example: correct on the clean point and robust under every attack."""
        flags = list(self.clean_correct)
        for attack in self.attacks:
            flags = [f and r for f, r in zip(flags, attack.robust, strict=True)]
        return tuple(flags)

    @property
    def worst_case_accuracy(self) -> Accuracy:
        return Accuracy.of(self.worst_case)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(a.column for a in self.attacks)

    @property
    def per_class(self) -> tuple[ClassAccuracy, ...]:
        """Clean, worst-case and per-attack counts by true class (none without labels)."""
        if not self.labels:
            return ()
        return class_accuracies(self.labels, self.clean_correct, self.worst_case,
                                {a.column: self.robust(a.column) for a in self.attacks
                                 if self.complete(a)})

    def complete(self, attack: AttackRecord) -> bool:
        """Whether ``attack`` ran on every clean-correct point (always, in the full
        evaluation): only then are its flags and accuracy its own."""
        return attack.attacked is None or attack.attacked == sum(self.clean_correct)

    def attack(self, key: str) -> AttackRecord:
        """The attack whose column, else whose label, is ``key``."""
        for attack in self.attacks:
            if attack.column == key:
                return attack
        for attack in self.attacks:
            if attack.label == key:
                return attack
        raise KeyError(f"no attack {key!r} in the report; it has: "
                       f"{', '.join(a.column for a in self.attacks)} (labels "
                       f"{', '.join(a.label for a in self.attacks)})")

    def robust(self, key: str) -> tuple[bool, ...]:
        """Per example: correct on the clean point and robust under attack ``key``
        (``"worst_case"``: under every attack; ``"clean"``: the clean flags)."""
        if key == "clean":
            return self.clean_correct
        if key == "worst_case":
            return self.worst_case
        found = self.attack(key)
        if not self.complete(found):
            raise ValueError(f"attack {key!r} ran in a cascade on {found.attacked} of "
                             f"{sum(self.clean_correct)} clean-correct points: it has no flags "
                             "of its own (compare the worst case, or evaluate in full mode)")
        return tuple(c and r for c, r in zip(self.clean_correct, found.robust, strict=True))

    # -- data ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        clean, worst = self.clean.to_dict(), self.worst_case_accuracy.to_dict()
        return {
            "schema_version": self.schema_version, "n": self.n, "epsilon": self.epsilon,
            "norm": self.norm, "eval_seed": self.eval_seed, "dataset": self.dataset,
            "clean_correct": list(self.clean_correct),
            "attacks": {a.label: a.to_dict() for a in self.attacks},
            "flags": list(self.flags), "trusted": self.trusted,
            "check_settings": self.check_settings,
            "epsilon_curve": [p.to_dict() for p in self.epsilon_curve],
            "margins": {kind: list(values) for kind, values in self.margins.items()},
            "indicators": [dict(i) for i in self.indicators], "eot": self.eot,
            "eot_samples": self.eot_samples, "mode": self.mode, "plan": self.plan,
            "source": self.source.to_dict(),
            "training": None if self.training is None else self.training.to_dict(),
            "labels": list(self.labels),
            # derived, for readers of the JSON; recomputed, never read back
            "clean": clean, "clean_accuracy": clean["accuracy"],
            "worst_case": worst, "worst_case_accuracy": worst["accuracy"],
            "per_class": [c.to_dict() for c in self.per_class],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationRecord:
        """Read a document of this or an older schema version (older ones are upgraded)."""
        data = upgrade(data)
        training = data["training"]
        return cls(
            n=data["n"], epsilon=data["epsilon"], norm=data["norm"],
            eval_seed=data["eval_seed"], dataset=data["dataset"],
            clean_correct=tuple(bool(v) for v in data["clean_correct"]),
            attacks=tuple(AttackRecord.from_dict(a, label) for label, a in data["attacks"].items()),
            flags=tuple(data["flags"]), trusted=data["trusted"],
            check_settings=dict(data["check_settings"]),
            epsilon_curve=tuple(CurvePoint.from_dict(p) for p in data["epsilon_curve"]),
            margins={kind: tuple(values) for kind, values in data["margins"].items()},
            indicators=tuple(dict(i) for i in data["indicators"]), eot=data["eot"],
            eot_samples=data["eot_samples"], mode=data["mode"], plan=data["plan"],
            source=Source.from_dict(data["source"]),
            training=None if training is None else TrainingRecord.from_dict(training),
            labels=tuple(int(v) for v in data.get("labels") or ()))


def as_record(report: EvaluationRecord | Mapping[str, Any]) -> EvaluationRecord:
    """A record as it is, a document (any readable version) as its record."""
    return report if isinstance(report, EvaluationRecord) else EvaluationRecord.from_dict(report)


# -- versions ---------------------------------------------------------------------------------
def version_of(data: Mapping[str, Any]) -> int:
    """A document's schema version (version-less documents are version 1)."""
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SchemaError(f"unknown report schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise SchemaError(f"report schema_version {version} is newer than this code reads "
                          f"(up to {SCHEMA_VERSION}); read it with a newer robust-sweeps")
    return version


def upgrade(data: Mapping[str, Any]) -> dict[str, Any]:
    """A document of any readable version as a version-:data:`SCHEMA_VERSION` document."""
    version, document = version_of(data), dict(data)
    while version < SCHEMA_VERSION:
        document, version = UPGRADES[version](document), version + 1
    return document


def _attack_v1_to_v2(label: str, data: Mapping[str, Any]) -> dict[str, Any]:
    robust = [bool(v) for v in data["robust"]]
    settings = dict(data.get("settings", {}))
    stats = {k: data[k] for k in ("accuracy", "ci_low", "ci_high", "n")} if "accuracy" in data \
        else Accuracy.of(robust).to_dict()
    eot_samples = settings.get("eot_samples", 1)
    return {"label": label, "name": data.get("name", label.partition(":")[0]),
            "column": legacy_column(label), "white_box": data.get("white_box", True),
            "settings": settings, "robust": robust, **stats,
            "seconds": data.get("seconds", 0.0), "flags": list(data.get("flags", [])),
            "details": dict(data.get("details", {})),
            "eot": isinstance(eot_samples, int) and eot_samples > 1}


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 → 2: ``seed`` → ``eval_seed``; the source under ``source``; attack columns;
    an attack's accuracy over clean-correct points (as its row's metrics were written)."""
    clean = [bool(v) for v in data["clean_correct"]]
    attacks = {}
    for label, entry in data["attacks"].items():
        attack = _attack_v1_to_v2(label, entry)
        attack.update(Accuracy.of(c and r for c, r in zip(clean, attack["robust"],
                                                          strict=True)).to_dict())
        attacks[label] = attack
    flags = list(data.get("flags", []))
    return {
        "schema_version": 2, "n": data.get("n", len(clean)), "epsilon": data["epsilon"],
        "norm": data["norm"], "eval_seed": data.get("seed", 0), "dataset": data.get("dataset"),
        "clean_correct": clean, "attacks": attacks, "flags": flags,
        "trusted": data.get("trusted", not flags),
        "check_settings": dict(data.get("check_settings", {})),
        "epsilon_curve": list(data.get("epsilon_curve", [])),
        "margins": dict(data.get("margins", {})), "indicators": [], "eot": False,
        "eot_samples": 1, "mode": "full", "plan": data.get("plan"),
        "source": {key: data.get(key) for key in ("source_run", "checkpoint", "data_checksum")},
        "training": None,
    }


UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}

