"""The cascade evaluation: attacks from cheapest to dearest, each sparing what it need not
attack, with the full evaluation's worst case and integrity flags.

**Order.** Ascending :attr:`attacks.suite.Attack.cost` (model passes per point, an estimate);
ties keep the given order. The leaderboard's suite runs PGD-100 CE (301), PGD-100 CW (301),
SPSA-light (2,021), Square with 5,000 queries (5,000) and AutoAttack standard (10,700) last.

**Which points an attack runs on.** A *pointwise* attack — its verdict on a point depends on
nothing but that point, the seed and the model (FGSM; SPSA, drawing per point from
:mod:`attacks.streams`) — skips the points an earlier *white-box* attack broke. Every other
attack runs on every clean-correct point, exactly as in the full evaluation: PGD draws its
random start for the whole batch, and AutoAttack and its parts (pyautoattack, Square among
them) draw for theirs and drop broken points as they go, so on fewer points they would decide
differently. On a random forward pass (EOT) no attack is pointwise.

**Why the worst case is the full evaluation's.** A point is robust in the worst case when it is
clean-correct and no attack broke it. An attack that runs on every clean-correct point sees the
same batches in both modes and gives the same verdicts. A pointwise attack gives the same
verdict on every point it runs on; a point it skips was broken by an earlier attack, so it is
out of the worst case in both modes.

**Why the integrity flags are the full evaluation's** (:func:`attacks.checks.result_flags`).
PGD's and AutoAttack's own accuracies (compared by the AutoAttack-gap check) are computed on
every point. The black-box check needs, per point, whether every white-box attack missed it and,
on those points, each black-box attack's verdict: white-box attacks skip only points an earlier
white-box attack broke, so the set they all missed is the same, and a black-box attack skips
none of it. (Flags an attack raises about its own adversarial points — NaN logits — cover the
points it ran on.)

**What a cascade records.** Per attack, ``attacked`` (points it ran on) and ``broken`` (how
many of those it broke). An attack that skipped points counts them as not robust (they are
broken), so its accuracy is that of it and the earlier white-box attacks together: no
leaderboard column is published for it (:mod:`attacks.rows`), and
:meth:`attacks.schema.EvaluationRecord.robust` refuses it. Attacks that ran on every
clean-correct point keep their own accuracy and column.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from attacks.evaluate import AttackResult, Broken, attack_points
from attacks.schema import MODES
from attacks.suite import Attack

CASCADE, FULL = "cascade", "full"


def check_mode(mode: str) -> str:
    """``mode`` if it is an evaluation mode; ValueError naming the known ones otherwise."""
    if mode not in MODES:
        raise ValueError(f"unknown evaluation mode {mode!r}; known: {', '.join(MODES)}")
    return mode


def cascade_order(attacks: Sequence[tuple[str, Attack]]) -> list[tuple[str, Attack]]:
    """``(label, attack)`` pairs from cheapest to dearest (ties in the given order)."""
    return sorted(attacks, key=lambda pair: pair[1].cost)


def run_cascade(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                attacks: Sequence[tuple[str, Attack]], *, clean: torch.Tensor,
                epsilon: float, norm: str, batch_size: int = 256, eot_samples: int = 0,
                say: Callable[[str], None] | None = None
                ) -> tuple[list[AttackResult], list[Broken]]:
    """The attacks' results (with their ``attacked`` and ``broken`` counts) and breaking
    points, in the order they ran (:func:`cascade_order`)."""
    white_missed = clean.clone()  # clean-correct points no white-box attack has broken yet
    results, found = [], []
    for label, attack in cascade_order(attacks):
        skips = attack.pointwise and not eot_samples
        result, points = attack_points(model, x, y, attack, label=label, clean=clean,
                                       batch_size=batch_size, epsilon=epsilon, norm=norm,
                                       targets=white_missed if skips else clean)
        if attack.white_box:
            white_missed &= result.robust
        results.append(result)
        found.append(points)
        if say is not None:
            say(f"{label}: ran on {result.attacked} points, broke {result.broken} "
                f"in {result.seconds:.1f} s")
    return results, found
