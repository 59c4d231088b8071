"""Where the service runs: its home folder, the stores' defaults and the code version (no Ray:
reading results uses it too; the Ray connection is ``sweeps.cluster``).

A store left unnamed by its flag comes from its ecosystem's own variable, else from the home:
the Optuna storage from ``$OPTUNA_STORAGE``, the MLflow tracking URI from
``$MLFLOW_TRACKING_URI`` (``dashboards.runs.default_tracking_uri``), the Ray cluster from
``$RAY_ADDRESS`` (``sweeps.cluster``).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

HOME_ENV = "ROBUST_SWEEPS_HOME"
CODE_VERSION_ENV = "ROBUST_SWEEPS_CODE_VERSION"
OPTUNA_STORAGE_ENV = "OPTUNA_STORAGE"  # the variable Optuna's own command line reads


def home() -> Path:
    """Where sweeps keep results, databases and artifacts unless told otherwise."""
    path = Path(os.environ.get(HOME_ENV, Path.home() / "robust-sweeps")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def embedded_optuna_storage(root: str | os.PathLike) -> str:
    """The embedded study storage: ``optuna.db`` (sqlite) under ``root``."""
    return f"sqlite:///{Path(root).resolve() / 'optuna.db'}"


def default_optuna_storage(root: str | os.PathLike) -> str:
    """The study storage when no flag names one: ``$OPTUNA_STORAGE`` (as Optuna's command line
    reads it), else the embedded one under ``root``."""
    return os.environ.get(OPTUNA_STORAGE_ENV) or embedded_optuna_storage(root)


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


def create_sqlite_store(uri: str, initialize: Callable[[str], object]) -> None:
    """Create the sqlite database behind ``uri`` whole or not at all.

    MLflow and Optuna build their tables in several steps; a process killed among them leaves a
    database neither can open again (``table ... already exists``). A missing database is built
    in a temporary file beside it by ``initialize(temporary_uri)``, then renamed into place.
    Other URIs (a server, PostgreSQL) and existing files are left alone.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return
    path = Path(uri[len(prefix):])
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(staging)  # the store creates its own file
    try:
        initialize(f"{prefix}{staging}")
        if not path.exists():  # another driver may have made it meanwhile
            os.replace(staging, path)
    finally:
        Path(staging).unlink(missing_ok=True)
