"""Is one model really more robust than another? The exact McNemar test on paired flags.

Two leaderboard rows evaluated on the same points give, per point, robust-or-not under each
model. Only the discordant points carry information: ``b`` robust under A but not B, ``c`` the
reverse. Under the null hypothesis (equal robust accuracy) each discordant point is a fair
coin, so the exact two-sided p-value is ``min(1, 2·P[Binomial(b + c, ½) ≤ min(b, c)])``.
Comparing two percentages as if independent ignores this pairing and is far less sensitive.
The flags come from evaluation records (:mod:`attacks.schema`), checked to be on the same points.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from attacks.schema import EvaluationRecord, as_record


@dataclass(frozen=True)
class McNemarResult:
    n: int
    robust_a: int
    robust_b: int
    only_a: int  # b: robust under A, broken under B
    only_b: int  # c: broken under A, robust under B
    p_value: float

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha

    @property
    def difference(self) -> float:
        """Accuracy of A minus accuracy of B."""
        return (self.robust_a - self.robust_b) / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "difference": self.difference,
                "significant": self.significant()}

    def sentence(self, name_a: str = "A", name_b: str = "B", alpha: float = 0.05) -> str:
        verdict = "significant" if self.significant(alpha) else "not significant"
        return (f"{name_a} {self.robust_a / self.n:.2%} vs {name_b} {self.robust_b / self.n:.2%}"
                f" on the same {self.n} points: {self.only_a} robust only under {name_a}, "
                f"{self.only_b} only under {name_b}; exact McNemar p = {self.p_value:.3g} "
                f"({verdict} at {alpha:g})")


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n fair trials (the smaller tail, doubled)."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def mcnemar(robust_a: Sequence[bool], robust_b: Sequence[bool]) -> McNemarResult:
    """Exact McNemar test on per-example robust flags of two models on the same points."""
    a, b = [bool(v) for v in robust_a], [bool(v) for v in robust_b]
    if len(a) != len(b):
        raise ValueError(f"the flags must be paired: {len(a)} vs {len(b)} points")
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    return McNemarResult(len(a), sum(a), sum(b), only_a, only_b,
                         binomial_two_sided(only_a, only_a + only_b))


def per_example(report: EvaluationRecord | Mapping[str, Any],
                attack: str = "worst_case") -> list[bool]:
    """Per-example robust flags of one attack (its column or label), of the worst case, or
    ``clean``, of an evaluation record (a ``report.json`` document is read as one)."""
    return list(as_record(report).robust(attack))


def compare_reports(report_a: EvaluationRecord | Mapping[str, Any],
                    report_b: EvaluationRecord | Mapping[str, Any],
                    attack: str = "worst_case") -> McNemarResult:
    """McNemar on two evaluation records; they must cover the same points."""
    a, b = as_record(report_a), as_record(report_b)
    for key in ("n", "epsilon", "norm"):
        if getattr(a, key) != getattr(b, key):
            raise ValueError(f"reports differ in {key}: {getattr(a, key)} vs "
                             f"{getattr(b, key)}; they are not paired")
    checksum_a, checksum_b = a.source.data_checksum, b.source.data_checksum
    if checksum_a and checksum_b and checksum_a != checksum_b:
        raise ValueError("reports were computed on different points")
    return mcnemar(a.robust(attack), b.robust(attack))


def load_report(path: str | Path) -> EvaluationRecord:
    """A ``report.json`` file as its evaluation record (older schema versions upgraded)."""
    return EvaluationRecord.from_dict(json.loads(Path(path).read_text()))
