"""Checkpoints: a directory of weights (safetensors), resolved config and metrics.

Layout of a checkpoint directory::

    model.safetensors     the weights (tensors only: nothing in it can run code)
    config.json           the resolved TrialConfig the model was built from
    metrics.json          the metrics at the time of saving
    training_state.pt     optional: optimizer, defense memory, RNG (tensors and plain data)

Anything read with ``torch.load`` goes through ``weights_only=True``; a pickle that would run
code is refused with :class:`CheckpointError`. Directories are written to a temporary sibling
and renamed into place, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trainables.config import TrialConfig
from trainables.engine import build_model

WEIGHTS = "model.safetensors"
LEGACY_WEIGHTS = "model.pt"  # a plain state dict, read with weights_only=True
CONFIG = "config.json"
METRICS = "metrics.json"
TRAINING_STATE = "training_state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or holds something that would run code."""


@dataclass
class Checkpoint:
    model: nn.Module
    config: TrialConfig
    metrics: dict[str, Any]
    path: Path


def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, config: TrialConfig,
                    metrics: dict[str, Any] | None = None,
                    training_state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory atomically (replacing one already at ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    staging.mkdir()
    try:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(staging / WEIGHTS))
        (staging / CONFIG).write_text(json.dumps(config.resolved().to_dict(), indent=2))
        (staging / METRICS).write_text(json.dumps(metrics or {}, indent=2, default=float))
        if training_state is not None:
            state = {k: v for k, v in training_state.items() if k != "model"}
            torch.save(state, staging / TRAINING_STATE)
        _replace_dir(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _replace_dir(staging: Path, path: Path) -> None:
    if path.exists():
        retired = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
        os.replace(path, retired)
        os.replace(staging, path)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, path)


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` restricted to tensors and plain data; code-running pickles are refused."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refusing to load {path}: it holds objects that would run code when unpickled "
            f"({str(error).splitlines()[0]}); only tensors and plain data are accepted"
        ) from error
    except (OSError, RuntimeError, EOFError) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from error


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if (path / WEIGHTS).exists():
        try:
            return load_file(str(path / WEIGHTS))
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read {path / WEIGHTS}: {error}") from error
    if (path / LEGACY_WEIGHTS).exists():
        weights = safe_torch_load(path / LEGACY_WEIGHTS)
        if not isinstance(weights, dict):
            raise CheckpointError(f"{path / LEGACY_WEIGHTS} is not a state dict")
        return weights
    raise CheckpointError(f"{path} holds no {WEIGHTS} or {LEGACY_WEIGHTS}")


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model from the registry with the saved config and load its weights."""
    path = Path(path)
    if not (path / CONFIG).exists():
        raise CheckpointError(f"{path} is not a checkpoint directory (no {CONFIG})")
    try:
        config = TrialConfig.from_dict(json.loads((path / CONFIG).read_text()))
        metrics = json.loads((path / METRICS).read_text()) if (path / METRICS).exists() else {}
    except (ValueError, OSError) as error:
        raise CheckpointError(f"cannot read the config of {path}: {error}") from error
    model = build_model(config)
    try:
        model.load_state_dict(load_weights(path))
    except RuntimeError as error:
        raise CheckpointError(f"weights in {path} do not fit {config.model}: {error}") from error
    model.to(device).eval()
    return Checkpoint(model=model, config=config, metrics=metrics, path=path)


def load_training_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The optimizer / defense / RNG state saved beside the weights, or None."""
    file = Path(path) / TRAINING_STATE
    return safe_torch_load(file) if file.exists() else None


def resume(run, path: str | os.PathLike) -> None:
    """Put a ``TrainingRun`` back where the checkpoint at ``path`` left it."""
    state = load_training_state(path)
    if state is None:
        raise CheckpointError(f"{path} holds no training state to resume from")
    run.load_state_dict({**state, "model": load_weights(Path(path))})
