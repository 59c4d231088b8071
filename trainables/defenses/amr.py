"""Average Margin Regularizer — AMR (Wu & Yu, "Understanding adversarial robustness: the
trade-off between minimum and average margin"), Eq. 8 / 15.

    L = CE(f(x), y) − λ·(1/B)·Σ_i 1[ŷ_i = y_i]·[min_{k≠y_i} (ŵ_{y_i} − ŵ_k)ᵀ Φ(x_i)]_0^τ
        + β·Σ_l ‖W_l W_lᵀ − I‖²_F

Φ is the penultimate representation (``model.features``), ŵ_k the k-th row of the final layer
divided by its L2 norm (Eq. 14: the classifier is linear in feature space, so this is the
feature-space distance to the decision boundary), [t]_0^τ = min(max(t, 0), τ). The margin is
only rewarded where the model predicts the label (ŷ from the full logits, bias included) and is
capped at τ so outliers cannot dominate (Sec. 4). The orthogonality penalty keeps each layer
close to 1-Lipschitz, so that the feature-space margin lower-bounds the input-space one
(Eq. 13).

Choices the paper leaves open, read from its text:

* Clean inputs only. AMR is a training regulariser "roughly the same [cost] as standard
  training" (Sec. 5.3); PGD adversarial training appears only as a separate baseline (Table 2),
  never combined with AMR, so ``perturb`` returns ``x`` and there is no AT base knob.
* Batch means. Eq. 15 writes sums over the n examples without the indicator; Eq. 8
  has the 1/n mean and the indicator 1[ŷ = y], which Eq. 15's text also states ("we only
  maximize the margin when the classifier makes a correct prediction"). The minibatch loss is
  mean CE − λ·mean truncated margin + β·penalty, the penalty added once per batch (the usual
  minibatch reading; β = 1e-3 is the paper's value on that scale).
* Which layers. Eq. 15 sums over 1 ≤ l ≤ L with f = W_L σ(W_{L−1} …), so the final layer (the
  head) is included; every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` weight is penalised, conv
  filters flattened to rows (``weight.view(out_channels, -1)``, Sec. 4.2). Biases and
  BatchNorm scales are not weight matrices W_l and are left out.
* The indicator and the normalisation: the mask carries no gradient; gradients flow through
  ŵ = w/‖w‖ and Φ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainables.defenses import register_defense
from trainables.defenses.base import Defense, StepOutput, accuracy, knob

_PENALISED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def truncate(t: torch.Tensor, tau: float) -> torch.Tensor:
    """[t]_0^τ = min(max(t, 0), τ)."""
    return t.clamp(min=0.0, max=tau)


def feature_margins(features: torch.Tensor, head_weight: torch.Tensor,
                    y: torch.Tensor) -> torch.Tensor:
    """Per-example min_{k≠y} (ŵ_y − ŵ_k)ᵀ Φ(x) with ŵ the L2-normalised rows of the head."""
    rows = head_weight / head_weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
    scores = features @ rows.t()
    true = scores.gather(1, y[:, None]).squeeze(1)
    others = scores.masked_fill(F.one_hot(y, scores.shape[1]).bool(), float("-inf"))
    return true - others.max(dim=1).values


def average_margin_term(features: torch.Tensor, logits: torch.Tensor, head_weight: torch.Tensor,
                        y: torch.Tensor, tau: float) -> torch.Tensor:
    """(1/B)·Σ_i 1[ŷ_i = y_i]·[margin_i]_0^τ: misclassified examples count as 0 in the mean."""
    correct = (logits.detach().argmax(dim=1) == y).to(features.dtype)
    return (correct * truncate(feature_margins(features, head_weight, y), tau)).mean()


def orthogonality_penalty_of(weight: torch.Tensor) -> torch.Tensor:
    """‖W Wᵀ − I‖²_F for W = weight.view(rows, −1), in at least float32.

    For a tall W (more rows than columns) the equal form ‖WᵀW‖²_F − 2‖W‖²_F + rows uses the
    smaller Gram matrix.
    """
    w = weight.reshape(weight.shape[0], -1)
    if w.dtype in (torch.float16, torch.bfloat16):
        w = w.float()
    rows, cols = w.shape
    with torch.autocast(device_type=w.device.type, enabled=False):
        if rows <= cols:
            gram = w @ w.t()
            return (gram - torch.eye(rows, dtype=w.dtype, device=w.device)).pow(2).sum()
        gram = w.t() @ w
        return gram.pow(2).sum() - 2 * w.pow(2).sum() + rows


def penalised_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weight matrices W_l of every linear and convolutional layer, the head included."""
    return [m.weight for m in model.modules()
            if isinstance(m, _PENALISED) and m.weight is not None]


def orthogonality_penalty(model: nn.Module) -> torch.Tensor:
    """Σ_l ‖W_l W_lᵀ − I‖²_F over :func:`penalised_weights`."""
    weights = penalised_weights(model)
    if not weights:
        raise ValueError("AMR's orthogonality penalty found no nn.Linear / nn.Conv layer")
    return torch.stack([orthogonality_penalty_of(w) for w in weights]).sum()


def _appendix_f(dataset: str, model: str, *, tau: float) -> dict:
    """The paper's Appendix F setting for one dataset and model (see the class comment)."""
    epsilon = {"mnist": 1.0, "cifar10": 0.2}[dataset]  # the middle of the evaluated ε range
    return {
        "dataset": dataset, "model": model,
        "model_params": {"hidden": 1024, "layers": 1} if model == "mlp" else {},
        "epochs": 200, "batch_size": 128, "lr": 0.01, "momentum": 0.9, "nesterov": True,
        "schedule": "constant", "weight_decay": 0.0, "augmentation": "none",
        "norm": "l2", "epsilon": epsilon,
        "eval_steps": 100, "eval_step_size": epsilon / 40,
        "defense_params": {"lambda_margin": 0.1, "tau": tau, "beta_orth": 1e-3},
    }


@register_defense("amr")
class AverageMarginRegularizer(Defense):
    """Cross-entropy on clean inputs, minus λ times the truncated feature-space average margin,
    plus β times the orthogonality penalty (Eq. 8 / 15)."""

    clean_training = True

    @dataclass(frozen=True)
    class Params:
        lambda_margin: float = knob(0.1, low=0.0, high=100.0,
                                    doc="λ: weight of the truncated average feature margin")
        tau: float = knob(5.0, low=0.0, high=1000.0,
                          doc="τ: cap on each example's feature margin (larger for deeper nets)")
        beta_orth: float = knob(1e-3, low=0.0, high=10.0,
                                doc="β: weight of Σ_l ‖W_l W_lᵀ − I‖²_F")

    # Appendix F: SGD lr 0.01, momentum 0.9, Nesterov, batch 128, 200 epochs for the nonlinear
    # models, λ = 0.1 and β = 1e-3 everywhere, τ by model; no weight decay and no learning-rate
    # schedule are stated. MNIST-MLP = one hidden layer of 1024 ReLU units; MNIST-CNN is the
    # Carlini–Wagner MNIST network (= small_cnn). The CIFAR CNN is C&W's CIFAR network
    # (64/128 filters, 256 units), which no registered model reproduces: small_cnn is the
    # nearest. The paper trains these models without data augmentation (Appendix F), on MNIST
    # and CIFAR alike. Evaluation is L2 (ε up to 2.0 MNIST / 0.4 CIFAR); validation uses the middle
    # ε with a 100-step L2 PGD.
    presets = {
        "amr_mnist_mlp": _appendix_f("mnist", "mlp", tau=5.0),
        "amr_mnist_cnn": _appendix_f("mnist", "small_cnn", tau=10.0),
        "amr_cifar10_mlp": _appendix_f("cifar10", "mlp", tau=10.0),
        "amr_cifar10_cnn": _appendix_f("cifar10", "small_cnn", tau=10.0),
    }

    def perturb(self, model, x, y, state=None, *, ids=None):
        return x

    def step(self, model, x, y, x_adv, state=None, *, ids=None) -> StepOutput:
        if not (hasattr(model, "features") and isinstance(getattr(model, "head", None),
                                                          nn.Linear)):
            raise TypeError("AMR needs a model with features(x) and an nn.Linear head")
        p = self.params
        features = model.features(x)
        logits = model.head(features)
        natural = F.cross_entropy(logits, y)
        margin = average_margin_term(features, logits, model.head.weight, y, p.tau)
        penalty = orthogonality_penalty(model)
        loss = natural - p.lambda_margin * margin + p.beta_orth * penalty
        metrics = {"loss": loss.item(), "natural_loss": natural.item(),
                   "average_feature_margin": margin.item(),
                   "orthogonality_penalty": penalty.item(),
                   "train_accuracy": accuracy(logits, y)}
        return StepOutput(loss, metrics, state)

    @classmethod
    def search_space(cls, trial):
        return {"weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
                "defense_params": {
                    "lambda_margin": trial.suggest_float("lambda_margin", 1e-3, 1.0, log=True),
                    "tau": trial.suggest_float("tau", 1.0, 100.0, log=True),
                    "beta_orth": trial.suggest_float("beta_orth", 1e-5, 1e-1, log=True)}}
