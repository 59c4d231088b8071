"""The evaluation pool's command line (``python -m attacks.pool``, ``robust-sweeps pool``):
the flags are :class:`~attacks.pool_config.PoolConfig`'s fields."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from attacks.pool_config import PoolConfig, default_pool_id
from trainables.flags import parse


def parse_config(argv: list[str] | None = None) -> PoolConfig:
    """The pool's config from its flags, the stores left empty filled from the environment
    (``$MLFLOW_TRACKING_URI``) or the home. Bad flags exit with status 2 and the reason."""
    try:
        config = parse(PoolConfig, sys.argv[1:] if argv is None else argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    from dashboards.runs import artifact_location_for, default_tracking_uri
    from sweeps.environment import home

    root = home()
    tracking_uri = config.tracking_uri or default_tracking_uri(root)
    return dataclasses.replace(
        config, tracking_uri=tracking_uri,
        artifact_location=config.artifact_location or artifact_location_for(tracking_uri, root),
        state_dir=(config.state_dir or root / "pool").resolve(),
        pool_id=config.pool_id or default_pool_id())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m attacks.pool``: parse the flags, run the pool, print its summary."""
    config = parse_config(argv)
    from attacks.pool import run

    return run(config)
