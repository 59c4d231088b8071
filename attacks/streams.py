"""Per-point randomness and batch-size-proof forward passes, for attacks whose verdict on a
point must not depend on the other points attacked with it.

An attack that draws its random numbers for a whole batch gives a point different numbers
when the batch holds other points; a cascade (:mod:`attacks.cascade`) attacks fewer points than
the full evaluation, so such an attack could decide differently there. :func:`point_generators`
gives each point its own generator, seeded from the evaluation's seed and the point's own
values: the point draws the same numbers whatever else is in its batch (a repeated image draws
what its twin draws, which is what it would draw alone).

Matrix products on very small batches take other kernels than on larger ones, and their last
bits differ (on this CPU, batches under 16 rows); :func:`padded_forward` and :func:`pad_rows`
run such batches at :data:`MIN_ROWS` rows by repeating their own rows, so each row's logits are
those it gets inside any larger batch.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

MIN_ROWS = 32  # batches are run with at least this many rows (see the module's docstring)


def point_generators(x: torch.Tensor, seed: int) -> list[torch.Generator]:
    """One generator per point of ``x`` (on ``x``'s device), seeded from ``seed`` and the
    point's values."""
    rows = x.detach().to("cpu", torch.float32).contiguous().flatten(1).numpy()
    key = int(seed).to_bytes(8, "little", signed=True)
    generators = []
    for row in rows:
        digest = hashlib.blake2b(row.tobytes(), digest_size=8, key=key).digest()
        generators.append(torch.Generator(device=x.device)
                          .manual_seed(int.from_bytes(digest, "little") >> 1))
    return generators


def pad_rows(t: torch.Tensor, rows: int = MIN_ROWS) -> torch.Tensor:
    """``t`` with its rows repeated in turn up to ``rows`` rows (as it is when it has as
    many or none); its first ``len(t)`` rows are ``t``."""
    if len(t) == 0 or len(t) >= rows:
        return t
    return t[torch.arange(rows, device=t.device) % len(t)]


def padded_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, computed in a batch of at least :data:`MIN_ROWS` rows."""
    return model(pad_rows(x))[:len(x)]
