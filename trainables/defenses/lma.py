"""Logits Moving Average AT (LMA paper): a squared-hinge margin loss and an EMA-of-logits
regulariser added to AT, TRADES and MART, plus the paper's own LMA-AT objective (Table 1).

Every variant shares three pieces:

* the margin loss L'_i = Σ_{j≠y} max(0, f_j(x') − f_y(x') + δ)² (Eq. 13), summed over classes
  and averaged over the batch;
* the inner maximisation: PGD on L'_i + CE(f(x'), y) from x + 0.001·N(0, I) (Algorithm 1),
  in eval mode like every training attack here (the paper says nothing otherwise);
* β·mHuber(logit'_t, logit_t, α) between exponential moving averages of the adversarial and the
  natural logits, logit'_t = τ·logit'_{t−1} + (1−τ)·f(x'), logit_t = τ·logit_{t−1} + (1−τ)·f(x),
  both starting at 0 (Algorithm 1). The previous averages are constants (detached); only the
  current logits carry the gradient. The outer logits come from the model in the mode the
  engine gives it (train), as Algorithm 1's update uses f(·, θ) with no mode switch.

The averages live per batch position (Algorithm 1 keeps m × C tensors), in an
:class:`LMAState` of ``batch_size × num_classes`` buffers. A short batch of n < batch_size rows
(the last one of an epoch) reads and updates only rows [0, n); the other rows keep their values.

Objectives (Table 1, Eqs. 15, 17, 18):

* ``at_lma``     L' + CE(f(x'), y) + β·mHuber
* ``trades_lma`` L' + CE(f(x), y) + (1/λ)·KL(p(x) ‖ p(x')) + β·mHuber, ``lambda_kl`` = λ with
  1/λ = 6 in the paper (Sec. 5.1), so the default is λ = 1/6
* ``mart_lma``   L' + BCE(f(x'), y) + λ·KL(p(x) ‖ p(x'))·(1 − p_y(x)) + β·mHuber, ``lambda_kl``
  = λ = 5 in the paper (Sec. 5.1)
* ``lma_at``     L' + BCE(f(x'), y) + β·mHuber

Paper settings (Sec. 5.1): β = 86 on CIFAR-10 (96 on CIFAR-100), α = 5.345 for ResNet-18 and
2.345 for WRN-34-10, τ = 0.2 (Tables 2–3), δ = 0.9; SGD, momentum 0.9, batch 100, lr 0.01 ÷ 10
at epochs 75 and 90, 130 epochs, weight decay 3.5e-3 (Sec. 5.1 sets it although Sec. 4.4 says
the method avoids an l2 penalty on the weights; we follow the explicit setting).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from trainables.defenses import register_defense
from trainables.defenses.base import Defense, StepOutput, accuracy, knob
from trainables.defenses.mart import boosted_cross_entropy
from trainables.defenses.trades import kl_per_example

_TINY = 1e-12


# --------------------------------------------------------------------------- the pieces
def margin_loss_per_example(logits: torch.Tensor, y: torch.Tensor, delta: float) -> torch.Tensor:
    """Eq. 13: Σ_{j≠y} max(0, f_j − f_y + δ)², one value per example."""
    true = logits.gather(1, y[:, None])
    hinge = (logits - true + delta).clamp_min(0.0).pow(2)
    return hinge.masked_fill(F.one_hot(y, logits.shape[1]).bool(), 0.0).sum(dim=1)


def margin_ce_attack_loss(delta: float):
    """The inner-maximisation objective L'_i + CE_i (Algorithm 1), per example."""
    def objective(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (margin_loss_per_example(logits, y, delta)
                + F.cross_entropy(logits, y, reduction="none"))
    return objective


def mhuber(u: torch.Tensor, v: torch.Tensor, alpha: float) -> torch.Tensor:
    """Modified Huber (Sec. 3): α²(1 − cos(d/α)) where |d|/α ≤ π/2, else α|d| + (1 − π/2)α²,
    with d = u − v, averaged over all elements. Both branches equal α² at the boundary."""
    d = u - v
    inner = alpha ** 2 * (1.0 - torch.cos(d / alpha))
    outer = alpha * d.abs() + (1.0 - math.pi / 2) * alpha ** 2
    return torch.where(d.abs() / alpha <= math.pi / 2, inner, outer).mean()


def moving_average(previous: torch.Tensor, current: torch.Tensor, tau: float) -> torch.Tensor:
    """τ·previous + (1 − τ)·current; the previous average is a constant for the gradient."""
    return tau * previous.detach() + (1.0 - tau) * current


class LMAState:
    """EMA buffers of adversarial and natural logits, one row per batch position."""

    def __init__(self, adversarial: torch.Tensor, natural: torch.Tensor) -> None:
        if adversarial.shape != natural.shape or adversarial.dim() != 2:
            raise ValueError(f"LMA buffers must be two equal batch × classes tensors, got "
                             f"{tuple(adversarial.shape)} and {tuple(natural.shape)}")
        self.adversarial = adversarial.detach()
        self.natural = natural.detach()

    @classmethod
    def zeros(cls, batch_size: int, num_classes: int,
              dtype: torch.dtype = torch.float32) -> LMAState:
        return cls(torch.zeros(batch_size, num_classes, dtype=dtype),
                   torch.zeros(batch_size, num_classes, dtype=dtype))

    @property
    def batch_size(self) -> int:
        return self.adversarial.shape[0]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"adversarial_ema": self.adversarial.detach().cpu().clone(),
                "natural_ema": self.natural.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = {"adversarial_ema", "natural_ema"}
        if set(state) != expected:
            raise ValueError(f"LMA state needs keys {sorted(expected)}, got {sorted(state)}")
        for key, current in (("adversarial_ema", self.adversarial),
                             ("natural_ema", self.natural)):
            if tuple(state[key].shape) != tuple(current.shape):
                raise ValueError(f"LMA state {key} has shape {tuple(state[key].shape)}, "
                                 f"this run needs {tuple(current.shape)}")
        self.adversarial = state["adversarial_ema"].detach().clone()
        self.natural = state["natural_ema"].detach().clone()


# --------------------------------------------------------------------------- the defenses
@dataclass(frozen=True)
class LMAParams:
    tau: float = knob(0.2, low=0.0, high=0.99, doc="EMA factor of the logits (τ; 0 = none)")
    delta: float = knob(0.9, low=0.0, high=10.0, doc="margin δ of the squared hinge loss L'")
    alpha: float = knob(5.345, low=1e-3, high=100.0,
                        doc="mHuber scale α (5.345 ResNet-18, 2.345 WRN-34-10)")
    beta: float = knob(86.0, low=0.0, high=1000.0, doc="weight β of the mHuber EMA term")


def _paper_presets(**extra: float) -> dict[str, dict[str, Any]]:
    """Sec. 5.1 settings per dataset × model, with the variant's extra knobs."""
    common = {"epochs": 130, "batch_size": 100, "lr": 0.01, "momentum": 0.9,
              "weight_decay": 3.5e-3, "schedule": "piecewise", "lr_milestones": [75, 90],
              "lr_gamma": 0.1, "epsilon": 8 / 255, "attack_steps": 10,
              "attack_step_size": 2 / 255}
    settings = {"cifar10_resnet18": ("cifar10", "resnet18", 86.0, 5.345),
                "cifar10_wrn34_10": ("cifar10", "wrn-34-10", 86.0, 2.345),
                "cifar100_resnet18": ("cifar100", "resnet18", 96.0, 5.345)}
    return {name: {**common, "dataset": dataset, "model": model,
                   "defense_params": {"tau": 0.2, "delta": 0.9, "alpha": alpha, "beta": beta,
                                      **extra}}
            for name, (dataset, model, beta, alpha) in settings.items()}


class LMADefense(Defense):
    """Shared inner maximisation, margin loss and EMA regulariser; subclasses add the base
    objective in ``base_terms``."""

    Params = LMAParams
    default_random_start = "gaussian"  # Algorithm 1: x + 0.001·N(0, I)

    def perturb(self, model, x, y, state=None, *, ids=None):
        return self.pgd(model, x, y, loss=margin_ce_attack_loss(self.params.delta))

    def base_terms(self, logits: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor
                   ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def init_state(self, *, num_examples, batch_size, num_classes, epochs):
        return LMAState.zeros(batch_size, num_classes)

    def step(self, model, x, y, x_adv, state=None, *, ids=None) -> StepOutput:
        """Loss, metrics and the next EMA state; ``state=None`` is the first iteration."""
        logits = model(x)
        logits_adv = model(x_adv)
        n, num_classes = logits.shape
        if state is None:
            state = LMAState.zeros(n, num_classes)
        if n > state.batch_size or num_classes != state.adversarial.shape[1]:
            raise ValueError(f"batch of {n} × {num_classes} logits does not fit the LMA state "
                             f"of {tuple(state.adversarial.shape)}")
        # float64 logits keep float64 averages; bf16 autocast logits keep float32 ones
        dtype = torch.promote_types(state.adversarial.dtype, logits.dtype)
        adversarial = state.adversarial.to(device=logits.device, dtype=dtype)
        natural = state.natural.to(device=logits.device, dtype=dtype)
        ema_adv = moving_average(adversarial[:n], logits_adv.to(dtype), self.params.tau)
        ema_nat = moving_average(natural[:n], logits.to(dtype), self.params.tau)

        margin = margin_loss_per_example(logits_adv, y, self.params.delta).mean()
        regulariser = mhuber(ema_adv, ema_nat, self.params.alpha)
        base, metrics = self.base_terms(logits, logits_adv, y)
        loss = margin + base + self.params.beta * regulariser

        adversarial, natural = adversarial.clone(), natural.clone()
        adversarial[:n] = ema_adv.detach()
        natural[:n] = ema_nat.detach()
        metrics = {"loss": loss.item(), "margin_loss": margin.item(),
                   "mhuber": regulariser.item(), **metrics,
                   "train_accuracy": accuracy(logits, y),
                   "adversarial_accuracy": accuracy(logits_adv, y)}
        return StepOutput(loss, metrics, LMAState(adversarial, natural))

    @classmethod
    def search_space(cls, trial):
        return {"weight_decay": trial.suggest_float("weight_decay", 1e-4, 1e-2, log=True),
                "defense_params": {
                    "tau": trial.suggest_float("tau", 0.0, 0.9),
                    "delta": trial.suggest_float("delta", 0.1, 2.0),
                    "alpha": trial.suggest_float("alpha", 1.0, 8.0),
                    "beta": trial.suggest_float("beta", 1.0, 200.0, log=True),
                    **cls.extra_search_space(trial)}}

    @classmethod
    def extra_search_space(cls, trial) -> dict[str, float]:
        return {}


@register_defense("at_lma")
class ATWithLMA(LMADefense):
    """Eq. 15: L' + CE(f(x'), y) + β·mHuber."""

    presets = _paper_presets()

    def base_terms(self, logits, logits_adv, y):
        ce = F.cross_entropy(logits_adv, y)
        return ce, {"adversarial_ce": ce.item()}


@register_defense("trades_lma")
class TRADESWithLMA(LMADefense):
    """Eq. 17: L' + CE(f(x), y) + (1/λ)·KL(p(x) ‖ p(x')) + β·mHuber; λ = 1/6 in the paper."""

    @dataclass(frozen=True)
    class Params(LMAParams):
        lambda_kl: float = knob(1 / 6, low=1e-3, high=100.0,
                                doc="TRADES λ: the KL term is weighted by 1/λ (paper 1/λ = 6)")

    presets = _paper_presets(lambda_kl=1 / 6)

    def base_terms(self, logits, logits_adv, y):
        natural = F.cross_entropy(logits, y)
        kl = kl_per_example(F.softmax(logits, dim=1), logits_adv).mean()
        return natural + kl / self.params.lambda_kl, {"natural_ce": natural.item(),
                                                      "kl": kl.item()}

    @classmethod
    def extra_search_space(cls, trial):
        return {"lambda_kl": trial.suggest_float("lambda_kl", 1 / 12, 1.0, log=True)}


@register_defense("mart_lma")
class MARTWithLMA(LMADefense):
    """Table 1: L' + BCE(f(x'), y) + λ·KL(p(x) ‖ p(x'))·(1 − p_y(x)) + β·mHuber; λ = 5."""

    @dataclass(frozen=True)
    class Params(LMAParams):
        lambda_kl: float = knob(5.0, low=0.0, high=100.0,
                                doc="MART λ: weight of the misclassification-aware KL term")

    presets = _paper_presets(lambda_kl=5.0)

    def base_terms(self, logits, logits_adv, y):
        p_clean = F.softmax(logits, dim=1)
        bce = boosted_cross_entropy(logits_adv, y).mean()
        kl = (p_clean * (torch.log(p_clean + _TINY) - F.log_softmax(logits_adv, dim=1))).sum(1)
        robust = (kl * (1.0 - p_clean.gather(1, y[:, None]).squeeze(1))).mean()
        return bce + self.params.lambda_kl * robust, {"boosted_ce": bce.item(),
                                                      "robust_loss": robust.item()}

    @classmethod
    def extra_search_space(cls, trial):
        return {"lambda_kl": trial.suggest_float("lambda_kl", 1.0, 10.0)}


@register_defense("lma_at")
class LMAAT(LMADefense):
    """Eq. 18, the paper's LMA-AT: L' + BCE(f(x'), y) + β·mHuber."""

    presets = _paper_presets()

    def base_terms(self, logits, logits_adv, y):
        bce = boosted_cross_entropy(logits_adv, y).mean()
        return bce, {"boosted_ce": bce.item()}
