"""The Ray connection every job shares (sweeps, the evaluation pool).

The cluster a job joins is its ``--address`` flag, else ``$RAY_ADDRESS`` (Ray's own variable,
which a submitted job's driver also finds set), else a new local cluster. Joining an existing
cluster by the flag uses Ray's token authentication, as clusters started with ``ray start``
here do. A local cluster's workers inherit this process's environment (MLflow's credentials
included); an existing cluster's workers have their nodes' own (``ray job submit
--runtime-env-json`` adds to it).
"""

from __future__ import annotations

import os

import ray

ADDRESS_ENV = "RAY_ADDRESS"  # Ray's own variable


def cluster_address(address: str | None) -> str | None:
    """The cluster to join: ``address`` (the flag), else ``$RAY_ADDRESS``, else None (a new
    local cluster; ``"local"`` also asks for one)."""
    return address or os.environ.get(ADDRESS_ENV) or None


def connect(address: str | None, **init_kwargs) -> None:
    """Join the cluster :func:`cluster_address` names, unless already connected. A cluster
    named by the flag is joined with token authentication (as `ray start` clusters here use);
    one named by ``$RAY_ADDRESS`` with whatever ``$RAY_AUTH_MODE`` its environment says."""
    if address and address != "local":
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    address = cluster_address(address)
    if not ray.is_initialized():
        ray.init(address=address, **init_kwargs)
