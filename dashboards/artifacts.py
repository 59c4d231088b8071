"""Published checkpoints: a trial run's best checkpoint, fetched whole or not at all."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from mlflow.tracking import MlflowClient

CHECKPOINT_ARTIFACT = "best_checkpoint"
DOWNLOAD_MARKER = ".download_complete"


def download_checkpoint(tracking_uri: str, run_id: str, dest_dir: str | os.PathLike) -> Path:
    """The run's published checkpoint as ``dest_dir/<run_id>``, downloaded once.

    The copy goes to a temporary sibling, is marked complete, then renamed into place, so the
    final directory is either absent or whole.
    """
    target = Path(dest_dir) / run_id
    if (target / DOWNLOAD_MARKER).is_file():
        return target
    client = MlflowClient(tracking_uri)
    if not client.list_artifacts(run_id, CHECKPOINT_ARTIFACT):
        raise FileNotFoundError(f"run {run_id} has no {CHECKPOINT_ARTIFACT!r} artifact: "
                                "its trial never published a checkpoint")
    staging = target.with_name(f".{run_id}.{uuid.uuid4().hex}.tmp")
    staging.mkdir(parents=True)
    try:
        local = Path(client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, str(staging)))
        (local / DOWNLOAD_MARKER).touch()
        if target.exists() and not (target / DOWNLOAD_MARKER).is_file():
            shutil.rmtree(target)  # a partial copy left by something other than this function
        try:
            os.replace(local, target)
        except OSError:
            if not (target / DOWNLOAD_MARKER).is_file():  # not a concurrent complete copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
