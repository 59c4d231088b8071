"""Hypersphere Embedding (Pang et al., NeurIPS 2020): HE and m-HE on top of an AT framework.

HE normalises the penultimate features, z̃ = z/‖z‖, and each class weight vector (each row of
the head's weight), W̃_l = W_l/‖W_l‖, and drops the bias (Eq. 4–5), so the logits are s·cosθ.
The angular margin (AM) enters only the training objective (Eq. 6):
``L^m_CE = CE(s·(cosθ − m·1_y), y)``. m-HE (Sec. 3.5) replaces cosθ by −θ = −arccos(cosθ), so
its logits are −s·θ and its training loss is CE(−s·(θ + m·1_y), y) (the paper states only
"S(−θ) in place of S(cosθ)"; the margin on the angle is the reading of Eq. 6 in θ, and it gives
no separate s, m for m-HE, so the same knobs apply).

Where the margin goes, per framework (Table 1); every adversarial objective L_A uses the
normalised head *without* margin, i.e. the base's own attack on the logits s·cosθ:

* PGD-AT+HE, FastAT+HE, FreeAT+HE: L^m_CE(f̃(x*), y).
* ALP+HE: ½·L^m_CE(f̃(x), y) + ½·L^m_CE(f̃(x*), y) + λ·‖W̃ᵀ(z̃ − z̃*)‖₂. The pairing term is on
  the un-scaled cosines; the margin cancels in the difference, so only the scale is undone.
* TRADES+HE: L^m_CE(f̃(x), y) + β·KL(f̃(x) ‖ f̃(x*)): margin on the clean CE only; the KL
  (and its attack) use the un-margined s·cosθ logits, as in the authors' code (``s * model(x)``).

HE composes with its base through the base's ``label_logits``: every framework computes its
cross-entropy terms on the labels with ``Defense.cross_entropy``, which HE points at the margin
logits, while the KL, the pairing, the accuracies and the attacks see s·cosθ. No framework is
special-cased: the table above is what that one rule gives. FreeAT reuses the training gradient
for its perturbation, so its perturbation ascends the margin loss, as in the authors' ImageNet
FreeAT+HE code. For a CE objective this changes no step: the margin moves p_y alone, so each
example's input gradient is only rescaled by a positive factor (sign and L2-normalised steps
are the same); for TRADES' KL attack it would not.

The evaluation logits are s·cosθ (−s·θ for m-HE); ``adaptive_attack_loss`` gives the training
loss (with s and m) as a PGD objective for the paper's adaptive attack (Sec. 4.1).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from trainables.defenses import defense_class, register_defense
from trainables.defenses.base import Defense, knob
from trainables.defenses.composed import ComposedDefense

BASES = ("pgd_at", "alp", "trades", "fast_at", "free_at")
_ACOS_EPS = 1e-6  # keeps arccos' gradient finite at cosθ = ±1

# Sec. 4 (CIFAR-10): WRN-34-10, ε = 8/255, step 2/255, K = 10, 100 epochs, batch 128, lr 0.1
# ÷10 at epochs 75 and 90, s = 15, m = 0.2, TRADES 1/λ = 6, ALP pairing weight 0.5. The weight
# decay is not stated there: 2e-4 is the authors' training-script default, and the AutoAttack
# models of Table 6 use 5e-4. The authors' README runs ALP+HE with s = 20, m = 0.3; the paper's
# s = 15, m = 0.2 is kept. ImageNet FreeAT+HE uses s = 10, m = 0.2 (no ImageNet here); no MNIST
# settings are given.
_CIFAR10 = {"dataset": "cifar10", "model": "wrn-34-10", "epsilon": 8 / 255,
            "attack_step_size": 2 / 255, "attack_steps": 10, "epochs": 100, "lr": 0.1,
            "lr_milestones": [75, 90], "batch_size": 128}
# Table 3: FastAT+HE 30 epochs, FreeAT+HE 10 epochs, schedules not restated: the frameworks'
# own CIFAR-10 settings apply (Wong et al.'s fast AT: cyclic lr peaking at 0.2, wd 5e-4;
# Shafahi et al.'s free AT: m = 8, wd 2e-4), as in trainables/defenses/fast_free.py. The model
# is not named; the reported minutes match Wong et al.'s PreAct ResNet-18 runs.
_FAST_CIFAR10 = {"dataset": "cifar10", "model": "preact_resnet18", "epsilon": 8 / 255,
                 "epochs": 30, "batch_size": 128, "lr": 0.2, "schedule": "cyclic",
                 "weight_decay": 5e-4}
_FREE_CIFAR10 = {"dataset": "cifar10", "model": "preact_resnet18", "epsilon": 8 / 255,
                 "epochs": 10, "batch_size": 128, "weight_decay": 2e-4}


class CosineHead(nn.Linear):
    """Bias-free head returning s·cosθ between z/‖z‖ and each row W_l/‖W_l‖ (−s·θ if angular).

    A subclass of ``nn.Linear`` (``bias`` is None, ``weight`` is the raw W) so the models'
    contract "``head`` is the final linear layer" still holds and the state dict holds just
    ``weight``. The weights are normalised inside ``forward`` (Eq. 4 as a function of W); the
    authors' code instead renormalised ``weight.data`` in place on every forward.
    """

    def __init__(self, in_features: int, out_features: int, *, scale: float,
                 angular: bool = False) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.scale = float(scale)
        self.angular = bool(angular)

    def cosine(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cos = self.cosine(features)
        if not self.angular:
            return self.scale * cos
        cos = cos.float() if cos.dtype in (torch.float16, torch.bfloat16) else cos
        return -self.scale * torch.acos(cos.clamp(-1.0 + _ACOS_EPS, 1.0 - _ACOS_EPS))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"scale={self.scale}, angular={self.angular}")


def margin_logits(logits: torch.Tensor, y: torch.Tensor, shift: float) -> torch.Tensor:
    """s·(cosθ − m·1_y) from s·cosθ (or −s·(θ + m·1_y) from −s·θ): ``shift`` = s·m."""
    return logits - shift * F.one_hot(y, logits.shape[1]).to(logits.dtype)


def margin_cross_entropy(shift: float):
    """Per-example L^m_CE as a PGD loss callable (logits, y) -> loss."""
    return lambda logits, y: F.cross_entropy(margin_logits(logits, y, shift), y,
                                             reduction="none")


@register_defense("he")
@dataclass(frozen=True)
class HypersphereEmbedding(ComposedDefense):
    """HE (FN + WN + AM) on top of the AT framework ``he_base``."""

    @dataclass(frozen=True)
    class Params:
        he_base: str = knob("pgd_at", choices=BASES, doc="AT framework HE is embedded in")
        scale: float = knob(15.0, low=0.1, high=100.0, doc="s: logits are s·cosθ")
        margin: float = knob(0.2, low=0.0, high=1.0, doc="m: angular margin in training")
        # knobs of the base, forwarded to it; None: the base's default
        beta: float | None = knob(None, doc="TRADES β (he_base=trades); None: its default")
        lambda_alp: float | None = knob(None, doc="ALP pairing weight λ on ‖cosθ − cosθ*‖ "
                                                  "(he_base=alp); None: its default")
        alpha_ratio: float | None = knob(None, doc="FastAT step / ε (he_base=fast_at); "
                                                   "None: its default")
        replays: int | None = knob(None, doc="FreeAT replays m (he_base=free_at); "
                                             "None: its default")

    base_knob = "he_base"
    own_knobs = frozenset({"scale", "margin"})
    angular: ClassVar[bool] = False
    presets = {
        "pgd_at_he_cifar10": {**_CIFAR10, "weight_decay": 2e-4, "defense_params": {
            "he_base": "pgd_at", "scale": 15.0, "margin": 0.2}},
        "pgd_at_he_autoattack": {**_CIFAR10, "weight_decay": 5e-4, "defense_params": {
            "he_base": "pgd_at", "scale": 15.0, "margin": 0.2}},
        "trades_he_cifar10": {**_CIFAR10, "weight_decay": 2e-4, "defense_params": {
            "he_base": "trades", "scale": 15.0, "margin": 0.2, "beta": 6.0}},
        "alp_he_cifar10": {**_CIFAR10, "weight_decay": 2e-4, "defense_params": {
            "he_base": "alp", "scale": 15.0, "margin": 0.2, "lambda_alp": 0.5}},
        "fast_at_he_cifar10": {**_FAST_CIFAR10, "defense_params": {
            "he_base": "fast_at", "scale": 15.0, "margin": 0.2, "alpha_ratio": 1.25}},
        "free_at_he_cifar10": {**_FREE_CIFAR10, "defense_params": {
            "he_base": "free_at", "scale": 15.0, "margin": 0.2, "replays": 8}},
    }

    def base_params(self) -> dict[str, Any]:
        knobs = super().base_params()
        if self.params.he_base == "alp":
            # Table 1 pairs ‖W̃ᵀ(z̃ − z̃*)‖₂ = ‖cosθ − cosθ*‖₂; the base pairs the logits s·cosθ
            # with a norm (homogeneous of degree 1), so its weight is λ/s.
            weight = knobs.get("lambda_alp", defense_class("alp").knobs()["lambda_alp"]["default"])
            knobs["lambda_alp"] = weight / self.params.scale
        return knobs

    # -- architecture ----------------------------------------------------------------------
    def model_hook(self, model: nn.Module) -> nn.Module:
        """The base's hook, then the final layer swapped for the normalised cosine head."""
        model = super().model_hook(model)
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Linear) or not callable(getattr(model, "features", None)):
            raise TypeError(f"{self.name} needs a model with features(x) and an nn.Linear "
                            f"head, got {type(model).__name__}")
        cosine = CosineHead(head.in_features, head.out_features, scale=self.params.scale,
                            angular=self.angular)
        cosine = cosine.to(device=head.weight.device, dtype=head.weight.dtype)
        with torch.no_grad():
            cosine.weight.copy_(head.weight)
        model.head = cosine
        return model

    # -- outer minimisation ----------------------------------------------------------------
    @property
    def shift(self) -> float:
        return self.params.scale * self.params.margin

    def adaptive_attack_loss(self):
        """The training loss L^m_CE (with s and m) as a per-example PGD objective."""
        return margin_cross_entropy(self.shift)

    def build_base(self) -> Defense:
        """The framework, its label cross-entropy terms on the margin logits (Eq. 6)."""
        base = super().build_base()
        return dataclasses.replace(base, label_logits=functools.partial(margin_logits,
                                                                        shift=self.shift))

    # -- search ------------------------------------------------------------------------------
    @classmethod
    def search_space(cls, trial) -> dict[str, Any]:
        """s, m, the framework and (conditionally) its knobs with the base's own ranges."""
        base = cls.suggest_base(trial)
        base_space = defense_class(base).search_space(trial)
        params = {"he_base": base, "scale": trial.suggest_float("scale", 5.0, 30.0),
                  "margin": trial.suggest_float("margin", 0.0, 0.5),
                  **base_space.get("defense_params", {})}
        weight_decay = base_space.get("weight_decay")
        if weight_decay is None:
            weight_decay = trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True)
        return {"weight_decay": weight_decay, "defense_params": params}


@register_defense("m_he")
class ModifiedHypersphereEmbedding(HypersphereEmbedding):
    """m-HE: S(−θ) in place of S(cosθ) (Sec. 3.5); logits −s·θ, training CE(−s(θ + m·1_y))."""

    angular = True
    # Table 3: FastAT+m-HE and FreeAT+m-HE; Sec. 4.1 also reports m-HE helping PGD-AT. s and m
    # as for HE (the paper states no others for m-HE).
    presets = {
        "pgd_at_m_he_cifar10": {**_CIFAR10, "weight_decay": 2e-4, "defense_params": {
            "he_base": "pgd_at", "scale": 15.0, "margin": 0.2}},
        "fast_at_m_he_cifar10": {**_FAST_CIFAR10, "defense_params": {
            "he_base": "fast_at", "scale": 15.0, "margin": 0.2, "alpha_ratio": 1.25}},
        "free_at_m_he_cifar10": {**_FREE_CIFAR10, "defense_params": {
            "he_base": "free_at", "scale": 15.0, "margin": 0.2, "replays": 8}},
    }
