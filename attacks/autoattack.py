"""AutoAttack through ``pyautoattack``, exactly as its authors run it, minus its global state.

``run`` builds ``pyautoattack.AutoAttack`` with the requested version (or a custom subset of the
standard-configured parts) and calls ``run_standard_evaluation``: the same points, seed and
batch size give the same robust accuracy as a direct call. Two pieces of process-global state
are neutralised: pyautoattack reseeds the global torch RNG (callers run us inside
``fork_rng``), and its ``check_dynamic`` counts calls in a module-level dict that is never reset,
so a long-lived worker would flag every model after the first dynamic one; the counter is
zeroed around every use here. Its warnings (randomness, probability outputs, zero gradients,
Square beating the gradient attacks) come back as flags instead of log noise.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from pyautoattack import AutoAttack
from pyautoattack import checks as aa_checks

VERSIONS = ("standard", "plus", "rand")
PARTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
_LOCK = threading.Lock()  # settrace-based checks and the shared counter are per process
_PART_ACCURACY = re.compile(r"robust accuracy after (\S+): ([0-9.]+)%")


RAND_EOT_SAMPLES = 20  # pyautoattack's EOT iterations in the ``rand`` version


def settings(*, epsilon: float, version: str = "standard", parts: list[str] | None = None,
             norm: str = "linf", seed: int = 0, square_queries: int = 5000,
             eot_samples: int | None = None) -> dict[str, Any]:
    """Validated settings; ``parts`` picks a custom subset of the standard-configured parts;
    ``eot_samples`` sets the ``rand`` version's EOT iterations (20 by default)."""
    if version not in VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}; known: {', '.join(VERSIONS)}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")
    if parts is not None:
        unknown = sorted(set(parts) - set(PARTS))
        if unknown or not parts:
            raise ValueError(f"unknown AutoAttack parts {unknown}; known: {', '.join(PARTS)}")
        parts = list(parts)
    if epsilon <= 0:
        raise ValueError("AutoAttack needs epsilon > 0")
    chosen = {"epsilon": float(epsilon), "version": version, "parts": parts, "norm": norm,
              "seed": int(seed), "square_queries": int(square_queries)}
    if version == "rand":
        if eot_samples is not None and eot_samples < 1:
            raise ValueError(f"eot_samples must be positive, got {eot_samples}")
        if eot_samples not in (None, RAND_EOT_SAMPLES):  # the default stays implicit
            chosen["eot_samples"] = int(eot_samples)
    elif eot_samples not in (None, 1):
        raise ValueError("AutoAttack averages over EOT samples only in version='rand'")
    return chosen


# The parts each version runs, and what one part costs per point in model passes (a forward and
# backward pass counts 3) as the versions configure it: APGD 100 iterations (5 restarts in
# ``plus``, 20 EOT samples per gradient in ``rand``), APGD-T and FAB-T 100 iterations on each of
# 9 target classes, FAB 100 iterations on every class's gradient (10 classes taken), Square one
# forward pass per query. Only the order of a cascade of attacks rests on these estimates.
VERSION_PARTS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
                 "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
                 "rand": ("apgd-ce", "apgd-dlr")}


def cost(*, version: str = "standard", parts: list[str] | None = None,
         square_queries: int = 5000, eot_samples: int | None = None, **_: Any) -> float:
    """Estimated model passes per attacked point of AutoAttack with these :func:`settings`."""
    restarts = 5 if version == "plus" else 1
    eot = (eot_samples or RAND_EOT_SAMPLES) if version == "rand" else 1
    per_part = {"apgd-ce": 300 * restarts * eot, "apgd-dlr": 300 * restarts * eot,
                "apgd-t": 2700, "fab": 3000 * restarts, "fab-t": 2700, "square": square_queries}
    return float(sum(per_part[part] for part in (parts or VERSION_PARTS[version])))


def build(model: torch.nn.Module, *, epsilon: float, version: str, parts: list[str] | None,
          norm: str, seed: int, square_queries: int, device: torch.device,
          eot_samples: int | None = None) -> AutoAttack:
    adversary = AutoAttack(model, eps=epsilon, norm=NORMS[norm], seed=seed, version=version,
                           device=device)
    if parts is not None:
        adversary.attacks_to_run = list(parts)
    adversary.square.n_queries = square_queries
    if eot_samples is not None:
        adversary.apgd.eot_iter = eot_samples
        adversary.apgd_targeted.eot_iter = eot_samples
    return adversary


@contextmanager
def fresh_checks() -> Iterator[None]:
    """pyautoattack's call counter at zero for the duration, and back at zero afterwards."""
    with _LOCK:
        for key in aa_checks.funcs:
            aa_checks.funcs[key] = 0
        try:
            yield
        finally:
            for key in aa_checks.funcs:
                aa_checks.funcs[key] = 0


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def captured_log(name: str = "auto-attack") -> Iterator[_Capture]:
    """Everything ``logger(name)`` says, kept instead of printed."""
    logger = logging.getLogger(name)
    capture = _Capture()
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield capture
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def warnings_of(capture: _Capture, prefix: str = "autoattack") -> list[str]:
    seen: list[str] = []
    for record in capture.records:
        if record.levelno >= logging.WARNING:
            message = f"{prefix}: {record.getMessage().split(' See ')[0]}"
            if message not in seen:
                seen.append(message)
    return seen


def run(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500,
        **chosen: Any) -> tuple[torch.Tensor, list[str], dict[str, Any]]:
    """``(x_adv, flags, details)``; details count the points still robust after each part."""
    adversary = build(model, device=x.device, **chosen)
    with fresh_checks(), captured_log() as capture:
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    cumulative = {}
    for record in capture.records:
        found = _PART_ACCURACY.search(record.getMessage())
        if found:
            cumulative[found.group(1).lower()] = float(found.group(2)) / 100
    robust = {part: round(accuracy * len(x)) for part, accuracy in cumulative.items()}
    return x_adv.detach(), warnings_of(capture), {"cumulative_robust": robust,
                                                  "parts": list(adversary.attacks_to_run)}
