"""Effective Margin Regularization (Liu & Chan, ECCV 2022) on top of a base defense.

The regulariser penalises the effective (local) weight norm w_i^(j) = ∇ₓ f_j(x_i):

* exact, Eq. 5:   L_EMR = (1/B) Σ_i Σ_j ‖∇ₓ f_j(x_i)‖²  (one input-gradient per class);
* approx, Eq. 7:  L_EMR = (1/B) Σ_i ‖∇ₓ Σ_j p_ij f_j(x̃_i)‖²,  p_i = softmax(f(x̃_i)/t) detached
  (taken from the same eval-mode forward pass).

Both are computed with the model in eval mode (Sec. 4: BatchNorm in train mode would couple the
examples of a batch, and the local-linear reading w_i = W(x_i) needs a per-example function) and
with ``create_graph=True`` so the parameters receive the double-backward gradient. Algorithm 1
states eval mode for the approximation; Sec. 3 (exact form) uses models without BatchNorm, where
the mode makes no difference, so eval mode is used for both.

The base defense (``emr_base``) supplies the attack and the base loss; the total loss is
base loss + λ_EMR·L_EMR, on the adversarial inputs by default (Table 4) or the clean ones.
λ_EMR is divided by 10 whenever the learning rate is (Sec. 5.1): ``at_epoch`` scales it by the
learning rate's ratio to its initial value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attacks.pgd import model_mode
from trainables.defenses import create_defense, defense_class, list_defenses, register_defense
from trainables.defenses.base import Defense, DefenseConfigError, StepOutput, knob

# "standard" is not among SPEC's bases, but the paper's Table 1/2 ST+EMR rows need it.
BASES = ("standard", "pgd_at", "trades", "mart", "mail_at", "mail_trades")
SEARCHED_BASES = ("pgd_at", "trades", "mart", "mail_at", "mail_trades")
PASS_THROUGH = ("beta", "slope", "bias")  # base knobs; None means the base's own default

# Training settings shared by the paper's presets (Sec. 3, Sec. 5.1, Appendix A).
_WRN = {"dataset": "cifar10", "model": "wrn-34-10", "lr": 0.1, "batch_size": 128}
_RESNET = {**_WRN, "model": "resnet18"}
_MAIL = {**_WRN, "epochs": 100, "lr_milestones": [75, 90], "weight_decay": 2e-4}
_MLP = {"dataset": "mnist", "model": "mlp", "epochs": 50, "batch_size": 100, "lr": 0.01,
        "lr_milestones": [30], "weight_decay": 1e-3, "attack_steps": 20,
        "attack_step_size": 0.01, "eval_steps": 20}
_CNN = {"dataset": "cifar10", "model": "cnn4", "epochs": 100, "batch_size": 100,
        "lr": 0.01, "lr_milestones": [75, 90], "weight_decay": 5e-4, "epsilon": 0.031,
        "attack_step_size": 0.0078, "eval_steps": 10}


def emr_penalty(model: nn.Module, x: torch.Tensor, *, temperature: float = 1.0,
                exact: bool = False) -> torch.Tensor:
    """L_EMR at inputs ``x`` (batch mean), differentiable w.r.t. the model's parameters.

    Runs the model in eval mode (BatchNorm running statistics are read, never updated) and
    restores its previous mode.
    """
    with model_mode(model, "eval"), torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = model(x)
        if exact:
            squared = x.new_zeros(x.shape[0])
            for j in range(logits.shape[1]):
                (w_j,) = torch.autograd.grad(logits[:, j].sum(), x, create_graph=True,
                                             retain_graph=True)
                squared = squared + w_j.flatten(1).pow(2).sum(1)
        else:
            p = F.softmax(logits.detach() / temperature, dim=1)
            (w_bar,) = torch.autograd.grad((p * logits).sum(), x, create_graph=True)
            squared = w_bar.flatten(1).pow(2).sum(1)
    return squared.mean()


@register_defense("emr")
@dataclass(frozen=True)
class EffectiveMarginRegularization(Defense):
    @dataclass(frozen=True)
    class Params:
        emr_base: str = knob("pgd_at", choices=BASES, doc="defense EMR is added to")
        lambda_emr: float = knob(1.0, low=0.0, high=1e4, doc="weight λ_EMR of the regulariser "
                                                            "(scaled with the learning rate)")
        temperature: float = knob(1.0, low=1e-6, high=1e6, doc="softmax temperature t of the "
                                                               "approximation (Eq. 7)")
        emr_exact: bool = knob(False, doc="exact Eq. 5 (one gradient per class) instead of "
                                          "the approximation Eq. 7")
        emr_on: str = knob("adv", choices=("adv", "clean"), doc="inputs the regulariser is "
                                                                "computed on (Table 4)")
        beta: float | None = knob(None, doc="base knob (trades, mart, mail_trades); "
                                            "None: the base's default")
        slope: float | None = knob(None, doc="base knob (mail_*); None: the base's default")
        bias: float | None = knob(None, doc="base knob (mail_*); None: the base's default")

        def __post_init__(self) -> None:
            for name in PASS_THROUGH:
                value = getattr(self, name)
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise DefenseConfigError(f"emr.{name} must be a number or None, "
                                             f"got {value!r}")
                object.__setattr__(self, name, float(value))

    base: Defense | None = field(default=None, repr=False, compare=False)

    presets = {
        # Sec. 3, Table 1 (exact EMR; PGD20, ε=0.1, step 0.01 both for training and testing)
        "mlp_mnist_st": {**_MLP, "defense_params": {
            "emr_base": "standard", "emr_exact": True, "lambda_emr": 0.1}},
        "mlp_mnist_at": {**_MLP, "defense_params": {
            "emr_base": "pgd_at", "emr_exact": True, "lambda_emr": 3e-4}},
        # Sec. 3, Table 2 (exact EMR; PGD10, ε=0.031, step 0.0078)
        "cnn4_cifar10_st": {**_CNN, "defense_params": {
            "emr_base": "standard", "emr_exact": True, "lambda_emr": 0.01}},
        "cnn4_cifar10_at": {**_CNN, "defense_params": {
            "emr_base": "pgd_at", "emr_exact": True, "lambda_emr": 1e-3}},
        # Sec. 5.1 schedules; Table 6 (ResNet-18). The paper's Table 6 has t = 0.1 for
        # TRADES+EMR on ResNet-18 (SPEC's t = 1.0 is the WideResNet value, Table 7).
        "resnet18_at": {**_RESNET, "epochs": 100, "lr_milestones": [60, 90],
                        "weight_decay": 5e-4, "defense_params": {
                            "emr_base": "pgd_at", "lambda_emr": 0.1, "temperature": 40.0}},
        "resnet18_trades": {**_RESNET, "epochs": 130, "lr_milestones": [60, 120],
                            "weight_decay": 5e-4, "defense_params": {
                                "emr_base": "trades", "beta": 12.0, "lambda_emr": 0.3,
                                "temperature": 0.1}},
        # Table 7 (WideResNet-34-10)
        "wrn34_10_at": {**_WRN, "epochs": 100, "lr_milestones": [60, 90], "weight_decay": 5e-4,
                        "defense_params": {"emr_base": "pgd_at", "lambda_emr": 1.0,
                                           "temperature": 40.0}},
        "wrn34_10_trades": {**_WRN, "epochs": 130, "lr_milestones": [60, 120],
                            "weight_decay": 5e-4, "defense_params": {
                                "emr_base": "trades", "beta": 12.0, "lambda_emr": 0.3,
                                "temperature": 1.0}},
        # Appendix A: MART's official settings (β=6, PGD10 step 0.007, wd 3.5e-3, 90 epochs)
        "wrn34_10_mart": {**_WRN, "epochs": 90, "lr_milestones": [75, 90], "weight_decay": 3.5e-3,
                          "attack_step_size": 0.007, "defense_params": {
                              "emr_base": "mart", "beta": 6.0, "lambda_emr": 1.0,
                              "temperature": 1.0}},
        # Appendix A: MAIL defaults (PGD10 step 2/255, wd 2e-4, 100 epochs, ÷10 at 75 and 90)
        "wrn34_10_mail_at": {**_MAIL, "defense_params": {
            "emr_base": "mail_at", "slope": 30.0, "bias": 0.07, "lambda_emr": 1.0,
            "temperature": 1.0}},
        "wrn34_10_mail_trades": {**_MAIL, "defense_params": {
            "emr_base": "mail_trades", "beta": 5.0, "slope": 5.0, "bias": 0.05,
            "lambda_emr": 3.0, "temperature": 1.0}},
    }

    def __post_init__(self) -> None:
        if self.base is None:
            object.__setattr__(self, "base", _build_base(self.params, self.attack))

    # -- the regulariser ---------------------------------------------------------------
    def penalty(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        inputs = x_adv if self.params.emr_on == "adv" else x
        return emr_penalty(model, inputs, temperature=self.params.temperature,
                           exact=self.params.emr_exact)

    def _add_penalty(self, model, x, x_adv, base_loss, base_metrics):
        emr = self.penalty(model, x, x_adv)
        loss = base_loss + self.params.lambda_emr * emr
        metrics = {**base_metrics, "base_loss": base_loss.item(), "emr_loss": emr.item(),
                   "lambda_emr": float(self.params.lambda_emr), "loss": loss.item()}
        return loss, metrics

    # -- the Defense protocol, delegated to the base -------------------------------------
    def perturb(self, model, x, y, state=None, *, ids=None):
        return self.base.perturb(model, x, y, state, ids=ids)

    def loss(self, model, x, y, x_adv, state=None, *, ids=None):
        base_loss, base_metrics = self.base.loss(model, x, y, x_adv, state, ids=ids)
        return self._add_penalty(model, x, x_adv, base_loss, base_metrics)

    def step(self, model, x, y, x_adv, state=None, *, ids=None):
        base_loss, base_metrics, state = self.base.step(model, x, y, x_adv, state, ids=ids)
        loss, metrics = self._add_penalty(model, x, x_adv, base_loss, base_metrics)
        return StepOutput(loss, metrics, state)

    def after_backward(self, state, x_adv):
        return self.base.after_backward(state, x_adv)

    def at_epoch(self, epoch: int, lr_scale: float) -> EffectiveMarginRegularization:
        params = dataclasses.replace(self.params, lambda_emr=self.params.lambda_emr * lr_scale)
        return dataclasses.replace(self, params=params,
                                   base=self.base.at_epoch(epoch, lr_scale))

    def init_state(self, *, num_examples, batch_size, num_classes, epochs):
        return self.base.init_state(num_examples=num_examples, batch_size=batch_size,
                                    num_classes=num_classes, epochs=epochs)

    def model_hook(self, model: nn.Module) -> nn.Module:
        return self.base.model_hook(model)

    @classmethod
    def search_space(cls, trial) -> dict[str, Any]:
        bases = [name for name in SEARCHED_BASES if name in list_defenses()]
        base = trial.suggest_categorical("emr_base", bases)
        params: dict[str, Any] = {
            "emr_base": base,
            "lambda_emr": trial.suggest_float("lambda_emr", 0.01, 10.0, log=True),
            "temperature": trial.suggest_float("temperature", 0.1, 100.0, log=True),
        }
        if "beta" in _base_knobs(base):
            params["beta"] = trial.suggest_float("beta", 1.0, 12.0)
        return {"weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True),
                "defense_params": params}


def _base_knobs(name: str) -> set[str]:
    try:
        cls = defense_class(name)
    except KeyError:
        raise DefenseConfigError(f"emr_base {name!r} is not a registered defense; "
                                 f"registered: {', '.join(list_defenses())}") from None
    return {f.name for f in dataclasses.fields(cls.Params)}


def _build_base(params, attack) -> Defense:
    """The base defense with the pass-through knobs that were set; irrelevant ones fail."""
    given = {name: getattr(params, name) for name in PASS_THROUGH
             if getattr(params, name) is not None}
    allowed = _base_knobs(params.emr_base)
    irrelevant = sorted(set(given) - allowed)
    if irrelevant:
        own = ", ".join(sorted(allowed & set(PASS_THROUGH))) or "none of beta, slope, bias"
        raise DefenseConfigError(f"knob(s) {irrelevant} do not apply to emr_base="
                                 f"{params.emr_base!r} (it takes {own})")
    return create_defense(params.emr_base, attack=attack, **given)
