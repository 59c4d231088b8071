"""Every evaluation attack behind one interface: ``create_attack(name, **params)``.

An :class:`Attack` is called as ``attack(model, x, y) -> x_adv``; ``attack.run`` also returns
what the attack noticed on the way (AutoAttack's own warnings, its per-part accuracies).
Attacks never touch the caller's random state: they draw from generators seeded by ``seed``
and run inside ``torch.random.fork_rng`` (pyautoattack reseeds the global RNG).

Names: ``fgsm``, ``pgd``, ``l2-pgd``, ``autoattack`` (``version`` standard / plus / rand, or
``parts`` for a custom subset), its parts ``apgd-ce``, ``apgd-t``, ``fab-t``, ``square``,
``spsa`` (``preset`` or explicit settings) and ``adaptive`` (PGD on a defense's own training
loss). Spec strings name an attack and its settings in one token, ``pgd:steps=100,loss=cw``,
and a few aliases name the usual evaluations (``pgd-100-ce``, ``pgd-100-cw``, ``spsa-strong``).

The gradient attacks keep each example's strongest iterate (a point misclassified on the way
counts even if the ascent leaves it). Against randomised models ``pgd`` and ``l2-pgd`` take
``eot_samples`` (the gradient averaged over that many forward passes; AutoAttack's own EOT is
``version=rand``), and against a model that declares a non-differentiable ``preprocessing``
``fgsm``, ``pgd``, ``l2-pgd``, ``autoattack`` and its parts take ``bpda=true`` (Athalye et al.
2018, §4.1; :mod:`attacks.bpda`). Both settings are recorded only when they are not the default.

Every attack declares what a cascade of attacks (:mod:`attacks.cascade`) needs to know of it:
its ``cost``, an estimate of the model passes it spends on one point (a forward pass counts 1,
a forward and backward pass 3), by which a cascade orders attacks from cheapest to dearest; and
whether it is ``pointwise``, its verdict on a point depending on nothing but that point, the
seed and the model (FGSM; SPSA, which draws per point, :mod:`attacks.streams`). PGD draws its
random start for a whole batch, and AutoAttack and its parts (pyautoattack) draw for theirs and
drop broken points as they go, so their verdicts depend on the points attacked with them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attacks import autoattack as aa
from attacks.bpda import bpda as bpda_model
from attacks.pgd import ascend, fgsm, model_mode, pgd, prediction_judge
from attacks.spsa import spsa, spsa_preset
from trainables.registry import Registry

ATTACKS: Registry[Callable[..., Attack]] = Registry("attack")

ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "pgd-20": ("pgd", {"steps": 20}),
    "pgd-100-ce": ("pgd", {"steps": 100, "loss": "ce"}),
    "pgd-100-cw": ("pgd", {"steps": 100, "loss": "cw"}),
    "aa-standard": ("autoattack", {"version": "standard"}),
    "spsa-light": ("spsa", {"preset": "lma-at"}),
    "spsa-strong": ("spsa", {"preset": "strong"}),
}


@dataclass
class AttackOutput:
    x_adv: torch.Tensor
    flags: list[str] = field(default_factory=list)  # warnings the attack itself raised
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Attack:
    """A configured attack: ``name`` and every setting that determines its result; its
    ``cost`` (model passes per point, an estimate; unknown: ``inf``) and whether it is
    ``pointwise`` (see the module's docstring)."""

    name: str
    settings: dict[str, Any]
    white_box: bool
    _run: Callable[[nn.Module, torch.Tensor, torch.Tensor], AttackOutput] = field(repr=False)
    cost: float = math.inf
    pointwise: bool = False

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        devices = [x.device] if x.device.type == "cuda" else []
        with (torch.random.fork_rng(devices=devices), model_mode(model, "eval"),
              bpda_model(model, bool(self.settings.get("bpda", False))) as attacked):
            output = self._run(attacked, x.detach(), y.detach())
        if output.x_adv.shape != x.shape:
            raise RuntimeError(f"attack {self.name} returned shape {tuple(output.x_adv.shape)}")
        return output

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.run(model, x, y).x_adv


def register_attack(name: str):
    return ATTACKS.register(name)


def list_attacks() -> list[str]:
    return ATTACKS.names() + sorted(ALIASES)


def create_attack(name: str, defaults: dict[str, Any] | None = None, **params: Any) -> Attack:
    """The attack ``name`` (a registered name, an alias or a spec string) with ``params``.

    ``defaults`` fill only the settings the attack accepts and the spec leaves open (shared
    values such as ``epsilon``, ``norm``, ``seed``); ``epsilon`` is required by every attack;
    unknown settings fail with the accepted ones.
    """
    base, spec_params = parse_spec(name)
    if base in ALIASES:
        base, alias_params = ALIASES[base]
        spec_params = {**alias_params, **spec_params}
    factory = ATTACKS.get(base)
    signature = inspect.signature(factory)
    shared = {k: v for k, v in (defaults or {}).items() if k in signature.parameters}
    merged = {**shared, **spec_params, **params}
    try:
        signature.bind(**merged)
    except TypeError as error:
        raise ValueError(f"bad settings for attack {base!r}: {error}; accepted: "
                         f"{', '.join(signature.parameters)}") from None
    return factory(**merged)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"pgd:steps=100,loss=cw"`` → ``("pgd", {"steps": 100, "loss": "cw"})``."""
    name, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"attack spec {spec!r}: expected key=value, got {item!r}")
        params[key.strip()] = _literal(value.strip())
    return name.strip(), params


def _literal(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    lowered = text.lower()
    if lowered in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[lowered]
    return text.split("+") if "+" in text else text


def _generator(x: torch.Tensor, seed: int) -> torch.Generator:
    return torch.Generator(device=x.device).manual_seed(seed)


def _unless_default(eot_samples: int = 1, bpda: bool = False) -> dict[str, Any]:
    """The EOT and BPDA settings that differ from their defaults: an attack's identity (its
    recorded settings) stays what it was for a deterministic, differentiable model."""
    if not isinstance(eot_samples, int) or isinstance(eot_samples, bool) or eot_samples < 1:
        raise ValueError(f"eot_samples must be an integer >= 1, got {eot_samples!r}")
    if not isinstance(bpda, bool):
        raise ValueError(f"bpda must be true or false, got {bpda!r}")
    return {**({"eot_samples": eot_samples} if eot_samples != 1 else {}),
            **({"bpda": True} if bpda else {})}


# -- gradient attacks ------------------------------------------------------------------------
@register_attack("fgsm")
def _fgsm(*, epsilon: float, norm: str = "linf", bpda: bool = False) -> Attack:
    return Attack("fgsm", {"epsilon": epsilon, "norm": norm, **_unless_default(bpda=bpda)},
                  True, lambda m, x, y: AttackOutput(fgsm(m, x, y, epsilon=epsilon, norm=norm,
                                                          keep="best")),
                  cost=4.0, pointwise=True)


@register_attack("pgd")
def _pgd(*, epsilon: float, steps: int = 100, step_size: float | None = None, loss: str = "ce",
         restarts: int = 1, random_start: str | bool = "uniform", norm: str = "linf",
         seed: int = 0, eot_samples: int = 1, bpda: bool = False) -> Attack:
    step_size = 2.5 * epsilon / max(steps, 1) if step_size is None else step_size
    settings = {"epsilon": epsilon, "steps": steps, "step_size": step_size, "loss": loss,
                "restarts": restarts, "random_start": random_start, "norm": norm, "seed": seed,
                **_unless_default(eot_samples, bpda)}

    def run(model, x, y):
        return AttackOutput(pgd(model, x, y, epsilon=epsilon, steps=steps, step_size=step_size,
                                loss=loss, restarts=restarts, random_start=random_start,
                                norm=norm, generator=_generator(x, seed), keep="best",
                                eot_samples=eot_samples))

    return Attack("pgd", settings, True, run,
                  cost=float(restarts * eot_samples * (3 * steps + 1)))


@register_attack("l2-pgd")
def _l2_pgd(*, epsilon: float, steps: int = 100, step_size: float | None = None,
            loss: str = "ce", restarts: int = 1, random_start: str | bool = "uniform",
            seed: int = 0, norm: str = "l2", eot_samples: int = 1,
            bpda: bool = False) -> Attack:
    if norm != "l2":
        raise ValueError("l2-pgd is the L2 attack; use pgd for norm=linf")
    attack = _pgd(epsilon=epsilon, steps=steps, step_size=step_size, loss=loss,
                  restarts=restarts, random_start=random_start, norm="l2", seed=seed,
                  eot_samples=eot_samples, bpda=bpda)
    return Attack("l2-pgd", attack.settings, True, attack._run, cost=attack.cost)


@register_attack("adaptive")
def _adaptive(*, epsilon: float, defense: str, defense_params: dict | None = None,
              steps: int = 100, step_size: float | None = None, norm: str = "linf",
              seed: int = 0) -> Attack:
    """PGD on the defense's own objective: its declared adaptive loss (HE: the margin CE on
    s·cosθ), else its training objective at the attacked point
    (``defense.adaptive_objective``), with a fresh state for defenses with memory (LMA's
    logit averages, SMD's per-example margins) over the attacked points. Each example keeps its
    strongest iterate, judged by the model's prediction (CW margin as the tie-break)."""
    from trainables.defenses import create_defense
    from trainables.defenses.base import AttackSettings

    step_size = 2.5 * epsilon / max(steps, 1) if step_size is None else step_size
    chosen = create_defense(defense, **(defense_params or {}), attack=AttackSettings(
        epsilon=epsilon, steps=steps, step_size=step_size, norm=norm))
    declared = getattr(chosen, "adaptive_attack_loss", None)
    settings = {"epsilon": epsilon, "steps": steps, "step_size": step_size, "norm": norm,
                "seed": seed, "defense": defense, "defense_params": defense_params or {},
                "objective": "adaptive_attack_loss" if declared else "training loss"}

    def run(model, x, y):
        generator = _generator(x, seed)
        if declared is not None:
            return AttackOutput(pgd(model, x, y, epsilon=epsilon, steps=steps, norm=norm,
                                    step_size=step_size, loss=declared(), generator=generator,
                                    keep="best"))

        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
        state = chosen.init_state(num_examples=len(x), batch_size=len(x),
                                  num_classes=num_classes, epochs=1)
        ids = torch.arange(len(x), device=x.device)
        objective = chosen.adaptive_objective(model, x, y, state, ids=ids)
        return AttackOutput(ascend(objective, x, epsilon=epsilon, steps=steps,
                                   step_size=step_size, norm=norm, generator=generator,
                                   keep="best", judge=prediction_judge(model, y)))

    return Attack("adaptive", settings, True, run, cost=float(3 * steps + 1))


# -- black-box -------------------------------------------------------------------------------
@register_attack("spsa")
def _spsa(*, epsilon: float, preset: str | None = None, norm: str = "linf", seed: int = 0,
          **settings: Any) -> Attack:
    accepted = set(inspect.signature(spsa).parameters) - {"model", "x", "y", "epsilon", "norm",
                                                           "generator", "seed", "per_point"}
    unknown = sorted(set(settings) - accepted)
    if unknown:  # a gradient-free attack has no use for bpda or eot_samples either
        raise ValueError(f"bad settings for attack 'spsa': {', '.join(unknown)}; accepted: "
                         f"preset, {', '.join(sorted(accepted))}")
    chosen = {**(spsa_preset(preset) if preset else spsa_preset("strong")), **settings}
    recorded = {"epsilon": epsilon, "norm": norm, "seed": seed, "preset": preset, **chosen}

    def run(model, x, y):
        return AttackOutput(spsa(model, x, y, epsilon=epsilon, norm=norm, seed=seed,
                                 per_point=True, **chosen))

    cost = 1 + chosen["steps"] * (chosen["samples"] + 1)
    return Attack("spsa", recorded, False, run, cost=float(cost), pointwise=True)


# -- AutoAttack and its parts (pyautoattack) -----------------------------------------------
@register_attack("autoattack")
def _autoattack(*, epsilon: float, version: str = "standard", parts: list[str] | str | None =
                None, norm: str = "linf", seed: int = 0, batch_size: int = 500,
                square_queries: int = 5000, eot_samples: int | None = None,
                bpda: bool = False) -> Attack:
    parts = [parts] if isinstance(parts, str) else parts
    eot = {} if eot_samples is None else {"eot_samples": eot_samples}  # version=rand's EOT
    settings = aa.settings(epsilon=epsilon, version=version, parts=parts, norm=norm, seed=seed,
                           square_queries=square_queries, **eot)

    def run(model, x, y):
        return AttackOutput(*aa.run(model, x, y, batch_size=batch_size, **settings))

    return Attack("autoattack", {**settings, **_unless_default(bpda=bpda)}, True, run,
                  cost=aa.cost(**settings))


def _part(part: str, white_box: bool):
    def factory(*, epsilon: float, norm: str = "linf", seed: int = 0, batch_size: int = 500,
                queries: int = 5000, bpda: bool = False) -> Attack:
        attack = _autoattack(epsilon=epsilon, parts=[part], norm=norm, seed=seed,
                             batch_size=batch_size, square_queries=queries, bpda=bpda)
        return Attack(part, attack.settings, white_box, attack._run, cost=attack.cost)

    return factory


for _name, _white_box in (("apgd-ce", True), ("apgd-t", True), ("fab-t", True),
                          ("square", False)):
    register_attack(_name)(_part(_name, _white_box))
