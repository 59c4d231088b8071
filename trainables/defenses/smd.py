"""Self-adaptive Margin Defense (SMD): per-example margins grown by exploration, no user knobs.

Every training example i (by its stable id in the official training set) owns a margin 𝓔(i),
kept across epochs in an :class:`SMDState`. One iteration (Algorithms 1–4 of the paper):

* Flag1 = clean prediction correct. Exploration-PGD (EPGD, Alg. 2) attacks only those examples:
  K = 20 steps of size α_i = 4·𝓔(i)/K inside example i's own ball of radius 𝓔(i) (∩ [0, 1]),
  from the clean point (no random start); a Counter marks any iterate that is misclassified;
  then 10 bisection steps on the segment [x, x_K] keep the point nearest x_K that is still
  classified correctly. Flag2 = (Counter == 0).
* Loss L = (L₀ + L₁)/2: L₀ = mean CE on all clean examples, L₁ = mean CE on the EPGD outputs of
  the Flag1 examples only (Alg. 1 lines 7–9: Loss(Z̃, Y[Flag1])); L₁ = 0 when none was attacked.
* Margins: where Flag1 & Flag2, 𝓔 += Δε·γ₁·γ₂ with γ₁ = ρ^floor(𝓔/h(x/255)), ρ = 0.9 (Eq. 13,
  App. D) and γ₂ = 1/(1 + h(|∇ₓ̃ Loss(f(x̃), y)|)) (Eq. 14); elsewhere 𝓔 := ‖x − x̃‖ (line 12).
* Δε = ceil((h(x)/N)/h(x/255))·h(x/255) (Eq. 12), N the number of epochs.

h is the threat model's Lp norm and x in Eq. 12 the extent of the input box [0, 1]^d (the
all-ones image): h(x) = 1 for L∞, as in the paper's example (Δε = 2/255 at N = 150), and √d for
L2. Margins are stored in units of h(x/255) ("grey levels"), so Δε = ceil(255/N) levels and the
floor in γ₁ is exact; exports convert them to input-space distances.

Where the paper is ambiguous or its pseudo-code cannot be right, the code follows the text:

* Bisection: Alg. 2 line 13 as printed (X̃ ← (X̃ + X_out)/2 after X_out ← X̃) stalls on the
  first correctly classified midpoint; the stated resolution of 2^10 (App. A) needs the far end
  kept, so this is a true bisection. A last iterate that is still correct is returned as is.
* ~Flag1 examples get no x̃ (Alg. 1 line 12 indexes X̃ only for Flag1); they keep x̃ = x, so
  their margin restarts at ‖x − x‖ = 0 and grows again once they are classified correctly.
* Flag1 comes from the eval-mode clean prediction made before the attack, since the engine
  attacks before the training forward (the paper takes it from that forward, Z = f(X)); the
  two agree for models without BatchNorm or dropout.
* γ₂ uses the per-example CE gradient at x̃ (the loss that generated x̃, Eq. 14), in eval mode.

The threat model's ε, steps, step size and random start are not used: SMD has no training
budget (its point), and K = 20, α = 4𝓔/K and the clean start are fixed by Algorithm 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from attacks.margins import margin_histogram
from attacks.pgd import model_mode
from trainables.defenses import register_defense
from trainables.defenses.base import Defense, StepOutput, accuracy, knob

EXPLORATION_STEPS = 20  # K of Algorithm 2
SEARCH_STEPS = 10  # bisection steps of Algorithm 2 (resolution 1/1024)
RHO = 0.9  # decay base of γ₁ (Appendix D)
GREY_LEVELS = 255  # h(x)/h(x/255)


def expansion_levels(epochs: int) -> int:
    """Δε of Eq. 12 in units of h(x/255): ceil((h(x)/N)/h(x/255)) = ceil(255/N), exactly."""
    if epochs < 1:
        raise ValueError(f"SMD needs epochs >= 1, got {epochs}")
    return -(-GREY_LEVELS // epochs)


def grey_level(x: torch.Tensor, norm: str) -> float:
    """h(x/255) for x the all-ones input of x's example shape (the extent of [0, 1]^d)."""
    return (1.0 if norm == "linf" else math.sqrt(x[0].numel())) / GREY_LEVELS


def per_example_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def _column(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def _project(x_adv: torch.Tensor, x: torch.Tensor, radius: torch.Tensor, norm: str):
    delta = x_adv - x
    if norm == "linf":
        delta = torch.maximum(torch.minimum(delta, radius), -radius)
    else:
        length = _column(per_example_norm(delta, norm), x).clamp_min(1e-12)
        delta = delta * (radius / length).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


class Exploration(NamedTuple):
    x_out: torch.Tensor  # the bisection result: correctly classified, nearest the boundary
    kept: torch.Tensor  # Flag2: no PGD iterate was misclassified
    x_last: torch.Tensor  # x_K, the far end of the bisection segment


def exploration_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, radius: torch.Tensor,
                    *, norm: str = "linf", steps: int = EXPLORATION_STEPS,
                    search_steps: int = SEARCH_STEPS) -> Exploration:
    """EPGD (Algorithm 2) with one radius per example, batched, in eval mode.

    ``attacks.pgd.pgd`` takes one scalar ε and returns only the last iterate; EPGD needs a
    radius and a step 4·𝓔(i)/K per example, the Counter over all iterates, and the bisection,
    so it is written here. ``x`` must be classified correctly (Flag1).
    """
    x, y = x.detach(), y.detach()
    r = _column(radius.detach(), x)
    alpha = 4.0 * r / steps
    counter = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    x_adv = x.clone()
    with model_mode(model, "eval"), torch.enable_grad():
        for k in range(steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            if k > 0:
                counter |= logits.argmax(1) != y
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x_adv)
            with torch.no_grad():
                if norm == "linf":
                    direction = grad.sign()
                else:
                    direction = grad / _column(per_example_norm(grad, norm), x).clamp_min(1e-12)
                x_adv = _project(x_adv + alpha * direction, x, r, norm)
        with torch.no_grad():
            last_wrong = model(x_adv).argmax(1) != y
            counter |= last_wrong
            low = torch.where(_column(last_wrong, x).bool(), x, x_adv)  # correct end
            high = x_adv
            for _ in range(search_steps):
                middle = (low + high) / 2
                correct = _column(model(middle).argmax(1) == y, x).bool()
                low = torch.where(correct, middle, low)
                high = torch.where(correct, high, middle)
    return Exploration(low.detach(), ~counter, x_adv.detach())


def attack_gradient_norm(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor,
                         norm: str) -> torch.Tensor:
    """h(|∂ CE(f(x̃_i), y_i)/∂x̃_i|) per example (Eq. 14), in eval mode."""
    with model_mode(model, "eval"), torch.enable_grad():
        x_adv = x_adv.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")  # row i: example i's gradient
        (grad,) = torch.autograd.grad(loss, x_adv)
    return per_example_norm(grad, norm).detach()


def next_levels(levels: torch.Tensor, expand: torch.Tensor, grad_norm: torch.Tensor,
                distance: torch.Tensor, expansion: int) -> torch.Tensor:
    """Alg. 1 lines 11–12 in grey levels: 𝓔 + Δε·γ₁·γ₂ where ``expand``, else ``distance``."""
    gamma1 = RHO ** torch.floor(levels)
    gamma2 = 1.0 / (1.0 + grad_norm)
    return torch.where(expand, levels + expansion * gamma1 * gamma2, distance)


class ExplorationRecord(NamedTuple):
    """What the exploration learnt about one batch and the margin update needs."""

    ids: torch.Tensor
    attacked: torch.Tensor  # Flag1
    kept: torch.Tensor  # Flag2 (False where not attacked)
    grad_norm: torch.Tensor  # h(|∇ₓ̃ Loss|), 0 where not attacked


class Explored(NamedTuple):
    """SMD's training point: x̃ and the batch's :class:`ExplorationRecord`, as ``perturb``
    returns them and ``step`` consumes them."""

    x_adv: torch.Tensor
    record: ExplorationRecord


class MarginExport(NamedTuple):
    ids: torch.Tensor  # the ids SMD has seen (trained on)
    margins: torch.Tensor  # their margins 𝓔(i), input-space distances
    counts: torch.Tensor
    edges: torch.Tensor


class SMDState:
    """Per-example margins 𝓔(i) in grey levels, indexed by example id, plus which ids were seen.

    ``unit`` is h(x/255) (1/255 for L∞; set by the first step for L2) so margins can be
    exported as distances. Neither ``perturb`` nor ``step`` changes a state: ``step``
    returns the next one.
    """

    def __init__(self, levels: torch.Tensor, visited: torch.Tensor, epochs: int,
                 unit: float | None) -> None:
        self.levels = levels.detach().float()
        self.visited = visited.detach().bool()
        self.epochs = int(epochs)
        self.unit = unit

    @classmethod
    def initial(cls, num_examples: int, epochs: int, unit: float | None) -> SMDState:
        levels = torch.full((num_examples,), float(expansion_levels(epochs)))
        return cls(levels, torch.zeros(num_examples, dtype=torch.bool), epochs, unit)

    @property
    def expansion(self) -> int:
        return expansion_levels(self.epochs)

    def margins(self) -> torch.Tensor:
        """𝓔 for every id as input-space distances (float64, CPU)."""
        if self.unit is None:
            raise ValueError("the L2 grey level is known after the first SMD step")
        return self.levels.detach().cpu().double() * self.unit

    def state_dict(self) -> dict[str, Any]:
        return {"margin_levels": self.levels.detach().cpu().clone(),
                "visited": self.visited.detach().cpu().clone(),
                "epochs": self.epochs, "unit": self.unit}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {"margin_levels", "visited", "epochs", "unit"}
        if set(state) != expected:
            raise ValueError(f"SMD state needs keys {sorted(expected)}, got {sorted(state)}")
        if state["margin_levels"].shape != self.levels.shape:
            raise ValueError(f"SMD state holds {state['margin_levels'].numel()} margins, this "
                             f"run has {self.levels.numel()} example ids")
        self.levels = state["margin_levels"].detach().float().clone()
        self.visited = state["visited"].detach().bool().clone()
        self.epochs, self.unit = int(state["epochs"]), state["unit"]


def export_margins(state: SMDState, bins: int = 50) -> MarginExport:
    """The final margins of the examples SMD trained on and their histogram (App. C.2)."""
    ids = state.visited.nonzero().flatten().cpu()
    margins = state.margins()[ids]
    counts, edges = margin_histogram(margins, bins)
    return MarginExport(ids, margins, counts, edges)


# SGD as in MMA (Ding et al. 2019, their config.py: batch 128, momentum 0.9, wd 2e-4,
# lr 0.3 → 0.09 → 0.03 → 0.009 at 20k/30k/40k of 50k steps), over SMD's 150 epochs (App. B.2)
# with the drops at the same fractions of training; one constant lr_gamma = 0.3 gives
# 0.027 and 0.0081 for the last two rates. CIFAR-10 keeps 500 images per class for
# validation; SVHN 7,326; Fashion-MNIST is 54,000 training images (App. B.4 says 500 for
# validation, which does not add up to 60,000; 6,000 does). The paper's SVHN and
_PAPER_SCHEDULE = {"epochs": 150, "batch_size": 128, "lr": 0.3, "momentum": 0.9,
                   "weight_decay": 2e-4, "schedule": "piecewise", "lr_milestones": [60, 90, 120],
                   "lr_gamma": 0.3, "defense_params": {}}


@register_defense("smd")
class SelfAdaptiveMarginDefense(Defense):
    """SMD: no tuned knobs; the margins live in :class:`SMDState` (see the module docstring).

    ``plan_epochs`` is not a hyperparameter of the method but the N of Eq. 12 (the margin
    expansion step Δε = ceil((1/N)/(1/255))/255): by default the run's own epochs, as the paper
    defines it. A shortened run may keep the full schedule's step (e.g. ``plan_epochs=150``:
    2/255) instead of taking a coarser one (10 epochs: 26/255, past an 8/255 test radius on the
    first expansion).
    """

    @dataclass(frozen=True)
    class Params:
        plan_epochs: int | None = knob(None, low=1, high=10_000,
                                       doc="N of Eq. 12 (None: the run's epochs)")

    uses_training_epsilon = False  # each example's radius is its own margin

    presets = {
        "cifar10_paper": {"dataset": "cifar10", "model": "wrn-28-4", "val_size": 5000,
                          "epsilon": 8 / 255, **_PAPER_SCHEDULE},
        # the paper's own networks (App. B.3 / B.4)
        "svhn_paper": {"dataset": "svhn", "model": "smd_svhn_cnn", "val_size": 7326,
                       "epsilon": 8 / 255, **_PAPER_SCHEDULE},
        "fashion_mnist_paper": {"dataset": "fashion_mnist", "model": "smd_fashion_cnn",
                                "val_size": 6000,
                                "epsilon": 8 / 255, **_PAPER_SCHEDULE},
    }

    def init_state(self, *, num_examples, batch_size, num_classes, epochs) -> SMDState:
        unit = 1.0 / GREY_LEVELS if self.attack.norm == "linf" else None
        return SMDState.initial(num_examples, self.params.plan_epochs or epochs, unit)

    @staticmethod
    def _require(state, ids) -> None:
        if not isinstance(state, SMDState) or ids is None:
            raise ValueError("SMD needs its SMDState (init_state) and the example ids")

    def perturb(self, model, x, y, state=None, *, ids=None) -> Explored:
        """EPGD on the clean-correct examples with their own margins (the rest stay clean),
        and what the exploration learnt about each example."""
        self._require(state, ids)
        norm = self.attack.norm
        x, y = x.detach(), y.detach()
        with model_mode(model, "eval"), torch.no_grad():
            attacked = model(x).argmax(1) == y
        levels = state.levels.to(ids.device)[ids]
        x_adv, kept = x.clone(), torch.zeros_like(attacked)
        grad_norm = torch.zeros(len(x), dtype=torch.float32, device=x.device)
        if attacked.any():
            radius = levels[attacked].to(x.dtype) * grey_level(x, norm)
            found = exploration_pgd(model, x[attacked], y[attacked], radius, norm=norm)
            x_adv[attacked] = found.x_out
            kept[attacked] = found.kept
            grad_norm[attacked] = attack_gradient_norm(model, found.x_out, y[attacked],
                                                       norm).float()
        return Explored(x_adv, ExplorationRecord(ids.detach().clone(), attacked, kept,
                                                 grad_norm))

    def adaptive_objective(self, model, x, y, state=None, *, ids=None):
        """L = (L₀ + L₁)/2 at the attacked input, on the batch's exploration record (which
        points SMD attacks: the clean-correct ones), explored once from the state's margins."""
        record = self.perturb(model, x, y, state, ids=ids).record
        return lambda x_adv: self.step(model, x, y, Explored(x_adv, record), state,
                                       ids=ids).loss

    def step(self, model, x, y, x_adv, state=None, *, ids=None) -> StepOutput:
        """L = (L₀ + L₁)/2 and the next state with the batch's margins expanded or reset;
        ``x_adv`` is the :class:`Explored` point ``perturb`` returned for this batch."""
        self._require(state, ids)
        if not isinstance(x_adv, Explored) or not torch.equal(
                x_adv.record.ids.to(ids.device), ids):
            raise ValueError("SMD.step needs the Explored point (x̃ and its exploration "
                             "record) perturb returned for this batch")
        x_adv, record = x_adv
        attacked = record.attacked.to(x.device)
        logits = model(x)
        natural = F.cross_entropy(logits, y)
        if attacked.any():
            logits_adv = model(x_adv[attacked])
            robust = F.cross_entropy(logits_adv, y[attacked])
        else:  # nothing attacked: L₁ = 0, so L₀ keeps its weight 1/2 in every batch
            robust = natural.new_zeros(())
        loss = (natural + robust) / 2

        unit = grey_level(x, self.attack.norm)
        with torch.no_grad():
            levels = state.levels.to(ids.device).clone()
            visited = state.visited.to(ids.device).clone()
            expand = (attacked & record.kept.to(x.device)).to(ids.device)
            distance = (per_example_norm(x_adv.detach() - x.detach(), self.attack.norm)
                        / unit).float().to(ids.device)
            levels[ids] = next_levels(levels[ids], expand, record.grad_norm.to(ids.device),
                                      distance, state.expansion)
            visited[ids] = True
        next_state = SMDState(levels, visited, state.epochs,
                              state.unit if state.unit is not None else unit)
        metrics = {"loss": loss.item(), "natural_loss": natural.item(),
                   "robust_loss": robust.item(), "train_accuracy": accuracy(logits, y),
                   "attacked_fraction": attacked.float().mean().item(),
                   "expanded_fraction": expand.float().mean().item(),
                   "mean_margin": levels[ids].double().mean().item() * unit}
        return StepOutput(loss, metrics, next_state)
