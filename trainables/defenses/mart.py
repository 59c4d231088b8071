"""MART (Wang et al. 2020): BCE(f(x'), y) + β·KL(p(x) ‖ p(x'))·(1 − p_y(x)), per example.

BCE(p, y) = −log p_y − log(1 − max_{k≠y} p_k) is MART's boosted cross-entropy. The inner
maximisation is PGD on CE; the start is 0.001·N(0, I) as in the authors' code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainables.defenses import register_defense
from trainables.defenses.base import Defense, StepOutput, accuracy, knob

_TINY = 1e-12


def boosted_cross_entropy(logits_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example −log p_y − log(1 − max_{k≠y} p_k)."""
    probs = F.softmax(logits_adv, dim=1)
    wrong = probs.masked_fill(F.one_hot(y, probs.shape[1]).bool(), 0.0).max(dim=1).values
    return F.cross_entropy(logits_adv, y, reduction="none") - torch.log(1.0 - wrong + _TINY)


@register_defense("mart")
class MART(Defense):
    @dataclass(frozen=True)
    class Params:
        beta: float = knob(6.0, low=0.0, high=100.0, doc="weight of the misclassification-"
                                                          "aware KL term")

    default_random_start = "gaussian"
    presets = {
        "mart_paper": {"weight_decay": 3.5e-3, "defense_params": {"beta": 6.0}},
        "lma_paper": {"weight_decay": 3.5e-3, "defense_params": {"beta": 5.0}},
    }

    def step(self, model, x, y, x_adv, state=None, *, ids=None) -> StepOutput:
        logits = model(x)
        logits_adv = model(x_adv)
        p_clean = F.softmax(logits, dim=1)
        bce = boosted_cross_entropy(logits_adv, y).mean()
        kl = (p_clean * (torch.log(p_clean + _TINY) - F.log_softmax(logits_adv, dim=1))).sum(1)
        weight = 1.0 - p_clean.gather(1, y[:, None]).squeeze(1)
        robust = (kl * weight).mean()
        loss = bce + self.params.beta * robust
        metrics = {"loss": loss.item(), "boosted_ce": bce.item(),
                   "robust_loss": robust.item(), "train_accuracy": accuracy(logits, y),
                   "adversarial_accuracy": accuracy(logits_adv, y)}
        return StepOutput(loss, metrics, state)

    @classmethod
    def search_space(cls, trial):
        return {"weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True),
                "defense_params": {"beta": trial.suggest_float("beta", 1.0, 10.0)}}
