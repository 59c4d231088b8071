"""Defense registry: ``create_defense(name, attack=..., **knobs)`` / ``list_defenses()``.

Each module of this package registers its classes with ``@register_defense("name")``; every
module here is imported when the package is.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from trainables.defenses.base import (
    AttackSettings,
    Defense,
    DefenseConfigError,
    StepOutput,
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


def preset(name: str, preset_name: str) -> dict[str, Any]:
    """A paper's reported setting of defense ``name`` as TrialConfig fields (with ``defense``)."""
    presets = DEFENSES.get(name).presets
    if preset_name not in presets:
        raise KeyError(f"defense {name!r} has no preset {preset_name!r}; "
                       f"known: {', '.join(sorted(presets)) or 'none'}")
    return {"defense": name, **presets[preset_name]}


def create_defense(name: str, *, attack: AttackSettings, label_smoothing: float = 0.0,
                   **params: Any) -> Defense:
    """Build defense ``name`` with validated knobs; fails listing known names / allowed knobs."""
    cls = DEFENSES.get(name)
    return cls(params=build_params(name, cls.Params, params), attack=attack,
               label_smoothing=label_smoothing)


def _import_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")


_import_all()

__all__ = ["AttackSettings", "Defense", "DefenseConfigError", "StepOutput", "create_defense",
           "defense_class", "list_defenses", "preset", "register_defense"]
