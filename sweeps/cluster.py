"""The Ray connection every job shares (sweeps, the evaluation pool)."""

from __future__ import annotations

import os

import ray


def connect(address: str | None, **init_kwargs) -> None:
    """Join the Ray cluster at ``address`` (``None``: ``$RAY_ADDRESS``, a submitted job's
    cluster or a new local one; ``"local"``: always a new one), unless already connected."""
    if address and address != "local":
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # `ray start` clusters use tokens
    if not ray.is_initialized():
        ray.init(address=address, **init_kwargs)
