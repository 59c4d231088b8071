"""TRADES (Zhang et al. 2019): CE(f(x), y) + β·KL(p(x) ‖ p(x')).

Inner maximisation: PGD on KL(p(x) ‖ p(x')) from x + 0.001·N(0, I), clean probabilities taken
in eval mode like the attack itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attacks.pgd import model_mode
from trainables.defenses import register_defense
from trainables.defenses.base import Defense, StepOutput, accuracy, knob


def kl_per_example(p_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ softmax(logits_adv)) per example, for fixed clean probabilities p."""
    log_q = F.log_softmax(logits_adv, dim=1)
    return (p_clean * (torch.log(p_clean.clamp_min(1e-12)) - log_q)).sum(dim=1)


def kl_attack_loss(model, x: torch.Tensor):
    """The TRADES attack objective against clean probabilities computed once, in eval mode."""
    with torch.no_grad(), model_mode(model, "eval"):
        p_clean = F.softmax(model(x), dim=1)
    return lambda logits_adv, y: kl_per_example(p_clean, logits_adv)


@register_defense("trades")
class TRADES(Defense):
    label_terms_smoothed = True
    @dataclass(frozen=True)
    class Params:
        beta: float = knob(6.0, low=0.0, high=100.0, doc="weight of the KL robustness term")

    default_random_start = "gaussian"
    presets = {
        "trades_paper": {"weight_decay": 2e-4, "defense_params": {"beta": 6.0}},
        "emr_paper": {"weight_decay": 5e-4, "defense_params": {"beta": 12.0}},  # EMR Sec. 5
    }

    def perturb(self, model, x, y, state=None, *, ids=None):
        return self.pgd(model, x, y, loss=kl_attack_loss(model, x))

    def step(self, model, x, y, x_adv, state=None, *, ids=None) -> StepOutput:
        logits = model(x)
        logits_adv = model(x_adv)
        natural = self.cross_entropy(logits, y)
        robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1),
                          reduction="batchmean")
        loss = natural + self.params.beta * robust
        metrics = {"loss": loss.item(), "natural_loss": natural.item(),
                   "robust_loss": robust.item(), "train_accuracy": accuracy(logits, y),
                   "adversarial_accuracy": accuracy(logits_adv, y)}
        return StepOutput(loss, metrics, state)

    @classmethod
    def search_space(cls, trial):
        return {"weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True),
                "defense_params": {"beta": trial.suggest_float("beta", 1.0, 12.0)}}
