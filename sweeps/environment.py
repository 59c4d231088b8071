"""Where the service runs: its home folder and the code version (no Ray: reading results
uses it too; the Ray connection is ``sweeps.cluster``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

HOME_ENV = "ROBUST_SWEEPS_HOME"
CODE_VERSION_ENV = "ROBUST_SWEEPS_CODE_VERSION"


def home() -> Path:
    """Where sweeps keep results, databases and artifacts unless told otherwise."""
    path = Path(os.environ.get(HOME_ENV, Path.home() / "robust-sweeps")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def code_version() -> str:
    """The git commit of this code, or ``$ROBUST_SWEEPS_CODE_VERSION`` where there is no
    repository (the Docker image is built with it)."""
    if os.environ.get(CODE_VERSION_ENV):
        return os.environ[CODE_VERSION_ENV]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
