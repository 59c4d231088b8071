"""Cost ratios measured side by side, with bootstrap intervals, to a requested precision.

The benchmarks that compare two pieces of code by time (a defense's training step against
PGD-AT's, the engine's step against a hand-written loop's) share one protocol:

* **interleaved rounds**: a round times one step of every contender, back to back; the order
  is shuffled in even rounds and reversed in the odd round after, so that each contender runs
  before and after each other equally often and a slow spell of the machine falls on all of
  them alike. A first round warms up (allocator, kernels) and is discarded;
* **paired ratios**: a contender's ratio to the reference in one round is a per-step ratio of
  two timings taken seconds apart; the figure is the median of those per-round ratios (robust
  to a step that another process interrupted), and its 95 % interval a percentile bootstrap
  over the rounds (rounds resampled with replacement, the median recomputed);
* **clock**: wall-clock time by default; ``cpu`` (the calling thread's CPU time, so only with
  one torch thread, which then does all of a step's work) on a machine that other work
  shares, where it is not inflated by the time another process holds the core;
* **adaptive length**: rounds are added until every tracked ratio's interval has a half-width
  under the requested one (±0.03 by default), or a time cap is spent, and the result says
  which.

Run from this directory's scripts (``import ratios``); numpy is the only dependency.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

HALF_WIDTH = 0.03
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}
CONFIDENCE = 0.95
RESAMPLES = 4000


@dataclass(frozen=True)
class Ratio:
    """A paired ratio: the median of per-round ratios and its bootstrap interval."""

    value: float
    low: float
    high: float
    rounds: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float], *,
                 confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                 seed: int = 0) -> Ratio:
    """The median of ``numerator[i] / denominator[i]`` over the rounds ``i``, with a percentile
    bootstrap interval at ``confidence`` from ``resamples`` resamplings of the rounds."""
    top, bottom = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if top.shape != bottom.shape or top.ndim != 1 or len(top) < 2:
        raise ValueError(f"need two equal-length series of at least 2 paired timings, got "
                         f"{top.shape} and {bottom.shape}")
    per_round = top / bottom
    rows = np.random.default_rng(seed).integers(0, len(per_round), (resamples, len(per_round)))
    medians = np.median(per_round[rows], axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(medians, [tail, 1 - tail])
    return Ratio(float(np.median(per_round)), float(low), float(high), len(per_round))


@dataclass
class Interleaved:
    """Per-step timings of every contender, one per round, and how the measurement ended."""

    times: dict[str, list[float]]
    reference: str
    tracked: tuple[str, ...]
    half_width: float
    reached: bool = False
    finished: bool = False
    seconds: float = 0.0

    @property
    def rounds(self) -> int:
        return len(self.times[self.reference])

    def ratio(self, name: str) -> Ratio:
        """``name``'s step time over the reference's, paired by round."""
        return paired_ratio(self.times[name], self.times[self.reference])

    def median_seconds(self, name: str) -> float:
        return float(np.median(self.times[name]))

    def summary(self) -> str:
        """One line: whether every tracked interval got under the half-width, and at what cost."""
        widest = max((self.ratio(name).half_width for name in self.tracked), default=0.0)
        verdict = ("reached" if self.reached else "NOT reached (time cap)" if self.finished
                   else "not yet")
        return (f"interval half-width < {self.half_width:.3f} {verdict}: widest ±{widest:.3f} "
                f"after {self.rounds} interleaved rounds, {self.seconds:.0f} s")


def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """Shuffled in even rounds (seeded by the round), the previous order reversed in odd ones."""
    order = list(names)
    random.Random(round_index // 2).shuffle(order)
    return order[::-1] if round_index % 2 else order


def interleave(steps: dict[str, Callable[[], float]], *, reference: str,
               tracked: Sequence[str] | None = None, half_width: float = HALF_WIDTH,
               min_rounds: int = 20, max_seconds: float = 600.0,
               max_rounds: int | None = None,
               progress: Callable[[Interleaved], None] | None = None) -> Interleaved:
    """Time ``steps`` (name → a callable that runs one step and returns its seconds) in
    interleaved rounds until the ratio to ``reference`` of every name in ``tracked`` (default:
    all others) has a bootstrap interval narrower than ±``half_width``, after at least
    ``min_rounds`` rounds; stop anyway after ``max_seconds`` (or ``max_rounds``)."""
    if reference not in steps:
        raise ValueError(f"reference {reference!r} is not among {list(steps)}")
    min_rounds = max(min_rounds, 2)
    tracked = tuple(tracked) if tracked is not None else tuple(n for n in steps if n != reference)
    result = Interleaved({name: [] for name in steps}, reference, tracked, half_width)
    for name in round_order(list(steps), 0):  # warm-up round, discarded
        steps[name]()
    start = time.perf_counter()
    round_index = 0
    while True:
        for name in round_order(list(steps), round_index):
            result.times[name].append(steps[name]())
        round_index += 1
        result.seconds = time.perf_counter() - start
        result.reached = round_index >= min_rounds and all(
            result.ratio(name).half_width < half_width for name in tracked)
        result.finished = result.reached or result.seconds >= max_seconds or (
            max_rounds is not None and round_index >= max_rounds)
        if result.finished:
            return result
        if progress is not None and round_index % 10 == 0:
            progress(result)
