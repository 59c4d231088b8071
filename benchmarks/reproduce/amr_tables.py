"""Reproduce AMR (Wu & Yu, average margin regularizer) Tables 1–2 on MNIST.

Paper: Table 1 compares standard training (Std), Lipschitz constant regularisation (LCR) and AMR
on MNIST-MLP (one hidden layer of 1024 ReLU units) and MNIST-CNN (the Carlini–Wagner network,
``small_cnn``): clean accuracy, robust accuracy under L2 PGD at ε ∈ {0.5, 1, 1.5, 2} and the
average margin. Table 2 compares Std, DD, Adv, MMR and AMR on LeNet / LeNetSmall. This script
trains the Std and AMR arms of Table 1's two MNIST architectures; Table 2's MNIST rows (LeNet,
LeNetSmall, DD, Adv, MMR) and Table 1's LCR rows are printed as the paper's reference only (no
LeNet is registered, and the other methods are not defenses of this project).

Protocol (Appendix F, kept): SGD lr 0.01, momentum 0.9, Nesterov, batch 128, no weight decay,
constant learning rate, the same for Std and AMR; AMR λ = 0.1, β = 1e-3, τ = 5 (MLP) / 10 (CNN)
— the ``amr_mnist_mlp`` / ``amr_mnist_cnn`` presets. Evaluation: L2 PGD (CE loss, 1000 steps,
step 0.01, one run from a uniform start in the ball) on MNIST test images; the average margin is
the Theorem 3 lower bound (r = 5, Lipschitz constant as the largest gradient norm over sampled
points of the ball) averaged over test points, with the minimum (signed) margin beside it.
Radii are attacked in increasing order and a point broken at a smaller ε counts as broken at the
larger ones (its adversarial example lies in the larger ball too), so each robust accuracy is at
most what an independent attack at that ε would give.

Scale (default): 6 of 200 epochs for the MLP and 3 of 200 for the CNN, on 59,900 of the 60,000
training images (100 held out for the training run's own monitoring); PGD on the first 500 (MLP)
/ 100 (CNN) of the 10,000 test images, at the paper's 1000 steps; margin bound on the same points
with 64 of the paper's 1024×50 ball samples per point. ``--help`` lists the knobs. Measured
single-thread costs: an epoch takes ≈ 5 s (MLP Std), 26 s (MLP AMR: the 784×784 Gram matrix of
the orthogonality penalty), 51 s (CNN Std) and 52 s (CNN AMR); one PGD step on 100 points ≈ 6 ms
(MLP) and 56 ms (CNN); one ball sample of the margin bound ≈ 0.25 ms (MLP) and 5.3 ms (CNN) per
point. The default run is estimated at ≈ 20 minutes on one idle core.

Differences from the paper besides scale: the project's models standardise their input with the
MNIST mean / std (0.1307 / 0.3081) as their first operation, so the orthogonality penalty keeps
the layers, not the input-to-feature map, near 1-Lipschitz (the map is up to 1/0.3081 ≈ 3.2
times steeper than in a model fed raw pixels); the CNN keeps the Carlini–Wagner dropout of 0.5
between its two 200-unit layers (the paper mentions dropout for CIFAR only). The paper's average
margin is over 500 points drawn from the training and test sets; here it is over the first test
points. Fewer ball samples give a smaller Lipschitz estimate, hence a larger margin bound, for
every arm alike.

Claims (decided on point estimates; Wilson 95% intervals printed): for each architecture,
(a) AMR has a larger average margin than standard training; (b) AMR has a higher robust accuracy
than standard training at ε = 1.5 and at ε = 2.

Command: ``.venv/bin/python benchmarks/reproduce/amr_tables.py --threads 1``
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
from common import (
    Claim,
    finish,
    log,
    markdown_table,
    parser,
    percent,
    setup,
    test_points,
    train_arm,
)
from torch import nn

from attacks.evaluate import clean_flags, run_attack, summary
from attacks.margins import amr_margin_summary
from attacks.suite import create_attack
from trainables.config import TrialConfig
from trainables.defenses import preset

PAPER = "AMR Tables 1-2"
DATASET = "mnist"
RADII = (0.5, 1.0, 1.5, 2.0)
LARGE_RADII = (1.5, 2.0)
STEP_SIZE = 0.01
MARGIN_RADIUS = 5.0
PAPER_EPOCHS = 200
PAPER_STEPS = 1000
PAPER_MARGIN_SAMPLES = 1024 * 50
PAPER_MARGIN_POINTS = 500
MNIST_TRAIN, MNIST_TEST = 60_000, 10_000
METHODS = {"standard": "Std", "amr": "AMR"}


@dataclass(frozen=True)
class Architecture:
    """One of Table 1's MNIST models and the AMR preset that configures it."""

    key: str
    label: str
    preset: str


ARCHITECTURES = (Architecture("mlp", "MLP (1×1024)", "amr_mnist_mlp"),
                 Architecture("cnn", "CNN (C&W, small_cnn)", "amr_mnist_cnn"))

# Table 1, MNIST rows: clean, ε = 0.5, 1.0, 1.5, 2.0 (percent) and the average margin.
PAPER_TABLE1: dict[tuple[str, str], tuple[float, ...]] = {
    ("mlp", "standard"): (98.24, 89.26, 49.23, 15.78, 5.06, 0.80),
    ("mlp", "amr"): (96.01, 91.18, 81.01, 62.93, 38.44, 1.41),
    ("cnn", "standard"): (99.14, 95.95, 90.48, 88.72, 87.52, 1.01),
    ("cnn", "amr"): (99.25, 97.90, 97.60, 97.51, 97.33, 1.40),
}
# Rows of the paper's MNIST tables that are not reproduced here (shown for reference).
PAPER_NOT_REPRODUCED: tuple[tuple[str, str, str, tuple[float, ...]], ...] = (
    ("Table 1", "MLP", "LCR", (95.99, 91.12, 80.62, 60.56, 34.07, 1.36)),
    ("Table 1", "CNN", "LCR", (99.29, 97.21, 87.83, 58.30, 26.96, 1.34)),
    ("Table 2", "LeNet", "Std", (98.98, 95.75, 80.59, 44.36, 22.64)),
    ("Table 2", "LeNet", "DD", (99.34, 97.64, 92.09, 83.53, 79.35)),
    ("Table 2", "LeNet", "Adv", (99.48, 97.45, 91.99, 88.88, 87.51)),
    ("Table 2", "LeNet", "AMR", (99.01, 96.80, 94.03, 93.61, 93.12)),
    ("Table 2", "LeNetSmall", "MMR", (97.43, 89.90, 58.86, 23.95, 6.80)),
    ("Table 2", "LeNetSmall", "AMR", (97.83, 91.94, 73.70, 32.56, 8.79)),
)


@dataclass(frozen=True)
class Scale:
    """How far training and evaluation are shrunk relative to the paper."""

    train_images: int
    monitor_images: int  # held out of training; the training run validates / tests on this many
    monitor_steps: int  # PGD steps of that monitoring (the preset's 100 in the full run)
    epochs: dict[str, int]
    points: dict[str, int]  # evaluated test points per architecture
    margin_points: int  # at most this many of those points enter the margin bound
    margin_samples: int
    pgd_steps: int


FULL = Scale(train_images=59_900, monitor_images=100, monitor_steps=100,
             epochs={"mlp": 6, "cnn": 3}, points={"mlp": 500, "cnn": 100},
             margin_points=500, margin_samples=64, pgd_steps=PAPER_STEPS)
SMOKE = Scale(train_images=512, monitor_images=32, monitor_steps=2,
              epochs={"mlp": 1, "cnn": 1}, points={"mlp": 24, "cnn": 16},
              margin_points=8, margin_samples=4, pgd_steps=5)


# --------------------------------------------------------------------------- configuration
def arm_config(architecture: Architecture, method: str, scale: Scale) -> TrialConfig:
    """The preset's Appendix F setting with ``method`` as the defense, shrunk to ``scale``."""
    values = preset("amr", architecture.preset)
    if method != "amr":
        values.pop("defense_params")
    held_out = scale.monitor_images
    subset = scale.train_images if scale.train_images < MNIST_TRAIN - held_out else None
    epochs = scale.epochs[architecture.key]
    return TrialConfig.from_dict({
        **values, "defense": method, "epochs": epochs, "train_subset": subset,
        "val_size": held_out, "test_subset": held_out, "eval_steps": scale.monitor_steps,
        "eval_every": epochs})


def scale_text(scale: Scale) -> str:
    """How far epochs, data, attack and margin bound are shrunk relative to the paper."""
    e, p = scale.epochs, scale.points
    margin = {key: min(n, scale.margin_points) for key, n in p.items()}
    return (f"MLP {e['mlp']} / CNN {e['cnn']} of {PAPER_EPOCHS} epochs on {scale.train_images:,} "
            f"of {MNIST_TRAIN:,} training images; L2 PGD with {scale.pgd_steps} of "
            f"{PAPER_STEPS} steps (step {STEP_SIZE}) on the first {p['mlp']:,} (MLP) / "
            f"{p['cnn']:,} (CNN) of {MNIST_TEST:,} test images; margin bound (r = "
            f"{MARGIN_RADIUS:g}) on the first {margin['mlp']} / {margin['cnn']} of those points "
            f"(paper: {PAPER_MARGIN_POINTS}) with {scale.margin_samples} of "
            f"{PAPER_MARGIN_SAMPLES:,} ball samples per point")


# --------------------------------------------------------------------------- evaluation
def nested_robustness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int
                      ) -> tuple[torch.Tensor, dict[float, torch.Tensor]]:
    """Clean flags and per-radius robust flags under L2 PGD (radii in increasing order).

    Only points still robust at the previous radius are attacked at the next one: an
    adversarial example found inside a smaller ball lies inside every larger one.
    """
    clean = clean_flags(model, x, y)
    still, robust = clean, {}
    for radius in RADII:
        attack = create_attack(f"l2-pgd:steps={steps},step_size={STEP_SIZE}",
                               defaults={"epsilon": radius, "seed": 0})
        result = run_attack(model, x, y, attack, clean=still, epsilon=radius, norm="l2")
        still = result.robust & still
        robust[radius] = still
        log(f"  ε={radius:g}: {still.float().mean():.2%} robust ({result.seconds:.0f}s)")
    return clean, robust


def evaluate_arm(model: nn.Module, architecture: Architecture, scale: Scale
                 ) -> dict[str, Any]:
    """Clean and robust accuracy (with Wilson intervals) and the Theorem 3 margins."""
    x, y = test_points(DATASET, scale.points[architecture.key])
    started = time.perf_counter()
    clean, robust = nested_robustness(model, x, y, steps=scale.pgd_steps)
    attack_seconds = time.perf_counter() - started
    count = min(len(y), scale.margin_points)
    started = time.perf_counter()
    margins = amr_margin_summary(model, x[:count], y[:count], radius=MARGIN_RADIUS,
                                 samples=scale.margin_samples,
                                 generator=torch.Generator().manual_seed(0))
    margin_seconds = time.perf_counter() - started
    log(f"  average margin {margins['average_margin']:.3f}, minimum "
        f"{margins['minimum_margin']:.3f} ({margin_seconds:.0f}s)")
    return {"n": len(y), "clean": summary(clean),
            "robust": {str(radius): summary(flags) for radius, flags in robust.items()},
            "average_margin": margins["average_margin"],
            "minimum_margin": margins["minimum_margin"], "margin_points": count,
            "attack_seconds": attack_seconds, "margin_seconds": margin_seconds}


def run_arm(architecture: Architecture, method: str, scale: Scale,
            args: argparse.Namespace) -> dict[str, Any]:
    """Train (or reuse) one arm and evaluate it; the paper's numbers ride along."""
    name = f"MNIST {architecture.key} {method}"
    model, metrics = train_arm(name, arm_config(architecture, method, scale), args.out,
                               fresh=args.fresh)
    log(f"[{name}] evaluating")
    result = evaluate_arm(model, architecture, scale)
    paper = PAPER_TABLE1[(architecture.key, method)]
    return {"architecture": architecture.key, "method": method, **result,
            "train_seconds_per_epoch": metrics.get("seconds_per_epoch", []),
            "paper": {"clean": paper[0], **{str(r): v for r, v in zip(RADII, paper[1:5],
                                                                      strict=True)},
                      "average_margin": paper[5]}}


# --------------------------------------------------------------------------- claims
def margin_claim(label: str, standard: float, amr: float, paper: tuple[float, float]) -> Claim:
    """(a) AMR's average margin exceeds standard training's (point estimates)."""
    return Claim(f"AMR raises the average margin over standard training ({label})",
                 amr > standard,
                 f"average margin Std {standard:.3f} → AMR {amr:.3f} "
                 f"(paper {paper[0]:.2f} → {paper[1]:.2f})")


def robustness_claim(label: str, standard: dict[float, float], amr: dict[float, float],
                     radii: tuple[float, ...] = LARGE_RADII) -> Claim:
    """(b) AMR's robust accuracy exceeds standard training's at every radius in ``radii``."""
    holds = all(amr[r] > standard[r] for r in radii)
    evidence = "; ".join(f"ε={r:g}: Std {percent(standard[r])}% → AMR {percent(amr[r])}%"
                         for r in radii)
    named = ", ".join(f"{r:g}" for r in radii)
    return Claim(f"AMR raises L2 PGD robust accuracy at ε ∈ {{{named}}} over standard training "
                 f"({label})", holds, evidence)


def _robust_accuracies(arm: dict[str, Any]) -> dict[float, float]:
    return {r: arm["robust"][str(r)]["accuracy"] for r in RADII}


def claims_for(arms: dict[str, dict[str, Any]]) -> list[Claim]:
    """Claim (a) for each architecture, then claim (b) for each architecture."""
    pairs = [(arch.label, arms[f"{arch.key}-standard"], arms[f"{arch.key}-amr"])
             for arch in ARCHITECTURES]
    margins = [margin_claim(label, std["average_margin"], amr["average_margin"],
                            (std["paper"]["average_margin"], amr["paper"]["average_margin"]))
               for label, std, amr in pairs]
    robustness = [robustness_claim(label, _robust_accuracies(std), _robust_accuracies(amr))
                  for label, std, amr in pairs]
    return margins + robustness


# --------------------------------------------------------------------------- tables
def with_interval(cell: dict[str, float]) -> str:
    return (f"{percent(cell['accuracy'])} ({percent(cell['ci_low'])}–"
            f"{percent(cell['ci_high'])})")


def table1(arms: dict[str, dict[str, Any]]) -> str:
    """Paper vs ours for every reproduced cell of Table 1 (ours with Wilson 95% intervals)."""
    columns = [("model", "Model"), ("method", "Method"), ("n", "n"),
               ("clean_paper", "Clean paper"), ("clean", "Clean ours")]
    for radius in RADII:
        columns += [(f"{radius}_paper", f"ε={radius:g} paper"), (str(radius), f"ε={radius:g} ours")]
    columns += [("margin_paper", "Avg margin paper"), ("margin", "Avg margin ours"),
                ("minimum", "Min margin ours")]
    rows = []
    for arm in arms.values():
        label = next(a.label for a in ARCHITECTURES if a.key == arm["architecture"])
        row = {"model": label, "method": METHODS[arm["method"]], "n": arm["n"],
               "clean_paper": f"{arm['paper']['clean']:.2f}", "clean": with_interval(arm["clean"]),
               "margin_paper": f"{arm['paper']['average_margin']:.2f}",
               "margin": f"{arm['average_margin']:.3f}", "minimum": f"{arm['minimum_margin']:.3f}"}
        for radius in RADII:
            row[f"{radius}_paper"] = f"{arm['paper'][str(radius)]:.2f}"
            row[str(radius)] = with_interval(arm["robust"][str(radius)])
        rows.append(row)
    return markdown_table(rows, columns)


def reference_table() -> str:
    """The paper's MNIST rows this script does not reproduce."""
    columns = [("table", "Table"), ("model", "Model"), ("method", "Method"), ("clean", "Clean")]
    columns += [(str(r), f"ε={r:g}") for r in RADII] + [("margin", "Avg margin")]
    rows = []
    for table, model, method, values in PAPER_NOT_REPRODUCED:
        keys = ["clean", *map(str, RADII), "margin"][:len(values)]
        rows.append({"table": table, "model": model, "method": method,
                     **{k: f"{v:.2f}" for k, v in zip(keys, values, strict=True)}})
    return markdown_table(rows, columns)


def cost_table(arms: dict[str, dict[str, Any]]) -> str:
    """Measured seconds per training epoch, for the PGD attacks and for the margin bound."""
    columns = [("arm", "Arm"), ("epochs", "Epochs"), ("epoch_s", "s / epoch"),
               ("attack_s", "PGD s (4 radii)"), ("margin_s", "Margin s")]
    rows = []
    for key, arm in arms.items():
        epochs = arm["train_seconds_per_epoch"]
        rows.append({"arm": key, "epochs": len(epochs),
                     "epoch_s": f"{sum(epochs) / len(epochs):.1f}" if epochs else None,
                     "attack_s": f"{arm['attack_seconds']:.0f}",
                     "margin_s": f"{arm['margin_seconds']:.0f}"})
    return markdown_table(rows, columns)


# --------------------------------------------------------------------------- entry point
def chosen_scale(args: argparse.Namespace) -> Scale:
    base = SMOKE if args.smoke else FULL
    epochs = {"mlp": args.mlp_epochs or base.epochs["mlp"],
              "cnn": args.cnn_epochs or base.epochs["cnn"]}
    points = {"mlp": args.mlp_points or base.points["mlp"],
              "cnn": args.cnn_points or base.points["cnn"]}
    return replace(base, epochs=epochs, points=points,
                   train_images=args.train_images or base.train_images,
                   margin_samples=args.margin_samples or base.margin_samples,
                   pgd_steps=args.pgd_steps or base.pgd_steps)


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = parser(PAPER, __doc__)
    for flag, doc in (("--mlp-epochs", "MLP epochs"), ("--cnn-epochs", "CNN epochs"),
                      ("--mlp-points", "MLP test points attacked"),
                      ("--cnn-points", "CNN test points attacked"),
                      ("--train-images", "training images"),
                      ("--margin-samples", "ball samples per point in the margin bound"),
                      ("--pgd-steps", "L2 PGD steps (the paper: 1000)")):
        p.add_argument(flag, type=int, default=None, help=f"{doc} (default: the scale's)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    setup(args)
    started = time.perf_counter()
    scale = chosen_scale(args)
    arms = {f"{arch.key}-{method}": run_arm(arch, method, scale, args)
            for arch in ARCHITECTURES for method in METHODS}
    if any(not math.isfinite(arm["average_margin"]) for arm in arms.values()):
        raise RuntimeError("an average margin is not finite")
    sections = [("Table 1 (MNIST): paper vs ours, robust accuracy under L2 PGD "
                 "[ours: % (Wilson 95%)]", table1(arms)),
                ("Paper rows not reproduced here (reference only)", reference_table()),
                ("Cost", cost_table(arms))]
    return finish(PAPER, args, sections=sections, claims=claims_for(arms),
                  scale=scale_text(scale), results={"arms": arms}, started=started)


if __name__ == "__main__":
    sys.exit(main())
