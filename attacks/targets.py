"""What an evaluation attacks: a dataset's test points, and the defense a checkpoint was
trained with (the adaptive attack needs it)."""

from __future__ import annotations

from typing import Any

import torch

from trainables.data import load_dataset


def load_points(dataset: str, n_examples: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n_examples`` test points of ``dataset`` (AutoAttack's convention)."""
    if n_examples <= 0:
        raise ValueError(f"n_examples must be positive, got {n_examples}")
    x, y = load_dataset(dataset, "test").tensors()
    return x[:n_examples].to(device), y[:n_examples].to(device)


def checkpoint_context(config) -> dict[str, Any]:
    """What the adaptive attack needs to know about the defense that trained the model."""
    return {"defense": config.defense, "defense_params": dict(config.defense_params)}


def points_checksum(x: torch.Tensor, y: torch.Tensor) -> str:
    """A short content hash of evaluated points: rows evaluated on equal points are paired."""
    import hashlib

    payload = x.detach().cpu().numpy().tobytes() + y.detach().cpu().numpy().tobytes()
    return hashlib.sha256(payload).hexdigest()[:16]
