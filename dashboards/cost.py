"""What a device-hour is, and what a piece of work costs in them.

A trial or an evaluation unit *holds* devices for its whole wall time: the cluster reserves
them for it whether it keeps them busy or not (training, validation, margins, checkpointing,
loading a model and waiting on storage all count). Its cost is the seconds it held them times
how many it held — a fraction of a GPU counts as that fraction — in hours:

* **GPU-hours** (``GPU-h``) when the work holds a GPU or a fraction of one (``gpus > 0``):
  ``seconds × gpus / 3600``; the CPU cores reserved beside the GPU are not counted;
* **CPU-core-hours** (``CPU-core-h``) otherwise: ``seconds × cpus / 3600``.

A trial restarted from a checkpoint is one piece of work held over several attempts: its
cost is the sum over its attempts, each measured from the attempt's start
(:func:`trial_cost`). The two units are never added together: a :class:`Cost` keeps each
apart, and its single figure (:attr:`Cost.device_hours`) exists only while all its work was of
one kind (NaN once GPU-hours and CPU-core-hours meet). Pure Python: no tracking, no cluster.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GPU, CPU, MIXED, NONE = "gpu", "cpu", "mixed", "none"
UNITS = {GPU: "GPU-h", CPU: "CPU-core-h"}
HELD = "held"  # an evaluation unit's record: {"seconds", "cpus", "gpus"} its evaluator held


def device_kind(*, cpus: float, gpus: float) -> str:
    """``gpu`` for work that holds any GPU, else ``cpu``."""
    _check(cpus=cpus, gpus=gpus)
    return GPU if gpus > 0 else CPU


@dataclass(frozen=True)
class Cost:
    """GPU-hours and CPU-core-hours, kept apart; adding two costs adds each unit to itself."""

    gpu_hours: float = 0.0
    cpu_hours: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.gpu_hours + other.gpu_hours, self.cpu_hours + other.cpu_hours)

    @property
    def kind(self) -> str:
        """``gpu`` or ``cpu`` when only that unit is spent, ``mixed`` when both, else ``none``."""
        if self.gpu_hours > 0 and self.cpu_hours > 0:
            return MIXED
        if self.gpu_hours > 0:
            return GPU
        return CPU if self.cpu_hours > 0 else NONE

    @property
    def device_hours(self) -> float:
        """The one figure: GPU-hours or CPU-core-hours as :attr:`kind` says, 0 for no work,
        NaN for mixed work (never a sum of the two units)."""
        return {GPU: self.gpu_hours, CPU: self.cpu_hours, NONE: 0.0}.get(self.kind, math.nan)

    @property
    def unit(self) -> str:
        """``GPU-h``, ``CPU-core-h``, both joined by ``+`` for mixed work, ``""`` for none."""
        if self.kind == MIXED:
            return f"{UNITS[GPU]} + {UNITS[CPU]}"
        return UNITS.get(self.kind, "")

    def text(self, digits: int = 3) -> str:
        """``0.125 GPU-h``, ``0.125 GPU-h + 0.031 CPU-core-h``, ``0 device-h``."""
        if self.kind == MIXED:
            return (f"{self.gpu_hours:.{digits}f} {UNITS[GPU]} + "
                    f"{self.cpu_hours:.{digits}f} {UNITS[CPU]}")
        if self.kind == NONE:
            return "0 device-h"
        return f"{self.device_hours:.{digits}f} {self.unit}"

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """``{prefix}gpu_hours``, ``{prefix}cpu_hours`` and, unless mixed,
        ``{prefix}device_hours``."""
        values = {f"{prefix}gpu_hours": self.gpu_hours, f"{prefix}cpu_hours": self.cpu_hours}
        if self.kind != MIXED:
            values[f"{prefix}device_hours"] = self.device_hours
        return values

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any], prefix: str = "") -> Cost | None:
        """The cost :meth:`metrics` wrote under ``prefix``; None where it wrote none."""
        gpu, cpu = metrics.get(f"{prefix}gpu_hours"), metrics.get(f"{prefix}cpu_hours")
        if gpu is None and cpu is None:
            return None
        return cls(float(gpu or 0.0), float(cpu or 0.0))


def _check(**values: float) -> None:
    bad = [f"{k}={v}" for k, v in values.items() if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise ValueError(f"device accounting needs finite values >= 0, got {', '.join(bad)}")


def held(seconds: float, *, cpus: float, gpus: float) -> Cost:
    """The cost of holding ``gpus`` GPUs (fractions allowed) and ``cpus`` CPU cores for
    ``seconds`` of wall time: GPU-hours ``seconds × gpus / 3600`` when ``gpus > 0``, else
    CPU-core-hours ``seconds × cpus / 3600``."""
    _check(seconds=seconds, cpus=cpus, gpus=gpus)
    if device_kind(cpus=cpus, gpus=gpus) == GPU:
        return Cost(gpu_hours=seconds * gpus / 3600)
    return Cost(cpu_hours=seconds * cpus / 3600)


def trial_cost(attempt_seconds: Iterable[float], *, cpus: float, gpus: float) -> Cost:
    """A trial's cost: the wall seconds of each of its attempts (the first run and every restart
    from a checkpoint, each from its own start), summed, held at ``cpus``/``gpus``."""
    return held(sum(attempt_seconds), cpus=cpus, gpus=gpus)


def unit_cost(record: Mapping[str, Any], *, cpus: float, gpus: float) -> Cost:
    """An evaluation unit's cost from its record: what its evaluator says it held
    (``record["held"]``), else the unit's own ``seconds`` at ``cpus``/``gpus``."""
    found = record.get(HELD)
    if found:
        return held(float(found["seconds"]), cpus=float(found["cpus"]),
                    gpus=float(found["gpus"]))
    return held(float(record.get("seconds", 0.0)), cpus=cpus, gpus=gpus)


def total(costs: Iterable[Cost]) -> Cost:
    """The sum of ``costs``, each unit apart."""
    summed = Cost()
    for cost in costs:
        summed = summed + cost
    return summed


def per_device_hour(accuracy: float, cost: Cost) -> float:
    """``accuracy`` per device-hour of ``cost``; NaN for mixed, free or unmeasured work."""
    hours = cost.device_hours
    if accuracy is None or not math.isfinite(accuracy) or not hours > 0:
        return math.nan
    return accuracy / hours
