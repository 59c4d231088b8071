"""Proxy fidelity: does the sweep's validation signal rank trials as AutoAttack ranks them?

A sweep picks its best trial by ``val_robust_accuracy`` (PGD on the validation images at the
last epoch, the objective Optuna and ASHA see); the leaderboard ranks checkpoints by AutoAttack
on test points. This benchmark measures how well the first predicts the second:

1. **trials**: ``--trials`` TRADES trials on real MNIST at the demo sweep's scale (the 2 × 256
   MLP of ``sweeps/demo.py`` over ``sweeps.cli.SMOKE_BASE``: L∞ ε = 0.1, a 3-step training
   attack, validation by PGD-5 on 200 validation images), each with knobs drawn at random —
   learning rate, weight decay, TRADES β, 2 or 3 epochs — so that the trials differ in
   robustness. Each trial is a :class:`trainables.engine.TrainingRun`, the object every sweep
   trial runs (``trainables/trainable.py``), trained directly rather than through Ray Tune:
   random sampling without ASHA is what a fidelity measurement needs (every trial runs its full
   budget, the final weights are the ones evaluated), and the figures do not depend on Ray;
2. **the sweep's signal**: the trial's last reported ``val_clean_accuracy`` and
   ``val_robust_accuracy``;
3. **cheap alternatives** on the same weights, on the sweep's 200 validation images and on
   ``--val-points`` validation images: PGD-5 keeping each example's best iterate, PGD-20 with
   CE and with CW loss (uniform start, best iterate), PGD-100 CW (a dear reference), and a
   20-iteration APGD-CE from pyautoattack;
4. **the truth**: :func:`attacks.evaluate.evaluate_model` on the first ``--n-points`` test
   images with AutoAttack (standard), PGD-100 CE and PGD-100 CW (no integrity checks), and the
   clean accuracy on the whole test set;
5. **the figures**: the Spearman rank correlation of each signal with the final AutoAttack
   accuracy over the trials, with a 95 % percentile-bootstrap interval (trials resampled with
   replacement); for each alternative its gain over the sweep's signal (paired bootstrap) and
   its cost in model passes relative to the sweep's validation; validation clean against test
   clean accuracy; and AutoAttack on one half of the test points against the other half (how
   well the test figure ranks the trials against itself, a ceiling for any proxy).

Per-trial numbers and per-example flags go to ``--json`` after every trial, so
``--from-json FILE`` re-runs the analysis without training. The last line is
``proxy spearman: <value> [lo, hi] (target 0.9)`` for the signal the sweeps validate with
since this measurement (``sweeps.runner.sweep_space``: best-iterate PGD-20 on the CW margin,
``eval_loss: cw``, ``eval_keep: best``, on the studies' 1,000 validation images). It was chosen
on these very trials, so its figure is optimistic until a fresh set of trials confirms it.

    nice -n 5 .venv/bin/python benchmarks/proxy_fidelity.py   # 34 min on 2 shared cores
    .venv/bin/python benchmarks/proxy_fidelity.py --from-json benchmarks/proxy_fidelity.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET = 0.9
CONFIDENCE = 0.95
RESAMPLES = 4000
SWEEP_SIGNAL = "val_robust_accuracy"
# what the sweeps validate with now: (where, signal) among the alternatives measured
SWEEPS_NOW = ("wide", "pgd20_cw_best")
# The knobs drawn per trial (log-uniform ranges; epochs uniform over the choices).
SPACE = {"lr": (0.01, 0.15), "weight_decay": (1e-5, 1e-2), "beta": (0.3, 12.0)}
EPOCHS = (2, 3)
TEST_ATTACKS = ("aa-standard", "pgd-100-ce", "pgd-100-cw")
# Model passes per validation point (a forward and backward pass count 3): k PGD steps cost
# 3k + 1, APGD-CE's 20 iterations 3·20 + 1; the sweep's PGD-5 costs 16.
PASSES = {"pgd5_ce": 16, "pgd5_ce_best": 16, "pgd20_ce_best": 61, "pgd20_cw_best": 61,
          "pgd100_cw_best": 301, "apgd20_ce": 61}


# -- statistics --------------------------------------------------------------------------------
def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's ρ of two paired samples (ties averaged); NaN when either is constant."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need two paired samples of 2 or more, got {len(a)} and {len(b)}")
    if np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    try:
        from scipy.stats import spearmanr
    except ImportError:
        ra, rb = _ranks(a), _ranks(b)
        return float(np.corrcoef(ra, rb)[0, 1])
    return float(spearmanr(a, b).statistic)


def bootstrap_spearman(a: Sequence[float], b: Sequence[float], *,
                       resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                       seed: int = 0) -> tuple[float, float, float]:
    """``(ρ, low, high)``: Spearman's ρ and its percentile-bootstrap interval, the pairs
    resampled with replacement (resamples in which a side is constant are left out)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rho = spearman(a, b)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        pick = rng.integers(0, len(a), len(a))
        value = spearman(a[pick], b[pick])
        if not math.isnan(value):
            draws.append(value)
    if not draws:
        return rho, math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return rho, float(min(low, rho)), float(max(high, rho))


def bootstrap_gain(a: Sequence[float], base: Sequence[float], b: Sequence[float], *,
                   resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                   seed: int = 0) -> tuple[float, float, float]:
    """``(Δ, low, high)``: how much higher Spearman's ρ of ``a`` with ``b`` is than that of
    ``base`` with ``b``, with a paired percentile-bootstrap interval (the same resampled trials
    for both; resamples with a constant side are left out)."""
    a, base, b = (np.asarray(v, dtype=float) for v in (a, base, b))
    gain = spearman(a, b) - spearman(base, b)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        pick = rng.integers(0, len(a), len(a))
        value = spearman(a[pick], b[pick]) - spearman(base[pick], b[pick])
        if not math.isnan(value):
            draws.append(value)
    if not draws:
        return gain, math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return gain, float(min(low, gain)), float(max(high, gain))


# -- one trial -----------------------------------------------------------------------------------
def sample_trials(count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` knob settings drawn at random (log-uniform; epochs uniform)."""
    rng = np.random.default_rng(seed)

    def log_uniform(low: float, high: float) -> float:
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))

    return [{"lr": log_uniform(*SPACE["lr"]), "weight_decay": log_uniform(*SPACE["weight_decay"]),
             "beta": log_uniform(*SPACE["beta"]), "epochs": int(rng.choice(EPOCHS))}
            for _ in range(count)]


def trial_config(knobs: dict[str, Any], train_subset: int) -> dict[str, Any]:
    from sweeps.cli import SMOKE_BASE
    from sweeps.demo import DEMO_BASE
    from trainables.config import merge

    return merge(merge(SMOKE_BASE, DEMO_BASE), {
        "defense": "trades", "defense_params": {"beta": knobs["beta"]}, "lr": knobs["lr"],
        "weight_decay": knobs["weight_decay"], "epochs": knobs["epochs"],
        "train_subset": train_subset, "num_threads": 1, "device": "cpu", "seed": 0})


def _flags(bits) -> str:
    return "".join("1" if bool(v) else "0" for v in bits)


def validation_signals(model, x, y, *, epsilon: float, step_size: float) -> dict[str, str]:
    """Per-example robust flags (``"0110…"``) of each candidate validation signal."""
    import torch
    from pyautoattack.autopgd_base import APGDAttack

    from attacks.pgd import pgd

    def correct(points) -> torch.Tensor:
        with torch.no_grad():
            return model(points).argmax(1) == y

    def run(**settings) -> str:
        generator = torch.Generator().manual_seed(0)
        return _flags(correct(pgd(model, x, y, epsilon=epsilon, generator=generator,
                                  **settings)) & clean)

    model.eval()
    clean = correct(x)
    signals = {"clean": _flags(clean),
               "pgd5_ce": run(steps=5, step_size=step_size, random_start="none"),
               "pgd5_ce_best": run(steps=5, step_size=step_size, random_start="none",
                                   keep="best"),
               "pgd20_ce_best": run(steps=20, step_size=2.5 * epsilon / 20, keep="best"),
               "pgd20_cw_best": run(steps=20, step_size=2.5 * epsilon / 20, loss="cw",
                                    keep="best"),
               "pgd100_cw_best": run(steps=100, step_size=2.5 * epsilon / 100, loss="cw",
                                     keep="best")}
    with torch.random.fork_rng():  # pyautoattack reseeds the global generator
        apgd = APGDAttack(model, n_iter=20, norm="Linf", eps=epsilon, seed=0, loss="ce",
                          device=x.device)
        signals["apgd20_ce"] = _flags(correct(apgd.perturb(x, y)) & clean)
    return signals


def run_trial(index: int, knobs: dict[str, Any], train_subset: int, val_points: int,
              n_points: int) -> dict[str, Any]:
    """Train one trial, then measure every validation signal and the test evaluation."""
    import torch

    from attacks.evaluate import evaluate_model
    from trainables import data
    from trainables.config import TrialConfig
    from trainables.engine import TrainingRun

    torch.set_num_threads(1)
    started = time.perf_counter()
    run = TrainingRun(TrialConfig.from_dict(trial_config(knobs, train_subset)))
    cfg = run.config
    metrics: dict[str, Any] = {}
    try:
        while not run.finished:
            metrics = run.run_epoch()
    except FloatingPointError as error:
        return {"index": index, "knobs": knobs, "diverged": str(error)}
    train_seconds = time.perf_counter() - started
    model = run.published_model.eval()
    sets = {"sweep": run.val_set,
            "wide": data.load_dataset(cfg.dataset, "val", subset=val_points,
                                      val_size=cfg.val_size, split_seed=cfg.split_seed)}
    signals = {}
    for name, dataset in sets.items():
        x, y = dataset.tensors()
        signals[name] = validation_signals(model, x, y, epsilon=cfg.epsilon,
                                           step_size=cfg.eval_step_size)
    val_seconds = time.perf_counter() - started - train_seconds
    test = data.load_dataset(cfg.dataset, "test", split_seed=cfg.split_seed)
    x, y = test.tensors()
    with torch.no_grad():
        test_clean = (model(x).argmax(1) == y).float().mean().item()
    report = evaluate_model(model, x[:n_points], y[:n_points], attacks=list(TEST_ATTACKS),
                            epsilon=cfg.epsilon, seed=0, batch_size=500, checks=False,
                            indicators=None)
    return {"index": index, "knobs": knobs, "epochs": run.epoch,
            "val_clean_accuracy": metrics["val_clean_accuracy"],
            "val_robust_accuracy": metrics["val_robust_accuracy"],
            "val_n": metrics["val_n"], "signals": signals,
            "test_clean_accuracy_full": test_clean,
            "test": {"clean": _flags(report.clean),
                     **{label: _flags(result.robust & report.clean)
                        for label, result in report.attacks.items()},
                     "worst_case": _flags(report.worst_case)},
            "seconds": {"train": train_seconds, "validation_signals": val_seconds,
                        "test": time.perf_counter() - started - train_seconds - val_seconds}}


# -- analysis -------------------------------------------------------------------------------------
def _rate(bits: str) -> float:
    return bits.count("1") / len(bits)


def _line(name: str, a: Sequence[float], b: Sequence[float],
          extra: str = "") -> tuple[str, float, float, float]:
    rho, low, high = bootstrap_spearman(a, b)
    mark = "  ≥ target" if rho >= TARGET else ""
    return (f"  {name:<34} ρ = {rho:6.3f} [{low:6.3f}, {high:6.3f}]{extra}{mark}", rho, low,
            high)


def analyse(document: dict[str, Any]) -> tuple[float, float, float]:
    """Print the per-trial table and every Spearman figure; returns that of the signal the
    sweeps validate with now (:data:`SWEEPS_NOW`)."""
    trials = [t for t in document["trials"] if "diverged" not in t]
    for t in document["trials"]:
        if "diverged" in t:
            print(f"trial {t['index']} diverged and is left out: {t['diverged']}")
    aa = [_rate(t["test"]["aa-standard"]) for t in trials]
    print(f"{len(trials)} trials, {len(trials[0]['test']['clean'])} test points; "
          f"validation: {trials[0]['val_n']} (sweep) and "
          f"{len(trials[0]['signals']['wide']['clean'])} (wide) images")
    print(f"{'trial':>5} {'lr':>7} {'wd':>8} {'beta':>6} {'ep':>2} {'val cl':>7} {'val rob':>7} "
          f"{'test cl':>7} {'AA':>6} {'PGD100':>6}")
    for t, a in zip(trials, aa, strict=True):
        k = t["knobs"]
        print(f"{t['index']:>5} {k['lr']:7.4f} {k['weight_decay']:8.2e} {k['beta']:6.2f} "
              f"{t['epochs']:>2} {t['val_clean_accuracy']:7.3f} {t['val_robust_accuracy']:7.3f} "
              f"{t['test_clean_accuracy_full']:7.3f} {a:6.3f} "
              f"{_rate(t['test']['pgd-100-ce']):6.3f}")
    print("Spearman with the final AutoAttack accuracy (95 % bootstrap over trials; Δ: gain "
          "over the sweep's signal, paired bootstrap; cost: model passes over the sweep's "
          "validation):")
    text, *sweep = _line(f"{SWEEP_SIGNAL} (the sweep's)", [t[SWEEP_SIGNAL] for t in trials], aa)
    print(text)
    for where in ("sweep", "wide"):
        for signal in trials[0]["signals"][where]:
            if signal == "clean":
                continue
            n = len(trials[0]["signals"][where][signal])
            values = [_rate(t["signals"][where][signal]) for t in trials]
            gain, low, high = bootstrap_gain(values, [t[SWEEP_SIGNAL] for t in trials], aa)
            cost = PASSES[signal] * n / (PASSES["pgd5_ce"] * trials[0]["val_n"])
            print(_line(f"{signal} on {n} val", values, aa,
                        f"  Δ {gain:+.3f} [{low:+.3f}, {high:+.3f}]  cost ×{cost:<3.0f}")[0])
    worst = [_rate(t["test"]["worst_case"]) for t in trials]
    print(_line(f"{SWEEP_SIGNAL} vs worst case", [t[SWEEP_SIGNAL] for t in trials],
                worst)[0])
    print("Spearman of validation clean with test clean accuracy (10,000 test images):")
    test_clean = [t["test_clean_accuracy_full"] for t in trials]
    print(_line("val_clean_accuracy (the sweep's)", [t["val_clean_accuracy"] for t in trials],
                test_clean)[0])
    print(_line(f"clean on {len(trials[0]['signals']['wide']['clean'])} val",
                [_rate(t["signals"]["wide"]["clean"]) for t in trials], test_clean)[0])
    print(_line(f"test clean ({len(trials[0]['test']['clean'])} points) vs AA",
                [_rate(t["test"]["clean"]) for t in trials], aa)[0])
    half = len(trials[0]["test"]["aa-standard"]) // 2
    print("The test figure's own noise: AutoAttack on the first vs the second half of the "
          "test points:")
    print(_line(f"AA on {half} vs AA on the other {half}",
                [_rate(t["test"]["aa-standard"][:half]) for t in trials],
                [_rate(t["test"]["aa-standard"][half:]) for t in trials])[0])
    where, signal = SWEEPS_NOW
    values = [_rate(t["signals"][where][signal]) for t in trials]
    text, *now = _line(f"{signal} on {len(trials[0]['signals'][where][signal])} val (the "
                       f"sweeps' now)", values, aa)
    print("The signal the sweeps validate with now:")
    print(text)
    return tuple(now)


# -- command line --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--train-subset", type=int, default=15000)
    parser.add_argument("--n-points", type=int, default=500, help="test points attacked")
    parser.add_argument("--val-points", type=int, default=1000,
                        help="validation images of the wide alternative signals")
    parser.add_argument("--workers", type=int, default=2, help="trials at once (1 thread each)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the knob draws")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "proxy_fidelity.json")
    parser.add_argument("--from-json", type=Path, help="analyse a previous run's numbers only")
    args = parser.parse_args(argv)
    if args.from_json:
        document = json.loads(args.from_json.read_text())
    else:
        started = time.perf_counter()
        document = {"settings": {k: v for k, v in vars(args).items()
                                 if k not in ("json", "from_json")}, "trials": []}
        knobs = sample_trials(args.trials, args.seed)
        pool = ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"))
        with pool:
            futures = [pool.submit(run_trial, i, k, args.train_subset, args.val_points,
                                   args.n_points) for i, k in enumerate(knobs)]
            for future in as_completed(futures):
                trial = future.result()
                document["trials"].append(trial)
                document["trials"].sort(key=lambda t: t["index"])
                document["wall_seconds"] = time.perf_counter() - started
                args.json.write_text(json.dumps(document, indent=1))
                seconds = trial.get("seconds", {})
                print(f"trial {trial['index']} done ({len(document['trials'])}/{args.trials}, "
                      f"{document['wall_seconds']:.0f} s): "
                      + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()), flush=True)
        print(f"wall time {document['wall_seconds']:.0f} s; numbers in {args.json}")
    rho, low, high = analyse(document)
    print(f"proxy spearman: {rho:.3f} [{low:.3f}, {high:.3f}] (target {TARGET})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
