"""Defense registry: ``create_defense(name, attack=..., **knobs)`` / ``list_defenses()``.

Each defense module registers its class with ``@register_defense("name")``.
"""

from __future__ import annotations

from typing import Any

from trainables.defenses.base import (
    AttackSettings,
    Defense,
    DefenseConfigError,
    build_params,
)
from trainables.registry import Registry

DEFENSES: Registry[type[Defense]] = Registry("defense")


def register_defense(name: str):
    def decorator(cls: type[Defense]) -> type[Defense]:
        cls.name = name
        return DEFENSES.register(name)(cls)

    return decorator


def defense_class(name: str) -> type[Defense]:
    return DEFENSES.get(name)


def list_defenses() -> list[str]:
    return DEFENSES.names()


def create_defense(name: str, *, attack: AttackSettings, **params: Any) -> Defense:
    """Build defense ``name`` with validated knobs; fails listing known names / allowed knobs."""
    cls = DEFENSES.get(name)
    return cls(params=build_params(name, cls.Params, params), attack=attack)


# Importing the modules registers them.
from trainables.defenses import mart, pgd_at, standard, trades  # noqa: E402,F401

__all__ = ["AttackSettings", "Defense", "DefenseConfigError", "create_defense",
           "defense_class", "list_defenses", "register_defense"]
