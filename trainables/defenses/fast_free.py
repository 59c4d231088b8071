"""Single-step adversarial training: Fast AT (Wong et al. 2020) and Free AT (Shafahi et al. 2019).

Both train on CE(f(x'), y) with one gradient step per perturbation, and both ignore the config's
``attack_steps`` / ``attack_step_size``: their step is a fixed multiple of ε.

``fast_at``: x' = Π(x₀ + α·sign(∇ₓ CE(f(x₀), y))), x₀ uniform in the ε-ball (Π: projection onto
the ball ∩ [0, 1]), α = ``alpha_ratio``·ε with 1.25 the paper's choice (larger steps lead to
catastrophic overfitting). The attack runs in eval mode like every training attack here (the
authors' code attacks in train mode; the paper does not discuss it).

``free_at``: every minibatch is replayed ``replays`` (m) times. One perturbation δ is carried
across replays and minibatches (the authors' global noise, zero at the start). Each replay trains
on x' = clip_[0,1](x + δ) and then, from the input gradient that the same backward pass already
produced, updates δ ← clip_ε(δ + ``step_ratio``·ε·sign(g)). As in the authors' code g is the
gradient with respect to δ, i.e. through the [0, 1] clip, so it vanishes where the clip is
active. δ keeps the shape of the largest batch seen; a shorter batch uses its first rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from attacks.pgd import pgd
from trainables.defenses import register_defense
from trainables.defenses.base import Defense, StepOutput, accuracy, knob

# Wong et al. 2020, CIFAR-10, Sec. 5.1 / Appendix: 15 epochs, a cyclic learning rate rising
# linearly from 0 to 0.2 and back to 0 over the run (peak at half of it), batch 128, wd 5e-4
_WONG_CIFAR10 = {"epochs": 15, "lr": 0.2, "schedule": "cyclic", "cyclic_peak": 0.5,
                 "batch_size": 128, "weight_decay": 5e-4}


def _cross_entropy_on(defense: Defense, model, x_adv, y):
    logits_adv = model(x_adv)
    loss = defense.cross_entropy(logits_adv, y)
    return loss, {"loss": loss.item(), "adversarial_accuracy": accuracy(logits_adv, y)}


@register_defense("fast_at")
class FastAdversarialTraining(Defense):
    label_terms_smoothed = True
    @dataclass(frozen=True)
    class Params:
        alpha_ratio: float = knob(1.25, low=0.0, high=4.0, doc="FGSM step as a multiple of ε")

    presets = {
        "wong_cifar10": {**_WONG_CIFAR10, "defense_params": {"alpha_ratio": 1.25}},
        "he_cifar10": {**_WONG_CIFAR10, "epochs": 30,  # HE Table 3
                       "defense_params": {"alpha_ratio": 1.25}},
    }

    def perturb(self, model, x, y, state=None, *, ids=None):
        a = self.attack
        return pgd(model, x, y, epsilon=a.epsilon, steps=1,
                   step_size=self.params.alpha_ratio * a.epsilon, norm=a.norm, loss="ce",
                   random_start=a.random_start or self.default_random_start, mode="eval")

    def step(self, model, x, y, x_adv, state=None, *, ids=None) -> StepOutput:
        return StepOutput(*_cross_entropy_on(self, model, x_adv, y), state)

    @classmethod
    def search_space(cls, trial):
        return {"weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True),
                "defense_params": {
                    "alpha_ratio": trial.suggest_float("alpha_ratio", 0.75, 1.5)}}


@dataclass
class FreeATState:
    """The carried perturbation δ; ``clamp_mask`` lives only between ``step`` and the backward."""

    delta: torch.Tensor | None = None
    clamp_mask: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"delta": None if self.delta is None else self.delta.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        delta = state.get("delta")
        self.delta = None if delta is None else delta.detach().clone()
        self.clamp_mask = None


def _per_example(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (t.dim() - 1)))


@register_defense("free_at")
class FreeAdversarialTraining(Defense):
    label_terms_smoothed = True
    @dataclass(frozen=True)
    class Params:
        replays: int = knob(8, low=1, high=64, doc="m: training passes per minibatch")
        step_ratio: float = knob(1.0, low=0.0, high=4.0,
                                 doc="δ update step as a multiple of ε (the paper: 1)")

    presets = {
        # Shafahi et al. CIFAR-10: m = 8 on Madry's training setup (weight decay 2e-4).
        "shafahi_cifar10": {"weight_decay": 2e-4, "defense_params": {"replays": 8}},
        # HE Table 3 trains 10 epochs (m not stated there; Shafahi's CIFAR-10 value).
        "he_cifar10": {"weight_decay": 2e-4, "epochs": 10, "defense_params": {"replays": 8}},
        # HE Sec. 4 / Shafahi et al. ImageNet: m = 4, ε = 4/255, batch 256, lr 0.1.
        "he_imagenet": {"epsilon": 4 / 255, "batch_size": 256, "lr": 0.1, "weight_decay": 1e-4,
                        "defense_params": {"replays": 4}},
    }

    @property
    def replays(self) -> int:
        return self.params.replays

    def init_state(self, *, num_examples, batch_size, num_classes, epochs):
        return FreeATState()

    @staticmethod
    def carried_delta(state: FreeATState | None, x: torch.Tensor) -> torch.Tensor:
        """δ for a batch like ``x``: reset on a new input shape, zero-padded to a larger batch."""
        delta = state.delta if state is not None else None
        if delta is None or delta.shape[1:] != x.shape[1:]:
            return torch.zeros_like(x)
        delta = delta.to(device=x.device, dtype=x.dtype)
        if len(delta) < len(x):
            delta = torch.cat([delta, delta.new_zeros((len(x) - len(delta), *x.shape[1:]))])
        return delta

    def perturb(self, model, x, y, state=None, *, ids=None):
        delta = self.carried_delta(state, x)[: len(x)]
        return (x.detach() + delta).clamp(0.0, 1.0).requires_grad_(True)

    def step(self, model, x, y, x_adv, state=None, *, ids=None) -> StepOutput:
        loss, metrics = _cross_entropy_on(self, model, x_adv, y)
        delta = self.carried_delta(state, x)
        shifted = x.detach() + delta[: len(x)]
        inside = (shifted >= 0.0) & (shifted <= 1.0)  # where clip_[0,1] passes the gradient
        return StepOutput(loss, metrics, FreeATState(delta=delta, clamp_mask=inside))

    def after_backward(self, state, x_adv):
        if state is None or state.clamp_mask is None or x_adv.grad is None:
            return state
        a, n = self.attack, len(x_adv)
        grad = x_adv.grad.detach().to(state.delta.dtype) * state.clamp_mask
        if a.norm == "linf":
            direction = grad.sign()
        else:
            direction = grad / _per_example(grad.flatten(1).norm(dim=1).clamp_min(1e-12))
        moved = state.delta[:n] + self.params.step_ratio * a.epsilon * direction
        if a.norm == "linf":
            moved = moved.clamp(-a.epsilon, a.epsilon)
        else:
            norms = moved.flatten(1).norm(dim=1).clamp_min(1e-12)
            moved = moved * _per_example((a.epsilon / norms).clamp(max=1.0))
        delta = state.delta.clone()
        delta[:n] = moved
        return FreeATState(delta=delta)

    @classmethod
    def search_space(cls, trial):
        return {"weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True),
                "defense_params": {"replays": trial.suggest_int("replays", 2, 10)}}
