"""Adversarial Logit Pairing (Kannan et al. 2018), in the form HE's Table 1 trains it.

Inner maximisation: untargeted PGD on CE(f(x'), y) (HE Sec. 4 replaces ALP's original targeted
attack by untargeted PGD, following Engstrom et al.). Outer minimisation::

    0.5·CE(f(x), y) + 0.5·CE(f(x'), y) + λ·mean_i ‖f(xᵢ) − f(x'ᵢ)‖₂

The pairing term is the per-example L2 norm of the logit difference (not squared; with a linear
head it equals HE's ‖Wᵀ(z − z*)‖₂, the bias cancels), averaged over the batch. HE sets both the
mixing weight α and the pairing weight λ to 0.5 on CIFAR-10.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainables.defenses import register_defense
from trainables.defenses.base import Defense, StepOutput, accuracy, knob

_CLEAN_WEIGHT = 0.5  # α in HE's Table 1; the adversarial CE gets 1 − α


def logit_pairing(logits: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """Batch mean of the per-example L2 distance between clean and adversarial logits."""
    # vector_norm's backward is defined as 0 where the difference vanishes (ε = 0, no NaN).
    return torch.linalg.vector_norm(logits - logits_adv, ord=2, dim=1).mean()


@register_defense("alp")
class AdversarialLogitPairing(Defense):
    label_terms_smoothed = True
    @dataclass(frozen=True)
    class Params:
        lambda_alp: float = knob(0.5, low=0.0, high=100.0,
                                 doc="weight of the logit-pairing term ‖f(x) − f(x')‖₂")

    presets = {
        # HE Sec. 4, CIFAR-10 / WRN-34-10: λ = 0.5, 100 epochs, lr 0.1 ÷10 at 75 and 90,
        # batch 128, PGD-10 with step 2/255 at ε = 8/255 (the dataset default); weight decay
        # as HE states it for its WRN runs (Sec. 4.3), ALP's own is not given.
        "he_cifar10": {"weight_decay": 5e-4, "epochs": 100, "lr": 0.1, "batch_size": 128,
                       "lr_milestones": [75, 90], "attack_steps": 10,
                       "defense_params": {"lambda_alp": 0.5}},
    }

    def step(self, model, x, y, x_adv, state=None, *, ids=None) -> StepOutput:
        logits = model(x)
        logits_adv = model(x_adv)
        natural = self.cross_entropy(logits, y)
        adversarial = self.cross_entropy(logits_adv, y)
        pairing = logit_pairing(logits, logits_adv)
        loss = (_CLEAN_WEIGHT * natural + (1.0 - _CLEAN_WEIGHT) * adversarial
                + self.params.lambda_alp * pairing)
        metrics = {"loss": loss.item(), "natural_loss": natural.item(),
                   "adversarial_loss": adversarial.item(), "logit_pairing": pairing.item(),
                   "train_accuracy": accuracy(logits, y),
                   "adversarial_accuracy": accuracy(logits_adv, y)}
        return StepOutput(loss, metrics, state)

    @classmethod
    def search_space(cls, trial):
        return {"weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True),
                "defense_params": {
                    "lambda_alp": trial.suggest_float("lambda_alp", 0.01, 10.0, log=True)}}
