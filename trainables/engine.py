"""The training engine: plain PyTorch, no Ray, no MLflow.

``train_epoch`` runs one pass of a defense over batches; ``evaluate`` measures clean and PGD
accuracy; ``TrainingRun`` ties a :class:`TrialConfig` to data, model, optimizer and defense
state, and exposes ``state_dict`` / ``load_state_dict`` so a run resumes exactly. Every
``margin_every`` epochs a run measures the effective margin on validation images, and the
defense's own margin statistics where it has some (:data:`DEFENSE_MARGINS`: AMR's average and
minimum margin); :func:`write_state_margins` puts the per-example margins a defense keeps as
state (SMD) beside a checkpoint as a histogram (:data:`MARGIN_HISTOGRAM`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attacks.margins import amr_margin_summary, effective_margin_summary
from attacks.pgd import model_mode, pgd, training_attack_mode
from trainables import data
from trainables.averaging import WeightAverage, recompute_batchnorm
from trainables.config import TrialConfig
from trainables.defenses.smd import SMDState, export_margins
from trainables.models import create_model
from trainables.optimizers import create_optimizer
from trainables.schedules import learning_rate, per_iteration

CPU = torch.device("cpu")
MARGIN_HISTOGRAM = "margin_histogram.json"  # beside a checkpoint: the state's margins (SMD)


def amr_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                generator: torch.Generator) -> dict[str, float]:
    """AMR's average and minimum margin on the first 100 of the images, each Lipschitz constant
    estimated from 20 points of the image's ball: a training-time trend at a fifth of the cost
    of the evaluation pool's estimate (100 points per ball), some seconds on a CPU."""
    return amr_margin_summary(model, x[:100], y[:100], samples=20, generator=generator)


# a defense's own margin statistics, measured beside the effective margin on the same validation
# images: f(model, x, y, generator=...) -> {name: value, "n": count}
DEFENSE_MARGINS: dict[str, Callable[..., dict[str, float]]] = {"amr": amr_margins}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: TrialConfig) -> nn.Module:
    """The config's model for its dataset, with the defense's architecture hook applied."""
    info = config.dataset_info
    model = create_model(config.model, num_classes=info.num_classes, in_channels=info.channels,
                         image_size=info.image_size, mean=info.mean, std=info.std,
                         **config.model_params)
    return config.build_defense().model_hook(model)


@dataclass
class StepOptions:
    """How ``train_epoch`` takes each optimiser step; the defaults do nothing extra.

    ``lr_at(batch)`` sets the learning rate of each iteration (per-iteration schedules);
    ``autocast`` is the autocast dtype (None: full precision) and ``scaler`` a GradScaler for
    float16 (the gradients are unscaled before clipping); ``grad_clip`` clips the global L2
    norm; ``attack_mode`` is the model mode of the inner maximisation (``eval``, or ``train``:
    BatchNorm in train mode while the attack runs); ``channels_last`` sends NHWC inputs;
    ``after_step()`` runs after every optimiser step (weight averaging)."""

    lr_at: Callable[[int], float] | None = None
    autocast: torch.dtype | None = None
    scaler: Any = None  # torch.amp.GradScaler
    grad_clip: float | None = None
    attack_mode: str = "eval"
    channels_last: bool = False
    after_step: Callable[[], None] | None = None


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _optimizer_step(model: nn.Module, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                    options: StepOptions) -> None:
    optimizer.zero_grad(set_to_none=True)
    scaler = options.scaler
    if scaler is None:
        loss.backward()
        if options.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
        optimizer.step()
        return
    scaler.scale(loss).backward()
    if options.grad_clip is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
    scaler.step(optimizer)  # skipped when a gradient is not finite
    scaler.update()


def train_epoch(model: nn.Module, defense, batches: Iterable, optimizer: torch.optim.Optimizer,
                state: Any = None, *, device: torch.device = CPU,
                bf16: bool = False, progress: Callable[[int, dict], None] | None = None,
                options: StepOptions | None = None) -> tuple[dict[str, float], Any]:
    """One pass over ``batches`` of (x, y, ids).

    Returns the example-weighted mean metrics and the defense's next state (the protocol is in
    ``trainables.defenses.base``). ``bf16`` is bfloat16 autocast on CUDA; ``options`` the
    rest of the step's recipe (:class:`StepOptions`).
    """
    options = options or StepOptions(
        autocast=torch.bfloat16 if bf16 and device.type == "cuda" else None)
    totals: dict[str, float] = {}
    seen, start = 0, time.perf_counter()
    for batch, (x, y, ids) in enumerate(batches):
        x, y, ids = x.to(device), y.to(device), ids.to(device)
        if options.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if options.lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = options.lr_at(batch)
        for _ in range(defense.replays):
            with _autocast(device, options.autocast):
                with training_attack_mode(options.attack_mode):
                    point = defense.perturb(model, x, y, state, ids=ids)
                with model_mode(model, "train"):
                    loss, metrics, state = defense.step(model, x, y, point, state, ids=ids)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at batch {batch}")
            _optimizer_step(model, loss, optimizer, options)
            if options.after_step is not None:
                options.after_step()
            state = defense.after_backward(state, point)
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value * len(y)
        seen += len(y)
        if progress is not None:
            progress(len(y), metrics)
    seconds = time.perf_counter() - start
    passes = max(seen * defense.replays, 1)
    result = {f"train_{k}" if not k.startswith("train_") else k: v / passes
              for k, v in totals.items()}
    result.update(train_seconds=seconds, images_per_second=seen / max(seconds, 1e-9))
    return result, state


def evaluate(model: nn.Module, dataset: data.ArrayDataset, *, epsilon: float, steps: int,
             step_size: float, norm: str = "linf", batch_size: int = 256,
             device: torch.device = CPU, random_start: str = "none",
             restarts: int = 1, loss: str = "ce", keep: str = "last",
             generator: torch.Generator | None = None) -> dict[str, float]:
    """Clean and PGD-``steps`` accuracy on ``dataset``, in eval mode: ``loss`` ce or cw, the
    ``last`` iterate or each example's ``best`` (a misclassified iterate if any), random starts
    drawn from ``generator``."""
    clean = robust = 0
    start = time.perf_counter()
    with model_mode(model, "eval"):
        for x, y, _ in data.iterate_batches(dataset, batch_size):
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                clean += (model(x).argmax(1) == y).sum().item()
            x_adv = pgd(model, x, y, epsilon=epsilon, steps=steps, step_size=step_size,
                        norm=norm, random_start=random_start, restarts=restarts, mode="eval",
                        loss=loss, keep=keep, generator=generator)
            with torch.no_grad():
                robust += (model(x_adv).argmax(1) == y).sum().item()
    n = len(dataset)
    return {"clean_accuracy": clean / n, "robust_accuracy": robust / n, "n": n,
            "eval_seconds": time.perf_counter() - start}


def state_margins(state: Any, bins: int = 50) -> dict[str, Any] | None:
    """The per-example margins a defense keeps as its state (SMD's 𝓔(i) of every example it has
    trained on, as input-space distances) as a JSON-ready histogram: ``counts``, ``edges``,
    ``n`` (examples), ``mean``, ``median``, ``min``, ``max``; None for a state without margins
    (every other defense, or SMD before its first step)."""
    if not isinstance(state, SMDState) or state.unit is None or not bool(state.visited.any()):
        return None
    export = export_margins(state, bins)
    margins = export.margins
    return {"counts": export.counts.tolist(), "edges": export.edges.tolist(),
            "n": len(margins), "mean": margins.mean().item(),
            "median": margins.median().item(), "min": margins.min().item(),
            "max": margins.max().item()}


def write_state_margins(state: Any, directory: str | os.PathLike) -> Path | None:
    """:func:`state_margins` as ``directory/``:data:`MARGIN_HISTOGRAM` (beside a checkpoint, so
    that it is published with it); None, writing nothing, for a state without margins."""
    document = state_margins(state)
    if document is None:
        return None
    path = Path(directory) / MARGIN_HISTOGRAM
    path.write_text(json.dumps(document))
    return path


@dataclass
class EarlyStopping:
    """Stop a run when validation robust accuracy has not risen for ``patience`` epochs (Rice
    et al. 2020, Sec. 3: early stopping against robust overfitting); 0 never stops."""

    patience: int
    best: float = -math.inf
    best_epoch: int = 0
    stopped_at: int | None = None

    def observe(self, epoch: int, value: float) -> bool:
        """Record the validation value of ``epoch`` (1-based); True once the run should stop."""
        if self.stopped_at is not None:
            return True
        if value > self.best:
            self.best, self.best_epoch = value, epoch
        elif self.patience and epoch - self.best_epoch >= self.patience:
            self.stopped_at = epoch
        return self.stopped_at is not None


def autocast_dtype(config: TrialConfig, device: torch.device) -> torch.dtype | None:
    """bf16 or fp16 autocast on CUDA; full precision elsewhere."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if config.bf16 else torch.float16 if config.fp16 else None


class TrainingRun:
    """One configured run: data, model, optimizer, defense and its state, the weight average,
    early stopping, and the epoch count."""

    def __init__(self, config: TrialConfig) -> None:
        self.config = config.resolved()
        cfg = self.config
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        seed_everything(cfg.seed)
        self.device = resolve_device(cfg.device)
        split = dict(root=cfg.data_root, val_size=cfg.val_size, split_seed=cfg.split_seed)
        self.train_set = data.load_dataset(cfg.dataset, "train", subset=cfg.train_subset,
                                           augment=cfg.augmentation, **split)
        self.val_set = data.load_dataset(cfg.dataset, "val", subset=cfg.val_subset, **split)
        self.model = build_model(cfg).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # what trains and validates: the model, or its compiled form (same parameters)
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.defense = cfg.build_defense()
        self.optimizer = create_optimizer(cfg, self.model.parameters())
        self.scaler = (torch.amp.GradScaler("cuda")
                       if cfg.fp16 and self.device.type == "cuda" else None)
        self.average = (WeightAverage(self.model, kind=cfg.averaging, decay=cfg.ema_decay,
                                      warmup=cfg.ema_warmup) if cfg.averaging else None)
        self.stopping = EarlyStopping(cfg.patience)
        self.defense_state = self.defense.init_state(
            num_examples=len(data.raw_data(cfg.dataset, cfg.data_root).train_labels),
            batch_size=cfg.batch_size, num_classes=cfg.dataset_info.num_classes,
            epochs=cfg.epochs)
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.epoch = 0  # epochs completed

    @property
    def finished(self) -> bool:
        return self.epoch >= self.config.epochs or self.stopping.stopped_at is not None

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.train_set) / self.config.batch_size)

    @property
    def publishes_average(self) -> bool:
        """Whether the average stands for the run (asked, and folded in at least once)."""
        return (self.average is not None and self.config.average_for_eval
                and self.average.updates > 0)

    @property
    def published_model(self) -> nn.Module:
        """The weights validated, chosen as best and published: the average when asked (its
        BatchNorm statistics recomputed first when stale), else the trained model."""
        if not self.publishes_average:
            return self.model
        if self.average.stale_batchnorm:
            recompute_batchnorm(self.average.module,
                                data.iterate_batches(self.train_set, self.config.batch_size),
                                self.device)
            self.average.stale_batchnorm = False
        return self.average.module

    def step_options(self) -> StepOptions:
        cfg = self.config
        batches = self.batches_per_epoch
        epoch = self.epoch
        average = self.average if self.average is not None and self.average.kind == "ema" \
            else None
        return StepOptions(
            lr_at=((lambda b: learning_rate(cfg, epoch + b / batches, batches))
                   if per_iteration(cfg) else None),
            autocast=autocast_dtype(cfg, self.device), scaler=self.scaler,
            grad_clip=cfg.grad_clip, attack_mode=cfg.attack_bn_mode,
            channels_last=cfg.channels_last,
            after_step=(lambda: average.update(self.model)) if average is not None else None)

    def run_epoch(self, progress: Callable[[int, dict], None] | None = None) -> dict[str, float]:
        """Train one epoch, then (every ``eval_every`` epochs and at the end) validate."""
        cfg = self.config
        batches = self.batches_per_epoch
        lr = learning_rate(cfg, self.epoch + 0.5, batches)  # the epoch's middle
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.epoch, batches)
        shuffled = data.iterate_batches(self.train_set, cfg.batch_size, shuffle=True,
                                        generator=self.shuffle)
        defense = self.defense.at_epoch(self.epoch, lr / cfg.lr)
        metrics, self.defense_state = train_epoch(
            self.forward, defense, shuffled, self.optimizer, self.defense_state,
            device=self.device, progress=progress, options=self.step_options())
        self.epoch += 1
        if self.average is not None and self.average.kind == "swa" \
                and self.epoch > cfg.swa_start:
            self.average.update(self.model)
        metrics.update(epoch=self.epoch, lr=lr)
        if self.average is not None:
            metrics["averaged_updates"] = self.average.updates
        if self.epoch % cfg.eval_every == 0 or self.finished:
            validation = self.evaluate(self.val_set)
            metrics.update({f"val_{k}": v for k, v in validation.items()})
            if self.stopping.observe(self.epoch, validation["robust_accuracy"]):
                metrics["stopped_early"] = 1
        if cfg.margin_every and (self.epoch % cfg.margin_every == 0 or self.finished):
            metrics.update({f"val_{k}": v for k, v in self.margins().items() if k != "n"})
        return metrics

    def margins(self) -> dict[str, float]:
        """Effective margin (EMR Eq. 3) over the first ``margin_subset`` validation images, and
        the defense's own statistics (:data:`DEFENSE_MARGINS`) on them, drawing any random
        points from a generator of their own (training's random stream is left alone)."""
        x, y = self.val_set.tensors()
        n = min(self.config.margin_subset, len(y))
        x, y = x[:n].to(self.device), y[:n].to(self.device)
        model = self.published_model
        summary = effective_margin_summary(model, x, y)
        measure = DEFENSE_MARGINS.get(self.config.defense)
        if measure is not None:
            generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
            summary.update(measure(model, x, y, generator=generator))
        return summary

    def evaluate(self, dataset: data.ArrayDataset) -> dict[str, float]:
        cfg = self.config
        model = self.published_model if self.publishes_average else self.forward
        # the best iterate starts at random, from a stream of its own (training's is untouched)
        start = "uniform" if cfg.eval_keep == "best" else "none"
        generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        return evaluate(model, dataset, epsilon=cfg.epsilon, steps=cfg.eval_steps,
                        step_size=cfg.eval_step_size, norm=cfg.norm,
                        batch_size=max(cfg.batch_size, 256), device=self.device,
                        loss=cfg.eval_loss, keep=cfg.eval_keep, random_start=start,
                        generator=generator)

    def test(self) -> dict[str, float]:
        cfg = self.config
        test_set = data.load_dataset(cfg.dataset, "test", root=cfg.data_root,
                                     subset=cfg.test_subset, split_seed=cfg.split_seed)
        return self.evaluate(test_set)

    # ---------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizer, defense memory, weight
        average, early stopping, gradient scaler, RNGs. When the published weights are the
        average, the trained ones travel as ``raw_model`` (a checkpoint's weights file holds
        the published ones).

        Training draws randomness from torch alone (attack starts, shuffling, augmentation).
        """
        state = self.defense_state
        saved = {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "defense_state": state.state_dict() if hasattr(state, "state_dict") else None,
            "rng": {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state(),
                    "cuda": (torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                             else [])},
        }
        if self.average is not None:
            saved["average"] = self.average.state_dict()
        if self.publishes_average:
            saved["raw_model"] = {k: v.detach().cpu().clone()
                                  for k, v in self.model.state_dict().items()}
        if self.config.patience:
            saved["stopping"] = dataclasses.asdict(self.stopping)
        if self.scaler is not None:
            saved["scaler"] = self.scaler.state_dict()
        return saved

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.model.load_state_dict(state.get("raw_model") or state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("defense_state") is not None:
            self.defense_state.load_state_dict(state["defense_state"])
        if self.average is not None and state.get("average") is not None:
            self.average.load_state_dict(state["average"], self.model)
        if state.get("stopping") is not None:
            self.stopping = EarlyStopping(**state["stopping"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.shuffle.set_state(rng["shuffle"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
