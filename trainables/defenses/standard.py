"""Standard training: cross-entropy on clean inputs, no attack."""

from __future__ import annotations

from trainables.defenses import register_defense
from trainables.defenses.base import Defense, StepOutput, accuracy


@register_defense("standard")
class StandardTraining(Defense):
    label_terms_smoothed = True
    clean_training = True

    def perturb(self, model, x, y, state=None, *, ids=None):
        return x

    def step(self, model, x, y, x_adv, state=None, *, ids=None) -> StepOutput:
        logits = model(x)
        loss = self.cross_entropy(logits, y)
        metrics = {"loss": loss.item(), "train_accuracy": accuracy(logits, y)}
        return StepOutput(loss, metrics, state)
