"""Training options a sweep may search beside a defense's knobs, by name.

Each entry suggests one TrialConfig field through an Optuna trial (or anything with its
``suggest_*`` methods); :func:`with_recipe` adds the named ones to a defense's define-by-run
space. The ranges are the usual ones of the adversarial-training literature: EMA decays of
Gowal et al. 2020 / Rebuffi et al. 2021, label smoothing up to 0.2 and both BatchNorm modes of
the training attack (Pang et al. 2021, "Bag of Tricks for Adversarial Training", Sec. 4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from trainables.config import merge

RECIPE_SPACE: dict[str, Callable[[Any], Any]] = {
    "lr": lambda trial: trial.suggest_float("lr", 0.01, 0.2, log=True),
    "ema_decay": lambda trial: trial.suggest_categorical("ema_decay", [0.0, 0.99, 0.995, 0.999]),
    "label_smoothing": lambda trial: trial.suggest_float("label_smoothing", 0.0, 0.2),
    "attack_bn_mode": lambda trial: trial.suggest_categorical("attack_bn_mode", ["eval", "train"]),
    "grad_clip": lambda trial: trial.suggest_float("grad_clip", 0.5, 10.0, log=True),
}


def check_recipe(names: Sequence[str]) -> None:
    unknown = sorted(set(names) - set(RECIPE_SPACE))
    if unknown:
        raise ValueError(f"search_recipe names training options {unknown} that cannot be "
                         f"searched; searchable: {', '.join(RECIPE_SPACE)}")


def with_recipe(space: Callable[[Any], dict[str, Any]], names: Sequence[str]
                ) -> Callable[[Any], dict[str, Any]]:
    """``space`` (TrialConfig overrides) with the training options ``names`` searched too."""
    check_recipe(names)
    if not names:
        return space

    def searched(trial) -> dict[str, Any]:
        return merge(space(trial), {name: RECIPE_SPACE[name](trial) for name in names})

    return searched
