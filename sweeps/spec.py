"""A sweep's typed specification: base config, budget, resources, search and stores.

Light on purpose (Ray, MLflow and torch load only when a spec is checked or resolved), so that
command lines can describe studies at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import tyro

from sweeps.environment import home

if TYPE_CHECKING:
    from trainables.config import TrialConfig


def _alias(*names: str) -> Any:
    return tyro.conf.arg(aliases=names)


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: its fields are ``robust-sweeps sweep``'s flags (``--num-samples``, ...)."""

    name: str  # sweep name (Tune experiment, Optuna study, MLflow tag)
    base: dict[str, Any]  # TrialConfig fields shared by every trial
    num_samples: Annotated[int, _alias("--samples")] = 8  # number of trials
    max_concurrent: Annotated[int, _alias("--concurrency")] = 2  # trials running at once
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fractions share a GPU
    sampler: str = "tpe"  # Optuna sampler (sweeps.samplers: tpe, random, cmaes, nsga2)
    seeds_only: bool = False  # repeat the base config over seeds instead of searching
    early_stopping: bool = True  # ASHA on validation robust accuracy
    grace_period: int = 1  # ASHA: epochs before a trial may be stopped
    reduction_factor: int = 2  # ASHA: keep the best 1/reduction_factor at each rung
    max_failures: int = 2  # retries of a trial whose worker died
    # Ray Tune results: a path every node sees, or s3://bucket/prefix on a cluster
    storage_path: Annotated[str | None, _alias("--storage")] = None  # Ray Tune results
    tracking_uri: str | None = None  # MLflow tracking URI (default: sqlite under the home)
    experiment: str | None = None  # MLflow experiment (default: sweeps)
    artifact_location: str | None = None  # MLflow artifacts (default: the server's, or home)
    optuna_storage: str | None = None  # Optuna RDB URL (sqlite or postgresql)
    seed: int = 0
    extra_tags: dict[str, str] = field(default_factory=dict)  # MLflow tags on every run

    def __post_init__(self) -> None:
        from sweeps.samplers import SAMPLERS

        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.num_samples < 1 or self.max_concurrent < 1:
            raise ValueError("num_samples and max_concurrent must be >= 1")

    def check(self) -> SweepSpec:
        """Fail before any cluster work: the base must be a valid TrialConfig."""
        self.config  # noqa: B018
        return self

    @property
    def config(self) -> TrialConfig:
        from trainables.config import TrialConfig

        return TrialConfig.from_dict(self.base)

    def resolved(self) -> SweepSpec:
        """Defaults spelled out: storage, tracking and Optuna stores under ``home()``."""
        from dashboards.runs import default_artifact_location, default_tracking_uri

        root = home()
        return dataclasses.replace(
            self,
            storage_path=self.storage_path or str(root / "ray_results"),
            tracking_uri=self.tracking_uri or default_tracking_uri(root),
            experiment=self.experiment or "sweeps",
            # a tracking server keeps artifacts in its own store (--artifacts-destination)
            artifact_location=self.artifact_location or (
                None if str(self.tracking_uri).startswith("http")
                else default_artifact_location(root)),
            optuna_storage=self.optuna_storage or f"sqlite:///{root / 'optuna.db'}",
        )
