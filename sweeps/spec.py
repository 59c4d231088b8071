"""A sweep's typed specification: base config, budget, resources, search and stores.

Light on purpose (Ray, MLflow and torch load only when a spec is checked or resolved), so that
command lines can describe studies at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import tyro

from sweeps.environment import default_optuna_storage, home

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
    # Optuna sampler: tpe (random for a quarter of the budget, 2-10 trials, then TPE), random,
    # cmaes, nsga2 (clean-vs-robust Pareto front; population a quarter of the budget, 4-50)
    sampler: str = "tpe"
    seeds_only: bool = False  # repeat the base config over seeds instead of searching
    # training options searched beside the defense's knobs (trainables.recipe_space: lr,
    # ema_decay, label_smoothing, attack_bn_mode, grad_clip)
    search_recipe: tuple[str, ...] = ()
    # after the search: rerun the best k trials that ran their full budget (by the objective,
    # validation robust accuracy) over more seeds (0: none)
    rerun_top_k: int = 0
    # seeds per rerun configuration, its original trial's included: seed s of the original, then
    # s+1, …, s+n-1 in new trials (MLflow tags config_group, seed_rerun=true)
    rerun_seeds: int = 3
    early_stopping: bool = True  # ASHA on validation robust accuracy
    grace_period: int = 1  # ASHA: epochs before a trial may be stopped
    reduction_factor: int = 2  # ASHA: keep the best 1/reduction_factor at each rung
    max_failures: int = 2  # retries of a trial whose worker died (-1: no limit)
    # Ray Tune results: a path every node sees, or s3://bucket/prefix on a cluster
    storage_path: Annotated[str | None, _alias("--storage")] = None  # Ray Tune results
    # MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite under $ROBUST_SWEEPS_HOME)
    tracking_uri: str | None = None
    experiment: str | None = None  # MLflow experiment (default: sweeps)
    artifact_location: str | None = None  # MLflow artifacts (default: the server's, or home)
    # Optuna RDB URL, sqlite or postgresql (default: $OPTUNA_STORAGE, else sqlite under
    # $ROBUST_SWEEPS_HOME)
    optuna_storage: str | None = None
    seed: int = 0
    extra_tags: dict[str, str] = field(default_factory=dict)  # MLflow tags on every run

    def __post_init__(self) -> None:
        from sweeps.samplers import SAMPLERS
        from trainables.config import ConfigError

        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        lowest = {"num_samples": 1, "max_concurrent": 1, "grace_period": 1,
                  "reduction_factor": 2, "max_failures": -1, "gpus_per_trial": 0,
                  "rerun_top_k": 0, "rerun_seeds": 2}
        for name, low in lowest.items():
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.rerun_top_k > self.num_samples:
            raise ConfigError(f"rerun_top_k must be <= num_samples ({self.num_samples}), got "
                              f"{self.rerun_top_k}")
        if self.rerun_top_k and self.seeds_only:
            raise ConfigError("rerun_top_k needs a search: a seeds_only sweep already repeats "
                              "its one configuration over seeds")
        if self.search_recipe:
            from trainables.recipe_space import check_recipe

            if self.seeds_only:
                raise ConfigError("search_recipe needs a search: a seeds_only sweep varies "
                                  "only the seed")
            try:
                check_recipe(self.search_recipe)
            except ValueError as error:
                raise ConfigError(str(error)) from None
        if not self.cpus_per_trial > 0:
            raise ConfigError(f"cpus_per_trial must be > 0, got {self.cpus_per_trial}")

    def check(self) -> SweepSpec:
        """Fail before any cluster work: the base must be a valid TrialConfig, and so must every
        corner of the search space over it (each searched value at either end of its range)."""
        config = self.config
        if not self.seeds_only:
            from trainables.defenses import defense_class
            from trainables.recipe_space import with_recipe

            check_search_space(self.base, with_recipe(defense_class(config.defense).search_space,
                                                      self.search_recipe),
                               f"defense {config.defense!r}")
        return self

    @property
    def config(self) -> TrialConfig:
        from trainables.config import TrialConfig

        return TrialConfig.from_dict(self.base)

    def resolved(self) -> SweepSpec:
        """Defaults spelled out: a flag's value, else the ecosystems' own variables
        (``$MLFLOW_TRACKING_URI``, ``$OPTUNA_STORAGE``), else stores under ``home()``."""
        from dashboards.runs import artifact_location_for, default_tracking_uri

        root = home()
        tracking_uri = self.tracking_uri or default_tracking_uri(root)
        return dataclasses.replace(
            self,
            storage_path=self.storage_path or str(root / "ray_results"),
            tracking_uri=tracking_uri,
            experiment=self.experiment or "sweeps",
            artifact_location=self.artifact_location or artifact_location_for(tracking_uri,
                                                                              root),
            optuna_storage=self.optuna_storage or default_optuna_storage(root),
        )


# -------------------------------------------------------------------- search spaces
class _Corner:
    """A stand-in for an Optuna trial that answers each suggestion with one end of its range or
    one of its choices, as ``path`` says (index per decision; missing ones take the first), so
    a define-by-run space can be walked through every corner."""

    def __init__(self, path: list[int]) -> None:
        self.path = path
        self.arities: list[int] = []
        self.params: dict[str, Any] = {}
        self.ranges: dict[str, str] = {}

    def _pick(self, name: str, options: tuple, described: str) -> Any:
        if name in self.params:  # Optuna answers a repeated name with its first value
            return self.params[name]
        options = tuple(dict.fromkeys(options))
        index = len(self.arities)
        self.arities.append(len(options))
        self.params[name] = options[self.path[index] if index < len(self.path) else 0]
        self.ranges[name] = described
        return self.params[name]

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        top = high if step is None else low + math.floor((high - low) / step) * step
        return self._pick(name, (low, top), f"[{low:g}, {high:g}]")

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int:
        return self._pick(name, (low, low + (high - low) // step * step), f"[{low}, {high}]")

    def suggest_categorical(self, name: str, choices) -> Any:
        return self._pick(name, tuple(choices), f"one of {list(choices)}")

    def next_path(self) -> list[int] | None:
        """The next corner after this one (the last decision with choices left advances, the
        ones after it start over), or None when every corner has been visited."""
        path = [self.path[i] if i < len(self.path) else 0 for i in range(len(self.arities))]
        for index in reversed(range(len(path))):
            if path[index] + 1 < self.arities[index]:
                return path[:index] + [path[index] + 1]
        return None


MAX_CORNERS = 4096  # define-by-run spaces here have a handful of knobs: far fewer corners


def check_search_space(base: dict[str, Any], space: Callable[[Any], dict[str, Any]],
                       owner: str = "search space") -> int:
    """Check that every corner of the define-by-run ``space`` (TrialConfig overrides, as a
    defense's ``search_space`` returns them) over ``base`` is a valid TrialConfig: a space that
    reaches out of a field's or a knob's allowed range (``epsilon`` up to 5, a negative β) is
    refused here, before any trial runs. Returns the number of corners checked."""
    from trainables.config import ConfigError, TrialConfig, merge

    path: list[int] | None = []
    corners = 0
    while path is not None and corners < MAX_CORNERS:
        trial = _Corner(path)
        overrides = space(trial)
        corners += 1
        try:
            TrialConfig.from_dict(merge(base, overrides))
        except ConfigError as error:
            searched = ", ".join(f"{name}={value!r} (searched in {trial.ranges[name]})"
                                 for name, value in trial.params.items())
            raise ConfigError(f"the search space of {owner} leaves the allowed values at "
                              f"{searched or 'its only point'}: {error}") from None
        path = trial.next_path()
    return corners
