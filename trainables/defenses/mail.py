"""MAIL (Liu et al., NeurIPS 2021): adversarial training re-weighted by the probabilistic margin.

Each example's robust loss is weighted by how close its adversarial point is to the decision
boundary in probability space. Exactly what is implemented, per batch of size B:

    PMᵢ  = p_y(x'ᵢ) − max_{j≠y} p_j(x'ᵢ)                 (probabilities of the training forward)
    ŵᵢ   = sigmoid(−slope·(PMᵢ − bias))                   (grows as the margin shrinks)
    wᵢ   = B·ŵᵢ / Σ_k ŵ_k                                  (sum to B; computed without gradient)

    mail_at:     mean_i wᵢ·CE(f(x'ᵢ), yᵢ)                    x' = PGD on CE
    mail_trades: mean_i CE(f(xᵢ), yᵢ) + β·mean_i wᵢ·KL(p(xᵢ) ‖ p(x'ᵢ))   x' = TRADES' KL attack

The batch normalisation follows the MAIL paper; the authors' released code instead
multiplies the sigmoid by a constant 3, so its effective learning rate drifts with the weights.
Defaults are the settings the EMR paper reports for MAIL (appendix: AT slope 30 / bias 0.07;
TRADES slope 5 / bias 0.05, β = 5). The attack starts from x + 0.001·N(0, I) as in the authors'
code. MAIL re-weights only after a burn-in (the authors fine-tune an AT checkpoint):
``burn_in_epochs`` epochs of plain AT / TRADES come first (0: re-weight from the start).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainables.defenses import register_defense
from trainables.defenses.base import Defense, StepOutput, accuracy, knob
from trainables.defenses.trades import kl_attack_loss, kl_per_example

_SCHEDULE = {"epochs": 100, "lr": 0.1, "lr_milestones": [75, 90], "attack_steps": 10,
             "weight_decay": 2e-4}  # EMR appendix, MAIL on WRN-34-10 (CIFAR-10)


def probabilistic_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example p_y − max_{j≠y} p_j."""
    probs = F.softmax(logits, dim=1)
    true = probs.gather(1, y[:, None]).squeeze(1)
    wrong = probs.masked_fill(F.one_hot(y, probs.shape[1]).bool(), -1.0).max(dim=1).values
    return true - wrong


@torch.no_grad()
def mail_weights(logits_adv: torch.Tensor, y: torch.Tensor, slope: float,
                 bias: float) -> torch.Tensor:
    """Detached weights B·σ(−slope·(PM − bias)) / Σ σ(·), summing to the batch size."""
    logits = logits_adv.detach()
    margin = probabilistic_margin(logits.to(torch.promote_types(logits.dtype, torch.float32)), y)
    # B·softmax(log σ(z)) is B·σ(z)/Σσ(z) without underflow when every σ(z) is tiny.
    log_weight = F.logsigmoid(-slope * (margin - bias))
    return len(y) * F.softmax(log_weight, dim=0)


@dataclass(frozen=True)
class _MAIL(Defense):
    """Shared burn-in and weighting; ``reweighting`` is False during the burn-in epochs."""

    reweighting: bool = True
    default_random_start = "gaussian"

    def at_epoch(self, epoch, lr_scale):
        return dataclasses.replace(self, reweighting=epoch >= self.params.burn_in_epochs)

    def weights(self, logits_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.reweighting:
            return torch.ones(len(y), device=y.device, dtype=logits_adv.dtype)
        return mail_weights(logits_adv, y, self.params.slope,
                            self.params.bias).to(logits_adv.dtype)

    @staticmethod
    def weight_metrics(weights: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor):
        margin = probabilistic_margin(logits_adv.detach(), y)
        return {"probabilistic_margin": margin.mean().item(),
                "mail_weight_max": weights.max().item(), "mail_weight_min": weights.min().item()}


def _slope(default: float):
    return knob(default, low=0.0, high=1000.0, doc="steepness of the sigmoid weighting")


def _bias(default: float):
    return knob(default, low=-2.0, high=2.0, doc="margin at which a weight is half its maximum")


def _burn_in():
    return knob(0, low=0, high=10_000, doc="epochs of un-weighted training before MAIL starts")


@register_defense("mail_at")
class MAILAdversarialTraining(_MAIL):
    @dataclass(frozen=True)
    class Params:
        slope: float = _slope(30.0)
        bias: float = _bias(0.07)
        burn_in_epochs: int = _burn_in()

    presets = {"emr_paper": {**_SCHEDULE, "defense_params": {"slope": 30.0, "bias": 0.07}}}

    def step(self, model, x, y, x_adv, state=None, *, ids=None) -> StepOutput:
        logits_adv = model(x_adv)
        weights = self.weights(logits_adv, y)
        loss = (weights * F.cross_entropy(logits_adv, y, reduction="none")).mean()
        metrics = {"loss": loss.item(), "adversarial_accuracy": accuracy(logits_adv, y),
                   **self.weight_metrics(weights, logits_adv, y)}
        return StepOutput(loss, metrics, state)

    @classmethod
    def search_space(cls, trial):
        return {"weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True),
                "defense_params": {"slope": trial.suggest_float("slope", 1.0, 50.0, log=True),
                                   "bias": trial.suggest_float("bias", -0.3, 0.3)}}


@register_defense("mail_trades")
class MAILTrades(_MAIL):
    @dataclass(frozen=True)
    class Params:
        slope: float = _slope(5.0)
        bias: float = _bias(0.05)
        beta: float = knob(5.0, low=0.0, high=100.0, doc="weight of the re-weighted KL term")
        burn_in_epochs: int = _burn_in()

    presets = {"emr_paper": {**_SCHEDULE,
                             "defense_params": {"slope": 5.0, "bias": 0.05, "beta": 5.0}}}

    def perturb(self, model, x, y, state=None, *, ids=None):
        return self.pgd(model, x, y, loss=kl_attack_loss(model, x))

    def step(self, model, x, y, x_adv, state=None, *, ids=None) -> StepOutput:
        logits = model(x)
        logits_adv = model(x_adv)
        weights = self.weights(logits_adv, y)
        natural = F.cross_entropy(logits, y)
        robust = (weights * kl_per_example(F.softmax(logits, dim=1), logits_adv)).mean()
        loss = natural + self.params.beta * robust
        metrics = {"loss": loss.item(), "natural_loss": natural.item(),
                   "robust_loss": robust.item(), "train_accuracy": accuracy(logits, y),
                   "adversarial_accuracy": accuracy(logits_adv, y),
                   **self.weight_metrics(weights, logits_adv, y)}
        return StepOutput(loss, metrics, state)

    @classmethod
    def search_space(cls, trial):
        return {"weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True),
                "defense_params": {"slope": trial.suggest_float("slope", 1.0, 30.0, log=True),
                                   "bias": trial.suggest_float("bias", -0.3, 0.3),
                                   "beta": trial.suggest_float("beta", 1.0, 12.0)}}
