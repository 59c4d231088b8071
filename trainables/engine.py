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
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attacks.margins import amr_margin_summary, effective_margin_summary
from attacks.pgd import model_mode, pgd
from trainables import data
from trainables.config import TrialConfig
from trainables.defenses.smd import SMDState, export_margins
from trainables.models import create_model

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


def learning_rate(config: TrialConfig, epoch: int) -> float:
    """Learning rate for 0-based ``epoch``: piecewise (÷ at milestones), cosine or constant."""
    if config.schedule == "piecewise":
        passed = sum(1 for milestone in config.lr_milestones if epoch >= milestone)
        return config.lr * config.lr_gamma ** passed
    if config.schedule == "cosine":
        return 0.5 * config.lr * (1 + math.cos(math.pi * epoch / config.epochs))
    return config.lr


def _autocast(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_epoch(model: nn.Module, defense, batches: Iterable, optimizer: torch.optim.Optimizer,
                state: Any = None, *, device: torch.device = CPU,
                bf16: bool = False, progress: Callable[[int, dict], None] | None = None
                ) -> tuple[dict[str, float], Any]:
    """One pass over ``batches`` of (x, y, ids).

    Returns the example-weighted mean metrics and the defense's next state (the protocol is in
    ``trainables.defenses.base``).
    """
    totals: dict[str, float] = {}
    seen, start = 0, time.perf_counter()
    for batch, (x, y, ids) in enumerate(batches):
        x, y, ids = x.to(device), y.to(device), ids.to(device)
        for _ in range(defense.replays):
            with _autocast(device, bf16):
                point = defense.perturb(model, x, y, state, ids=ids)
                with model_mode(model, "train"):
                    loss, metrics, state = defense.step(model, x, y, point, state, ids=ids)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at batch {batch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
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
             restarts: int = 1) -> dict[str, float]:
    """Clean and PGD-``steps`` (CE) accuracy on ``dataset``, in eval mode."""
    clean = robust = 0
    start = time.perf_counter()
    with model_mode(model, "eval"):
        for x, y, _ in data.iterate_batches(dataset, batch_size):
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                clean += (model(x).argmax(1) == y).sum().item()
            x_adv = pgd(model, x, y, epsilon=epsilon, steps=steps, step_size=step_size,
                        norm=norm, random_start=random_start, restarts=restarts, mode="eval")
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


class TrainingRun:
    """One configured run: data, model, optimizer, defense and its state, and the epoch count."""

    def __init__(self, config: TrialConfig) -> None:
        self.config = config.resolved()
        cfg = self.config
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        seed_everything(cfg.seed)
        self.device = resolve_device(cfg.device)
        split = dict(root=cfg.data_root, val_size=cfg.val_size, split_seed=cfg.split_seed)
        self.train_set = data.load_dataset(cfg.dataset, "train", subset=cfg.train_subset, **split)
        self.val_set = data.load_dataset(cfg.dataset, "val", subset=cfg.val_subset, **split)
        self.model = build_model(cfg).to(self.device)
        self.defense = cfg.build_defense()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr,
                                         momentum=cfg.momentum, nesterov=cfg.nesterov,
                                         weight_decay=cfg.weight_decay)
        self.defense_state = self.defense.init_state(
            num_examples=len(data.raw_data(cfg.dataset, cfg.data_root).train_labels),
            batch_size=cfg.batch_size, num_classes=cfg.dataset_info.num_classes,
            epochs=cfg.epochs)
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.epoch = 0  # epochs completed

    @property
    def finished(self) -> bool:
        return self.epoch >= self.config.epochs

    def run_epoch(self, progress: Callable[[int, dict], None] | None = None) -> dict[str, float]:
        """Train one epoch, then (every ``eval_every`` epochs and at the end) validate."""
        cfg = self.config
        lr = learning_rate(cfg, self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batches = data.iterate_batches(self.train_set, cfg.batch_size, shuffle=True,
                                       generator=self.shuffle)
        defense = self.defense.at_epoch(self.epoch, lr / cfg.lr)
        metrics, self.defense_state = train_epoch(
            self.model, defense, batches, self.optimizer, self.defense_state,
            device=self.device, bf16=cfg.bf16, progress=progress)
        self.epoch += 1
        metrics.update(epoch=self.epoch, lr=lr)
        if self.epoch % cfg.eval_every == 0 or self.finished:
            validation = self.evaluate(self.val_set)
            metrics.update({f"val_{k}": v for k, v in validation.items()})
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
        summary = effective_margin_summary(self.model, x, y)
        measure = DEFENSE_MARGINS.get(self.config.defense)
        if measure is not None:
            generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
            summary.update(measure(self.model, x, y, generator=generator))
        return summary

    def evaluate(self, dataset: data.ArrayDataset) -> dict[str, float]:
        cfg = self.config
        return evaluate(self.model, dataset, epsilon=cfg.epsilon, steps=cfg.eval_steps,
                        step_size=cfg.eval_step_size, norm=cfg.norm,
                        batch_size=max(cfg.batch_size, 256), device=self.device)

    def test(self) -> dict[str, float]:
        cfg = self.config
        test_set = data.load_dataset(cfg.dataset, "test", root=cfg.data_root,
                                     subset=cfg.test_subset, split_seed=cfg.split_seed)
        return self.evaluate(test_set)

    # ---------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizer, defense memory, RNGs.

        Training draws randomness from torch alone (attack starts, shuffling, augmentation).
        """
        state = self.defense_state
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "defense_state": state.state_dict() if hasattr(state, "state_dict") else None,
            "rng": {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state(),
                    "cuda": (torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                             else [])},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("defense_state") is not None:
            self.defense_state.load_state_dict(state["defense_state"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.shuffle.set_state(rng["shuffle"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
