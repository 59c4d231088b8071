"""Input gradient regularisation (Ross & Doshi-Velez, AAAI 2018) on top of a base defense.

Loss = base loss + λ_IGR · mean_i ‖∇ₓ CE(f(x̂ᵢ), yᵢ)‖²₂, by double backpropagation
(``create_graph=True``) so the parameters receive the penalty's gradient. x̂ is the point the
base trains its cross-entropy on: the clean input for ``standard`` and ``trades`` (TRADES' CE
term), the adversarial input for ``pgd_at``. The EMR paper compares against AT+IGR and
TRADES+IGR with λ_IGR = 1 (its Tables 6-7).

The base is any registered defense built through ``create_defense``: its attack, loss, state
and model hook are used unchanged. The remaining knobs (``beta`` for TRADES) are the base's own,
forwarded to it and validated there; None keeps the base's default, and a knob the base does not
have is an error. The penalty's forward pass runs in eval mode, as EMR computes
its own input-gradient regulariser: every example's gradient is then its own (train-mode
BatchNorm would couple the examples of a batch) and BatchNorm statistics are not updated twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attacks.pgd import model_mode
from trainables.defenses import register_defense
from trainables.defenses.base import knob, with_weight_decay
from trainables.defenses.composed import ComposedDefense

# where each supported base evaluates the cross-entropy whose input gradient is penalised
PENALTY_POINT = {"standard": "clean", "pgd_at": "adversarial", "trades": "clean"}


def input_gradient_penalty(model, point: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean_i ‖∇ₓ CE(f(xᵢ), yᵢ)‖², differentiable in the parameters."""
    point = point.detach().requires_grad_(True)
    with model_mode(model, "eval"), torch.enable_grad():
        per_example = F.cross_entropy(model(point), y, reduction="none")
        # examples are independent in eval mode, so the gradient of the sum is per-example
        (grad,) = torch.autograd.grad(per_example.sum(), point, create_graph=True)
    return grad.flatten(1).pow(2).sum(dim=1).mean()


@register_defense("igr")
@dataclass(frozen=True)
class InputGradientRegularization(ComposedDefense):
    @dataclass(frozen=True)
    class Params:
        lambda_igr: float = knob(1.0, low=0.0, high=1e4, doc="weight of ‖∇ₓ CE‖²")
        igr_base: str = knob("pgd_at", choices=tuple(PENALTY_POINT),
                             doc="the defense whose loss is regularised")
        beta: float | None = knob(None, doc="TRADES β (igr_base='trades'); None: its default")

    base_knob = "igr_base"
    own_knobs = frozenset({"lambda_igr"})  # every other knob is a base knob, None: its default

    presets = {  # EMR appendix, Tables 6-7 (ResNet-18 and WRN-34-10 alike)
        "emr_at_igr": {"weight_decay": 1e-3,
                       "defense_params": {"igr_base": "pgd_at", "lambda_igr": 1.0}},
        "emr_trades_igr": {"weight_decay": 5e-4,
                           "defense_params": {"igr_base": "trades", "beta": 12.0,
                                              "lambda_igr": 1.0}},
    }

    # the base does everything except the penalty
    def add_to_loss(self, model, x, y, x_adv, base_loss):
        point = x if PENALTY_POINT[self.params.igr_base] == "clean" else x_adv
        penalty = input_gradient_penalty(model, point, y)
        return base_loss + self.params.lambda_igr * penalty, {
            "input_gradient_penalty": penalty.item()}

    @classmethod
    def search_space(cls, trial):
        base = cls.suggest_base(trial, ["pgd_at", "trades", "standard"])
        params = {"igr_base": base,
                  "lambda_igr": trial.suggest_float("lambda_igr", 0.01, 10.0, log=True)}
        if "beta" in cls.knobs_of_base(base):
            params["beta"] = trial.suggest_float("beta", 1.0, 12.0)
        return with_weight_decay(trial, params)
