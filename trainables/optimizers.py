"""Optimisers by name, built from a TrialConfig: ``create_optimizer(config, parameters)``.

* ``sgd``: SGD with ``momentum``, optional Nesterov, L2 ``weight_decay`` (Madry et al. 2018;
  Rice et al. 2020);
* ``adamw``: AdamW with decoupled ``weight_decay`` (Loshchilov & Hutter 2019); betas
  (0.9, ``adam_beta2``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch

from trainables.registry import Registry

if TYPE_CHECKING:
    from trainables.config import TrialConfig

OptimizerFactory = Callable[["TrialConfig", Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def sgd(config: TrialConfig, parameters) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov, weight_decay=config.weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(config: TrialConfig, parameters) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameters, lr=config.lr, betas=(0.9, config.adam_beta2),
                             weight_decay=config.weight_decay)


def create_optimizer(config: TrialConfig, parameters) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(config.optimizer)(config, parameters)
