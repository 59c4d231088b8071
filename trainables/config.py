"""TrialConfig: the typed, validated description of one training run.

Built from a dict (``TrialConfig.from_dict``) or a YAML file (``from_yaml``), with dotted
``key=value`` overrides (``apply_overrides``). Errors name the field and what it allows.
``to_dict`` gives back a plain, JSON-able dict that ``from_dict`` accepts, with every default
resolved (the dataset's threat model, the defense's knobs), so a run is reproducible from it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # torch loads when a config is checked, not when its fields are read
    from trainables.data import DatasetInfo
    from trainables.defenses import AttackSettings

SCHEDULES = ("piecewise", "cosine", "constant", "cyclic")  # trainables.schedules
OPTIMIZERS = ("sgd", "adamw")  # trainables.optimizers
AUGMENTATIONS = ("none", "crop_flip", "crop", "flip")  # trainables.data
BATCHNORM_MODES = ("eval", "train")
# The longest attack step, as a multiple of the radius (see the threat-model fields' comment).
MAX_STEP_RATIO = 2.5
DEVICES = ("auto", "cpu", "cuda")
NORMS = ("linf", "l2")


class ConfigError(ValueError):
    """A config field is unknown, mistyped or out of range."""


@dataclass(frozen=True)
class TrialConfig:
    dataset: str = "mnist"  # mnist, fashion_mnist, cifar10, cifar100, svhn
    model: str = "mlp"  # a registered model (mlp, small_cnn, resnet18, wrn-D-W, ...)
    model_params: dict[str, Any] = field(default_factory=dict)  # the model's own arguments
    defense: str = "pgd_at"  # a registered defense
    defense_params: dict[str, Any] = field(default_factory=dict)  # the defense's knobs
    # The threat model. Images lie in [0, 1]^d, so an L∞ radius above 1, or an L2 radius above
    # √d (the cube's diameter, d = channels·height·width), already holds every image. A step may
    # reach 2.5·ε: Fast AT steps 1.25·ε, a one-step PGD at the 2.5·ε/steps rule steps 2.5·ε,
    # and a longer step crosses the whole ball (2ε wide), so projection alone decides the point.
    epsilon: float | None = None  # attack radius, linf (0, 1], l2 (0, √d] (None: the dataset's)
    norm: str = "linf"  # threat model: linf or l2
    attack_steps: int = 10  # training attack steps (>= 0)
    attack_step_size: float | None = None  # in (0, 2.5·epsilon] (None: the dataset's)
    attack_random_start: str | None = None  # uniform, gaussian or none (None: the defense's)
    epochs: int = 1  # >= 1
    batch_size: int = 128  # >= 1
    optimizer: str = "sgd"  # sgd or adamw
    lr: float = 0.1  # initial (cyclic: peak) learning rate, > 0
    momentum: float = 0.9  # SGD, in [0, 1)
    nesterov: bool = False  # SGD, needs momentum > 0
    adam_beta2: float = 0.999  # AdamW's second-moment decay, in (0, 1)
    weight_decay: float = 5e-4  # >= 0 (SGD: L2 in the gradient; AdamW: decoupled)
    grad_clip: float | None = None  # clip the gradients' global L2 norm to this, > 0
    schedule: str = "piecewise"  # learning rate: piecewise, cosine, constant or cyclic
    lr_milestones: list[int] = field(default_factory=list)  # epochs where lr is multiplied
    lr_gamma: float = 0.1  # the factor at each milestone, in (0, 1]
    cyclic_peak: float = 0.5  # cyclic: where lr peaks, a fraction of the run in (0, 1)
    warmup_epochs: float = 0.0  # linear warm-up of any schedule, in [0, epochs] (0: none)
    # weight averaging (at most one): an EMA updated every step, or SWA every epoch
    ema_decay: float = 0.0  # EMA of the weights, in [0, 1) (0: off; 0.999 is usual)
    ema_warmup: bool = True  # the n-th EMA update decays by min(ema_decay, (1+n)/(10+n))
    swa_start: int | None = None  # SWA: average at the end of each epoch after this many
    average_for_eval: bool = True  # validate, pick the best and publish the averaged weights
    patience: int = 0  # stop when val robust accuracy has not risen for n epochs (0: never)
    augmentation: str | None = None  # none, crop_flip, crop or flip (None: the dataset's)
    label_smoothing: float = 0.0  # on the label cross-entropy terms, in [0, 1)
    attack_bn_mode: str = "eval"  # BatchNorm during the training attack: eval or train
    # Split sizes are checked against the dataset's own (its registered train and test sizes,
    # known without loading it): a subset larger than its split is refused, not silently cut.
    train_subset: int | None = None  # first n training images, in [1, train size - val_size]
    val_size: int | None = None  # training images held out for validation, in [0, train size)
    val_subset: int | None = None  # first n validation images only, in [1, val_size]
    test_subset: int | None = None  # first n test images only, in [1, test size]
    split_seed: int = 0  # seed of the train / validation split
    data_root: str | None = None  # dataset directory (default: the data cache)
    eval_steps: int = 20  # PGD-k on the validation and test splits
    eval_loss: str = "ce"  # the validation PGD's loss: ce or cw (sweeps: cw)
    eval_keep: str = "last"  # the validation PGD's point: last iterate or best (sweeps: best)
    eval_step_size: float | None = None  # in (0, 2.5·epsilon] (None: attack_step_size)
    eval_every: int = 1  # validate every n epochs
    margin_every: int = 0  # effective margin (EMR Eq. 3) on validation every n epochs; 0: never
    margin_subset: int = 500  # validation images the margin is measured on
    seed: int = 0
    device: str = "auto"  # auto, cpu or cuda
    bf16: bool = False  # bfloat16 autocast on CUDA
    fp16: bool = False  # float16 autocast with a gradient scaler on CUDA
    channels_last: bool = False  # NHWC memory format for the model and its inputs
    compile: bool = False  # torch.compile the model for training and validation
    num_threads: int | None = None  # torch CPU threads
    output_dir: str = "runs"  # where runs keep their checkpoints

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialConfig:
        if not isinstance(values, dict):
            raise ConfigError(f"a trial config is a mapping, got {type(values).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; allowed: {sorted(known)}")
        checked = {name: _coerce(name, known[name].type, value) for name, value in values.items()}
        config = cls(**checked)
        config.validate()
        return config

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> TrialConfig:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from error
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a trial config is a mapping of fields, got "
                              f"{type(values).__name__}")
        try:
            return cls.from_dict(apply_overrides(values, overrides or []))
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrialConfig:
        return TrialConfig.from_dict({**self.to_dict(), **changes})

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        from trainables import data, models
        from trainables.defenses import list_defenses

        _choice("dataset", self.dataset, data.list_datasets())
        try:
            models.check_model(self.model, self.model_params)
        except ValueError as error:
            message = str(error)
            raise ConfigError(message if message.startswith("model") else
                              f"model {self.model!r}: {message}") from None
        _choice("defense", self.defense, list_defenses())
        _choice("norm", self.norm, NORMS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("attack_bn_mode", self.attack_bn_mode, BATCHNORM_MODES)
        _choice("eval_loss", self.eval_loss, ("ce", "cw"))
        _choice("eval_keep", self.eval_keep, ("last", "best"))
        if self.augmentation is not None:
            _choice("augmentation", self.augmentation, AUGMENTATIONS)
        _choice("device", self.device, DEVICES)
        for name in ("epochs", "batch_size", "eval_every"):
            _at_least(name, getattr(self, name), 1)
        for name in ("attack_steps", "eval_steps", "split_seed", "seed", "margin_every",
                     "patience"):
            _at_least(name, getattr(self, name), 0)
        for name in ("train_subset", "val_subset", "test_subset", "num_threads", "margin_subset"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 1)
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must lie in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"lr_gamma must lie in (0, 1], got {self.lr_gamma}")
        if any(m < 1 for m in self.lr_milestones) or sorted(self.lr_milestones) != list(
                self.lr_milestones):
            raise ConfigError(f"lr_milestones must be increasing epochs >= 1, "
                              f"got {self.lr_milestones}")
        self._validate_recipe()
        if self.attack_random_start not in (None, "uniform", "gaussian", "none"):
            raise ConfigError("attack_random_start must be one of uniform, gaussian, none")
        self._validate_threat_model()
        self._validate_splits()
        try:
            self.build_defense()
        except ValueError as error:
            raise ConfigError(f"defense_params: {error}") from error

    def _validate_recipe(self) -> None:
        """Optimiser, schedule, weight averaging and precision options, each in its range and
        none contradicting another."""
        ranges = (("adam_beta2", 0, 1, False), ("cyclic_peak", 0, 1, False),
                  ("ema_decay", 0, 1, True), ("label_smoothing", 0, 1, True))
        for name, low, high, closed in ranges:
            value = getattr(self, name)
            if not (low <= value < high if closed else low < value < high):
                raise ConfigError(f"{name} must lie in {'[' if closed else '('}{low}, {high}), "
                                  f"got {value}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"warmup_epochs must lie in [0, epochs={self.epochs}], "
                              f"got {self.warmup_epochs}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"grad_clip must be > 0 (or null: no clipping), got "
                              f"{self.grad_clip}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ConfigError("nesterov needs optimizer sgd with momentum > 0, got "
                              f"optimizer {self.optimizer}, momentum {self.momentum}")
        if self.swa_start is not None and not 0 <= self.swa_start < self.epochs:
            raise ConfigError(f"swa_start must lie in [0, epochs - 1 = {self.epochs - 1}] "
                              f"(epochs trained before averaging starts), got {self.swa_start}")
        if self.swa_start is not None and self.ema_decay > 0:
            raise ConfigError("ema_decay and swa_start exclude each other: average the weights "
                              "one way")
        if self.bf16 and self.fp16:
            raise ConfigError("bf16 and fp16 exclude each other: pick one autocast precision")
        if self.label_smoothing > 0:
            from trainables.defenses import defense_class

            if not defense_class(self.defense).smooths_labels(self.defense_params):
                raise ConfigError(
                    f"label_smoothing applies to defenses whose label cross-entropy terms "
                    f"take it (standard, pgd_at, trades, alp, fast_at, free_at and HE/EMR/IGR "
                    f"on them); {self.defense} with {self.defense_params or 'its defaults'} "
                    f"computes its own")

    @property
    def averaging(self) -> str | None:
        """The weight averaging this run keeps: "ema", "swa" or None."""
        if self.ema_decay > 0:
            return "ema"
        return "swa" if self.swa_start is not None else None

    def _validate_threat_model(self) -> None:
        """ε inside the image cube's own extent; steps in (0, MAX_STEP_RATIO·ε]."""
        info = self.dataset_info
        if self.epsilon is not None:
            dims = info.channels * info.image_size ** 2
            high, why = ((1.0, "images lie in [0, 1]") if self.norm == "linf" else
                         (math.sqrt(dims), f"√d = √{dims}, the L2 diameter of {self.dataset}'s "
                                           f"[0, 1]^d"))
            if not 0 < self.epsilon <= high:
                raise ConfigError(f"epsilon must lie in (0, {high:g}] for norm={self.norm} "
                                  f"({why}), got {self.epsilon:g}")
        epsilon = self.resolved_epsilon
        bound = MAX_STEP_RATIO * epsilon
        for name, value, default in (
                ("attack_step_size", self.resolved_step_size,
                 "the dataset's default" if self.attack_step_size is None else None),
                ("eval_step_size", self.resolved_eval_step_size,
                 "attack_step_size" if self.eval_step_size is None else None)):
            if not 0 < value <= bound:
                given = f"{value:g}" if default is None else f"{value:g} ({default}); set it"
                raise ConfigError(f"{name} must lie in (0, {MAX_STEP_RATIO:g}·epsilon] = "
                                  f"(0, {bound:g}] for epsilon={epsilon:g} (a longer step "
                                  f"crosses the whole ε-ball), got {given}")

    def _validate_splits(self) -> None:
        """Split sizes within the dataset's own, known without loading it."""
        info = self.dataset_info
        if self.val_size is not None and not 0 <= self.val_size < info.train_size:
            raise ConfigError(f"val_size must lie in [0, {info.train_size - 1}] for "
                              f"{self.dataset} ({info.train_size} training images, one at "
                              f"least kept for training), got {self.val_size}")
        val = info.default_val_size if self.val_size is None else self.val_size
        limits = {"train_subset": (info.train_size - val, f"training images remain after "
                                                          f"val_size={val}"),
                  "val_subset": (val, f"validation images with val_size={val}"),
                  "test_subset": (info.test_size, "test images")}
        for name, (limit, what) in limits.items():
            value = getattr(self, name)
            if value is not None and value > limit:
                raise ConfigError(f"{name} must lie in [1, {limit}] for {self.dataset} "
                                  f"({limit} {what}), got {value}")

    # ---------------------------------------------------------------- resolved values
    @property
    def dataset_info(self) -> DatasetInfo:
        from trainables.data import dataset_info

        return dataset_info(self.dataset)

    @property
    def resolved_epsilon(self) -> float:
        return self.epsilon if self.epsilon is not None else self.dataset_info.epsilon

    @property
    def resolved_step_size(self) -> float:
        if self.attack_step_size is not None:
            return self.attack_step_size
        return self.dataset_info.step_size

    @property
    def resolved_eval_step_size(self) -> float:
        return self.eval_step_size if self.eval_step_size is not None else self.resolved_step_size

    def attack_settings(self) -> AttackSettings:
        from trainables.defenses import AttackSettings

        return AttackSettings(epsilon=self.resolved_epsilon, steps=self.attack_steps,
                              step_size=self.resolved_step_size, norm=self.norm,
                              random_start=self.attack_random_start)

    def build_defense(self):
        from trainables.defenses import create_defense

        return create_defense(self.defense, attack=self.attack_settings(),
                              label_smoothing=self.label_smoothing, **self.defense_params)

    def resolved(self) -> TrialConfig:
        """The same run with every default spelled out (threat model, defense knobs)."""
        from trainables.defenses import defense_class

        knobs = defense_class(self.defense).knobs()
        defaults = {name: meta["default"] for name, meta in knobs.items()}
        return dataclasses.replace(
            self, epsilon=self.resolved_epsilon, attack_step_size=self.resolved_step_size,
            eval_step_size=self.resolved_eval_step_size,
            defense_params={**defaults, **self.defense_params})


# -------------------------------------------------------------------- helpers
def _choice(name: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}")


_SCALARS = {"int": int, "float": float, "str": str, "bool": bool}


def _coerce(name: str, annotation: str, value: Any) -> Any:
    """Check ``value`` against a field annotation such as ``float | None`` or ``list[int]``."""
    options = [part.strip() for part in str(annotation).split("|")]
    if value is None:
        if "None" in options:
            return None
        raise ConfigError(f"{name} must not be empty")
    for option in options:
        if option in _SCALARS:
            kind = _SCALARS[option]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            if kind is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
                try:
                    value = float(value)
                except ValueError:
                    pass
            if kind is float and isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value}")
            if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
                return value
        elif option.startswith("list") and isinstance(value, list | tuple):
            if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                return list(value)
        elif option.startswith("dict") and isinstance(value, dict):
            return dict(value)
    wanted = " or ".join(o for o in options if o != "None")
    raise ConfigError(f"{name} must be {wanted}, got {value!r} ({type(value).__name__})")


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``overrides``; dict fields (``defense_params``…) merge key-wise."""
    result = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = {**result[key], **value}
        else:
            result[key] = value
    return result


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings (YAML-typed values; dotted keys reach into dicts)."""
    result = dict(values)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must read key=value")
        value = yaml.safe_load(raw) if raw.strip() else None
        target = result
        *parents, leaf = key.split(".")
        for parent in parents:
            child = target.get(parent)
            target[parent] = child = dict(child) if isinstance(child, dict) else {}
            target = child
        target[leaf] = value
    return result
