"""BPDA: attack through a non-differentiable preprocessing (Athalye et al. 2018, "Obfuscated
Gradients Give a False Sense of Security", §4.1 Backward Pass Differentiable Approximation).

A model declares its preprocessing by an attribute ``preprocessing`` (an ``nn.Module``) that
its ``forward`` applies to the input, e.g. quantisation or JPEG compression, whose gradient is
zero almost everywhere or absent. The preprocessing may offer a smooth approximation
``preprocessing.approximation(x)`` with ``approximation(x) ≈ preprocessing(x)``; without one,
the backward pass uses the identity (the straight-through estimator, BPDA's usual choice).

While :func:`bpda` is active, the preprocessing's output ``p(x)`` is replaced by the
straight-through form ``g(x) + (p(x) − g(x)).detach()``: the forward values are exactly the
model's own (so predictions, losses and every robust flag are the real model's), and gradients
flow through ``g``. ``p`` runs on a detached input, so it may be any function of tensor values
(integer rounding, a codec through NumPy). Leaving the context removes the hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def declared_preprocessing(model: nn.Module) -> nn.Module:
    """The model's ``preprocessing`` module; a ValueError naming the model's class if it has
    none, since BPDA needs to know which part of the forward pass to approximate."""
    preprocessing = getattr(model, "preprocessing", None)
    if not isinstance(preprocessing, nn.Module):
        raise ValueError(f"bpda=True needs a model that declares its non-differentiable "
                         f"preprocessing as an nn.Module attribute `preprocessing`; "
                         f"{type(model).__name__} declares none")
    return preprocessing


def approximation_of(preprocessing: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The differentiable ``g`` of the backward pass: ``preprocessing.approximation`` when
    the preprocessing offers one, else the identity."""
    approximation = getattr(preprocessing, "approximation", None)
    return approximation if callable(approximation) else (lambda x: x)


def straight_through(exact: torch.Tensor, x: torch.Tensor,
                     approximation: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``g(x) + (p(x) − g(x)).detach()``: the value of ``exact = p(x)``, the gradient of g.

    Written ``p(x) + (g(x) − g(x).detach())`` so that the value is ``p(x)`` bit for bit (the
    bracket is exactly zero); without a gradient to carry, ``p(x)`` itself."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return exact
    smooth = approximation(x)
    return exact.detach() + (smooth - smooth.detach())


@contextmanager
def bpda(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the context, ``model``'s declared preprocessing computes its exact output on a
    detached input and back-propagates through its approximation (or the identity). Yields
    the model itself; with ``enabled=False`` nothing changes (and nothing is required)."""
    if not enabled:
        yield model
        return
    preprocessing = declared_preprocessing(model)
    approximation = approximation_of(preprocessing)
    inputs: list[torch.Tensor] = []  # a stack: the preprocessing may be called re-entrantly

    def detach_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        inputs.append(args[0])
        return (args[0].detach(), *args[1:])

    def approximate_backward(module: nn.Module, args: tuple[Any, ...],
                             output: torch.Tensor) -> torch.Tensor:
        return straight_through(output, inputs.pop(), approximation)

    handles = [preprocessing.register_forward_pre_hook(detach_input),
               preprocessing.register_forward_hook(approximate_backward)]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
