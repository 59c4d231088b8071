"""Weight averaging: an exponential moving average of the weights (EMA) or stochastic weight
averaging (SWA), kept beside the trained model.

* EMA (Gowal et al. 2020, Sec. 4.3 "model weight averaging"; Polyak averaging): after every
  optimiser step ``θ' ← d·θ' + (1 − d)·θ``. With ``warmup`` the decay of the n-th update is
  ``min(d, (1 + n) / (10 + n))``, so the first updates do not drag the initial weights along.
  Floating-point buffers (BatchNorm's running statistics) are averaged alike; integer buffers
  (batch counters) are copied.
* SWA (Izmailov et al. 2018, Eq. 2): at the end of each epoch from ``swa_start`` on, the equal
  average ``θ' ← θ' + (θ − θ') / (n + 1)``. The averaged weights never ran forward, so their
  BatchNorm statistics are recomputed by one pass over training batches
  (:func:`recompute_batchnorm`, Izmailov et al. 2018, Sec. 3.2) before they are used.

The average is a copy of the model (``module``), evaluated, checkpointed and published like it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

KINDS = ("ema", "swa")


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Iterable, device: torch.device) -> None:
    """BatchNorm running statistics as the cumulative average over ``batches`` of (x, …),
    in train mode, without gradients; the model's mode is restored."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    was_training = model.training
    model.train()
    for x, *_ in batches:
        model(x.to(device))
    model.train(was_training)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


class WeightAverage:
    """An averaged copy of ``model``; ``update(model)`` folds the current weights in."""

    def __init__(self, model: nn.Module, *, kind: str, decay: float = 0.999,
                 warmup: bool = True) -> None:
        if kind not in KINDS:
            raise ValueError(f"weight averaging must be one of {KINDS}, got {kind!r}")
        self.kind, self.decay, self.warmup = kind, decay, warmup
        self.module = copy.deepcopy(model)
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.updates = 0
        self.stale_batchnorm = False  # SWA: statistics to recompute before use
        self._pairs(model)

    def _pairs(self, model: nn.Module) -> None:
        # state_dict tensors share storage with the live parameters and buffers, which the
        # optimiser and BatchNorm update in place: the pairing stays valid across steps
        mine, theirs = self.module.state_dict(), model.state_dict()
        floats = [k for k, v in mine.items() if v.is_floating_point()]
        self._floats = ([mine[k] for k in floats], [theirs[k] for k in floats])
        self._others = [(mine[k], theirs[k]) for k, v in mine.items()
                        if not v.is_floating_point()]

    def current_decay(self) -> float:
        """EMA: the decay the next update uses; SWA: the weight kept, n / (n + 1)."""
        if self.kind == "swa":
            return self.updates / (self.updates + 1)
        if self.warmup:
            return min(self.decay, (1 + self.updates) / (10 + self.updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - self.current_decay()
        averaged, current = self._floats
        if averaged:
            torch._foreach_lerp_(averaged, current, weight)
        for mine, theirs in self._others:
            mine.copy_(theirs)
        self.updates += 1
        self.stale_batchnorm = self.kind == "swa" and has_batchnorm(self.module)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "updates": self.updates,
                "weights": {k: v.detach().cpu().clone()
                            for k, v in self.module.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        if state["kind"] != self.kind:
            raise ValueError(f"the saved average is {state['kind']}, this run averages by "
                             f"{self.kind}")
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
        self.stale_batchnorm = self.kind == "swa" and has_batchnorm(self.module)
        self._pairs(model)
