"""Madry et al. PGD adversarial training: min_θ CE(f(x'), y), x' = PGD on CE."""

from __future__ import annotations

from trainables.defenses import register_defense
from trainables.defenses.base import Defense, StepOutput, accuracy


@register_defense("pgd_at")
class PGDAdversarialTraining(Defense):
    label_terms_smoothed = True
    presets = {
        "madry_cifar10": {"weight_decay": 5e-4, "defense_params": {}},
        "emr_mlp_mnist": {"weight_decay": 1e-3, "defense_params": {}},  # EMR Table 1
    }

    def step(self, model, x, y, x_adv, state=None, *, ids=None) -> StepOutput:
        logits_adv = model(x_adv)
        loss = self.cross_entropy(logits_adv, y)
        metrics = {"loss": loss.item(), "adversarial_accuracy": accuracy(logits_adv, y)}
        return StepOutput(loss, metrics, state)
