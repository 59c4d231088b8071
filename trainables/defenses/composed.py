"""Defenses that add to another registered defense, their base (EMR, HE, IGR on PGD-AT…)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from trainables.defenses.base import Defense, DefenseConfigError, StepOutput, describe_knobs


def _registry():
    # the registry imports this module, so it is looked up when a composed defense needs it
    from trainables import defenses

    return defenses


@dataclass(frozen=True)
class ComposedDefense(Defense):
    """A defense that adds to another registered defense, its base (EMR, HE, IGR on PGD-AT…).

    ``Params`` declares the knob ``base_knob`` (with the allowed bases as choices), the
    composite's ``own_knobs``, and knobs of the bases, each defaulting to None: one that is set
    is forwarded to the base, which checks its range, and must be a knob of the chosen base
    (a clear error otherwise); None keeps the base's default. The base is built on
    construction and does all the composite does not change: attack, state, model hook,
    replays, epoch schedule. The loss is the base's, plus what ``add_to_loss`` adds.
    """

    base: Defense | None = field(default=None, repr=False, compare=False)

    base_knob: ClassVar[str] = ""  # the knob naming the base, e.g. "emr_base"
    own_knobs: ClassVar[frozenset[str]] = frozenset()  # every other knob is the base's

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        knobs = describe_knobs(cls.Params)
        if knobs.get(cls.base_knob, {}).get("choices") is None:
            raise TypeError(f"{cls.__name__}.Params needs a choice knob {cls.base_knob!r}")
        not_none = [name for name in cls.pass_through_knobs() if knobs[name]["default"] is not None]
        if not_none:
            raise TypeError(f"{cls.__name__}: base knobs {not_none} must default to None")

    def __post_init__(self) -> None:
        if self.base is None:
            object.__setattr__(self, "base", self.build_base())

    # -- the base and its knobs ----------------------------------------------------------
    @classmethod
    def pass_through_knobs(cls) -> tuple[str, ...]:
        return tuple(name for name in describe_knobs(cls.Params)
                     if name != cls.base_knob and name not in cls.own_knobs)

    @classmethod
    def knobs_of_base(cls, name: str) -> set[str]:
        try:
            return set(_registry().defense_class(name).knobs())
        except KeyError:
            registered = ", ".join(_registry().list_defenses())
            raise DefenseConfigError(f"{cls.name}: {cls.base_knob} {name!r} is not a registered "
                                     f"defense; registered: {registered}") from None

    @classmethod
    def base_choices(cls) -> tuple[str, ...]:
        """The registered bases ``base_knob`` allows, in its order."""
        registered = set(_registry().list_defenses())
        return tuple(name for name in describe_knobs(cls.Params)[cls.base_knob]["choices"]
                     if name in registered)

    def base_params(self) -> dict[str, Any]:
        """The pass-through knobs that were set; one the chosen base lacks is an error."""
        chosen = getattr(self.params, self.base_knob)
        given = {name: getattr(self.params, name) for name in self.pass_through_knobs()
                 if getattr(self.params, name) is not None}
        takes = self.knobs_of_base(chosen) & set(self.pass_through_knobs())
        irrelevant = sorted(set(given) - takes)
        if irrelevant:
            hints = "; ".join(f"{name} applies to {self.base_knob}={self._bases_taking(name)}"
                              for name in irrelevant)
            raise DefenseConfigError(
                f"{self.name}: knob(s) {irrelevant} do not apply to {self.base_knob}={chosen!r}, "
                f"which takes {', '.join(sorted(takes)) or 'none of them'} ({hints})")
        return given

    @classmethod
    def _bases_taking(cls, knob_name: str) -> str:
        return " or ".join(repr(name) for name in cls.base_choices()
                           if knob_name in cls.knobs_of_base(name)) or "none"

    def build_base(self) -> Defense:
        return _registry().create_defense(getattr(self.params, self.base_knob),
                                          attack=self.attack,
                                          label_smoothing=self.label_smoothing,
                                          **self.base_params())

    @classmethod
    def smooths_labels(cls, params: dict[str, Any]) -> bool:
        """As the chosen base does (the composite's own terms hold no labels)."""
        base = params.get(cls.base_knob) or describe_knobs(cls.Params)[cls.base_knob]["default"]
        return _registry().defense_class(base).smooths_labels(params)

    @classmethod
    def suggest_base(cls, trial, bases: Sequence[str] | None = None) -> str:
        """The base as an Optuna categorical over the registered ones among ``bases``."""
        allowed = cls.base_choices()
        return trial.suggest_categorical(
            cls.base_knob, [name for name in bases or allowed if name in allowed])

    # -- the loss: the base's, plus the composite's term ------------------------------------
    def add_to_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    x_adv: torch.Tensor, base_loss: torch.Tensor
                    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The total loss from the base's, and metrics of what was added."""
        return base_loss, {}

    def step(self, model, x, y, x_adv, state=None, *, ids=None) -> StepOutput:
        base_loss, metrics, state = self.base.step(model, x, y, x_adv, state, ids=ids)
        loss, added = self.add_to_loss(model, x, y, x_adv, base_loss)
        return StepOutput(loss, {**metrics, "base_loss": base_loss.item(), **added,
                                 "loss": loss.item()}, state)

    # -- everything else is the base's ------------------------------------------------------
    @property
    def replays(self) -> int:
        return self.base.replays

    def perturb(self, model, x, y, state=None, *, ids=None):
        return self.base.perturb(model, x, y, state, ids=ids)

    def after_backward(self, state, x_adv):
        return self.base.after_backward(state, x_adv)

    def at_epoch(self, epoch: int, lr_scale: float) -> Defense:
        base = self.base.at_epoch(epoch, lr_scale)
        return self if base is self.base else dataclasses.replace(self, base=base)

    def init_state(self, **sizes) -> Any:
        return self.base.init_state(**sizes)

    def model_hook(self, model: nn.Module) -> nn.Module:
        return self.base.model_hook(model)
