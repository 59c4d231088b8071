"""What every defense is: typed knobs, an inner maximisation and an outer step.

A defense is a frozen dataclass holding its validated knobs (``params``) and the threat model
of its training attack (``attack``). Its whole training contract is two pure methods:

* ``perturb(model, x, y, state, ids=ids)`` is the inner maximisation. It returns the training
  point ``step`` consumes (the adversarial input; SMD's point also carries what its search
  learnt about each example) and changes nothing: not the model's mode, not the state.
* ``step(model, x, y, point, state, ids=ids)`` is the outer minimisation. It returns a
  :class:`StepOutput`: the loss to differentiate, detached metrics, and the defense's next
  state (the same object for memoryless defenses). Every defense implements ``step``;
  ``loss`` is only the (loss, metrics) pair of ``step``, for tests and tools, and cannot be
  overridden.

Neither touches the optimizer, the device or global state. One training iteration, as the
engine runs it (``replays`` times per batch; free-AT replays)::

    defense = defense.at_epoch(epoch, lr_scale)             # epoch-dependent knobs, a new object
    point = defense.perturb(model, x, y, state, ids=ids)     # eval mode unless the paper says not
    loss, metrics, state = defense.step(model, x, y, point, state, ids=ids)   # train mode
    loss.backward(); optimizer.step()
    state = defense.after_backward(state, point)             # point.grad is set if it required grad

A defense added on top of another one (EMR, HE, IGR) subclasses ``ComposedDefense``: it names
the knob choosing its base, forwards the base's knobs, and delegates all it does not change.

A state object, when there is one, has ``state_dict()`` / ``load_state_dict()`` over tensors and
plain data only, so checkpoints stay loadable with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from attacks.pgd import RANDOM_STARTS, pgd


class DefenseConfigError(ValueError):
    """A knob is unknown, of the wrong type, or out of its allowed range."""


def knob(default: Any, *, low: float | None = None, high: float | None = None,
         choices: tuple | None = None, doc: str = "") -> Any:
    """A defense knob with its allowed range (inclusive) or choices, checked at config time."""
    return field(default=default,
                 metadata={"low": low, "high": high, "choices": choices, "doc": doc})


_TYPES = {"float": float, "int": int, "bool": bool, "str": str}
_OPTIONAL_WORDS = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}


def _knob_type(annotation: Any) -> tuple[Any, bool]:
    """A knob's Python type and whether it may be None (``float | None``: a composed defense's
    pass-through knob, None meaning the base's default)."""
    if isinstance(annotation, str):  # postponed annotations
        name = annotation.removesuffix(" | None")
        return _TYPES.get(name, name), name != annotation
    args = typing.get_args(annotation)
    if len(args) == 2 and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return annotation, False


def _check_value(owner: str, f: dataclasses.Field, value: Any) -> Any:
    meta = f.metadata
    python_type, optional = _knob_type(f.type)
    if optional and value is None:
        return value
    if python_type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(python_type, type) and not isinstance(value, python_type) or (
            python_type in (int, float) and isinstance(value, bool)):
        expected = (f"{_OPTIONAL_WORDS.get(python_type, python_type.__name__)} or None"
                    if optional else python_type.__name__)
        raise DefenseConfigError(f"{owner}.{f.name} must be {expected}, got {value!r}")
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise DefenseConfigError(f"{owner}.{f.name} must be one of {list(meta['choices'])}, "
                                 f"got {value!r}")
    low, high = meta.get("low"), meta.get("high")
    if (low is not None and value < low) or (high is not None and value > high):
        raise DefenseConfigError(f"{owner}.{f.name} must lie in [{low}, {high}], got {value!r}")
    return value


def build_params(owner: str, params_type: type, values: dict[str, Any]):
    """Validate ``values`` against ``params_type``'s knobs; unknown names list the allowed set."""
    fields = {f.name: f for f in dataclasses.fields(params_type)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        allowed = ", ".join(sorted(fields)) or "none"
        raise DefenseConfigError(f"unknown knob(s) {unknown} for defense {owner!r}; "
                                 f"allowed: {allowed}")
    checked = {name: _check_value(owner, fields[name], value) for name, value in values.items()}
    return params_type(**checked)


def describe_knobs(params_type: type) -> dict[str, dict[str, Any]]:
    """Each knob's default, range / choices and doc, for help texts and the leaderboard."""
    return {f.name: {"default": f.default, **dict(f.metadata)}
            for f in dataclasses.fields(params_type)}


@dataclass(frozen=True)
class AttackSettings:
    """The training attack's threat model; ``random_start=None`` takes the defense's default."""

    epsilon: float
    steps: int
    step_size: float
    norm: str = "linf"
    random_start: str | None = None

    def __post_init__(self) -> None:
        if self.random_start is not None and self.random_start not in RANDOM_STARTS:
            raise DefenseConfigError(f"random_start must be one of {RANDOM_STARTS}")


class StepOutput(NamedTuple):
    loss: torch.Tensor
    metrics: dict[str, float]
    state: Any


@dataclass(frozen=True)
class NoParams:
    """A defense without knobs."""


@dataclass(frozen=True)
class Defense:
    """Base class; subclasses set ``name``, ``Params``, and override ``step`` (and ``perturb``)."""

    params: Any
    attack: AttackSettings
    # what a composing defense does to the logits of the label cross-entropy terms (HE's
    # additive angular margin); None: nothing. Set by the composite, never a knob.
    label_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = field(
        default=None, repr=False, compare=False)
    # label smoothing of the label cross-entropy terms (Szegedy et al. 2016; for adversarial
    # training, Pang et al. 2021 "Bag of Tricks", Sec. 4): a TrialConfig option, never a knob
    label_smoothing: float = 0.0

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    default_random_start: ClassVar[str] = "uniform"
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    replays: ClassVar[int] = 1  # iterations per minibatch (free adversarial training: m)
    uses_training_epsilon: ClassVar[bool] = True  # False: the defense sets its own radii (SMD)
    clean_training: ClassVar[bool] = False  # True: no inner maximisation (standard, AMR)
    # True: every label cross-entropy term goes through ``cross_entropy`` (label smoothing
    # reaches them all); False: the loss computes its own and refuses label smoothing
    label_terms_smoothed: ClassVar[bool] = False

    # -- inner maximisation ------------------------------------------------------------
    def pgd(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss="ce") -> torch.Tensor:
        """The training PGD with this defense's threat model, in eval mode."""
        a = self.attack
        return pgd(model, x, y, epsilon=a.epsilon, steps=a.steps, step_size=a.step_size,
                   norm=a.norm, loss=loss, random_start=a.random_start or self.default_random_start,
                   mode="eval")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, state: Any = None,
                *, ids: torch.Tensor | None = None) -> Any:
        """The training point ``step`` consumes; by default the training PGD's output."""
        return self.pgd(model, x, y)

    # -- outer minimisation --------------------------------------------------------------
    def cross_entropy(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy on the labels, as every loss term on the labels computes it: on
        ``label_logits(logits, y)`` when a composing defense set that transform, against
        labels smoothed by ``label_smoothing``."""
        if self.label_logits is not None:
            logits = self.label_logits(logits, y)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    @classmethod
    def smooths_labels(cls, params: dict[str, Any]) -> bool:
        """Whether this defense with knobs ``params`` applies ``label_smoothing``."""
        return cls.label_terms_smoothed

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: Any,
             state: Any = None, *, ids: torch.Tensor | None = None) -> StepOutput:
        """Loss, detached metrics and the next state at ``x_adv``, the point ``perturb``
        returned (memoryless defenses return ``state`` as it is)."""
        raise NotImplementedError(f"defense {self.name!r} does not implement step")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: Any,
             state: Any = None, *, ids: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """``step``'s loss and metrics, without its next state."""
        loss, metrics, _ = self.step(model, x, y, x_adv, state, ids=ids)
        return loss, metrics

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "loss" in cls.__dict__:
            raise TypeError(f"{cls.__name__} overrides loss; a defense implements step "
                            "(loss is step's loss and metrics)")

    def adaptive_objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                           state: Any = None, *, ids: torch.Tensor | None = None
                           ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The training objective as a function of the attacked input, which the adaptive
        attack ascends: the outer loss with the attacked input as the training point, or, for
        defenses trained on clean inputs only, the loss at the attacked input itself. Whatever
        the objective needs from the clean batch is computed once, here."""
        def objective(x_adv: torch.Tensor) -> torch.Tensor:
            point = x_adv if self.clean_training else x
            return self.step(model, point, y, x_adv, state, ids=ids)[0]

        return objective

    def after_backward(self, state: Any, x_adv: Any) -> Any:
        """Next state once ``loss.backward()`` has run (``x_adv.grad`` set if it needed one)."""
        return state

    def at_epoch(self, epoch: int, lr_scale: float) -> Defense:
        """The defense for 0-based ``epoch`` when the learning rate is ``lr_scale`` × its
        initial value; knobs that follow the schedule (EMR's λ) override this."""
        return self

    # -- memory, architecture, search ----------------------------------------------------
    def init_state(self, *, num_examples: int, batch_size: int, num_classes: int,
                   epochs: int) -> Any:
        """Per-run memory (checkpointed by the engine); None for memoryless defenses.

        ``num_examples`` is the size of the id space (the official training set)."""
        return None

    def model_hook(self, model: nn.Module) -> nn.Module:
        """Architecture change the defense needs (HE swaps the head); identity by default."""
        return model

    @classmethod
    def search_space(cls, trial) -> dict[str, Any]:
        """Optuna define-by-run space: returns TrialConfig overrides (incl. defense_params)."""
        return with_weight_decay(trial, {})

    @classmethod
    def knobs(cls) -> dict[str, dict[str, Any]]:
        return describe_knobs(cls.Params)


def with_weight_decay(trial, defense_params: dict[str, Any]) -> dict[str, Any]:
    """TrialConfig overrides: ``defense_params`` and the weight decay every defense searches."""
    return {"weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True),
            "defense_params": defense_params}


def input_of(point: Any) -> torch.Tensor:
    """The attacked input of a training point ``perturb`` returned (SMD's point carries more:
    the input is its ``x_adv``)."""
    return point if isinstance(point, torch.Tensor) else point.x_adv


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()
