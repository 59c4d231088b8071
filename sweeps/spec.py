"""A sweep's typed specification: base config, budget, resources, search and stores.

Light on purpose (Ray, MLflow and torch load only when a spec is checked or resolved), so that
command lines can describe studies at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sweeps.environment import home

if TYPE_CHECKING:
    from trainables.config import TrialConfig


@dataclass(frozen=True)
class SweepSpec:
    name: str
    base: dict[str, Any]  # TrialConfig fields shared by every trial
    num_samples: int = 8
    max_concurrent: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    sampler: str = "tpe"
    seeds_only: bool = False
    early_stopping: bool = True  # ASHA on validation robust accuracy
    grace_period: int = 1  # ASHA: epochs before a trial may be stopped
    reduction_factor: int = 2
    max_failures: int = 2
    storage_path: str | None = None  # Ray Tune results (shared storage on a cluster)
    tracking_uri: str | None = None
    experiment: str | None = None
    artifact_location: str | None = None
    optuna_storage: str | None = None
    seed: int = 0
    extra_tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from sweeps.samplers import SAMPLERS
        from trainables.config import TrialConfig

        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.num_samples < 1 or self.max_concurrent < 1:
            raise ValueError("num_samples and max_concurrent must be >= 1")
        TrialConfig.from_dict(self.base)  # fail before any cluster work

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
