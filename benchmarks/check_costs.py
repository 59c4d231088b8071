"""What the evaluation's own checks cost, beside the attacks they guard, on one model.

Every model probe (`attacks/checks.py`), every indicator of attack failure
(`attacks/indicators.py`, the surrogate's training counted apart) and the re-check of kept
adversarial points (`attacks/verify.py`) is timed on the same points, in seconds per 100
points, next to the row's own evaluation time per 100 points. The model is a leaderboard row's
checkpoint (default: the best trusted row of the demo's store, `bash scripts/demo.sh`), or a
checkpoint folder.

    .venv/bin/python benchmarks/check_costs.py                       # the demo's best row
    .venv/bin/python benchmarks/check_costs.py --checkpoint DIR --n 200
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO = "demo-results"  # where `bash scripts/demo.sh` leaves its store


def timed(function: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` calls."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def demo_row(tracking_uri: str):
    from dashboards.leaderboard import load

    board = load(tracking_uri)
    trusted = board[~board["flagged"]] if not board.empty else board
    if trusted.empty:
        raise SystemExit(f"no trusted leaderboard row in {tracking_uri}; run the demo first")
    return trusted.iloc[0]


def probes(model, x, y, epsilon: float, norm: str) -> dict[str, Callable[[], object]]:
    from attacks import checks

    return {
        "probe: NaN or infinite logits": lambda: checks.non_finite_fraction(model, x),
        "probe: modules training after eval()": lambda: checks.training_modules(model),
        "probe: random forward pass": lambda: checks.is_random(model, x),
        "probe: batch dependence": lambda: checks.depends_on_batch(model, x),
        "probe: probabilities, not logits": lambda: checks.looks_like_probabilities(model, x),
        "probe: zero input gradients": lambda: checks.zero_gradient_fraction(model, x, y,
                                                                             epsilon, norm),
        "probe: pyautoattack's checks": lambda: checks.pyautoattack_flags(model, x, y),
    }


def indicators(model, x, y, epsilon: float, norm: str,
               surrogate) -> dict[str, Callable[[], object]]:
    from attacks.indicators import DEFAULT_INDICATORS, INDICATORS, list_indicators

    return {f"indicator: {name}": (lambda name=name: INDICATORS.get(name)(
        model, x, y, epsilon=epsilon, norm=norm, seed=0, settings=DEFAULT_INDICATORS,
        surrogate=surrogate)) for name in list_indicators()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / DEMO / 'mlflow.db'}")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint folder instead of a row")
    parser.add_argument("--n", type=int, default=100, help="points checked")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from attacks.evaluate import attack_points, clean_flags, worst_case_points
    from attacks.indicators import train_surrogate
    from attacks.suite import create_attack
    from attacks.targets import load_points
    from attacks.verify import verify_points
    from dashboards import artifacts
    from trainables.checkpoints import load_checkpoint

    evaluation_per_100 = None
    with tempfile.TemporaryDirectory() as folder:
        path = args.checkpoint
        if path is None:
            row = demo_row(args.tracking_uri)
            path = artifacts.download_checkpoint(args.tracking_uri, row["source_run"], folder)
            evaluation_per_100 = 100 * row["evaluation_seconds"] / row["n"]
            print(f"row {row['run_id'][:8]}: {row['defense']} on {row['dataset']}, clean "
                  f"{row['clean']:.1%}, evaluation {evaluation_per_100:.1f} s per 100 points")
        checkpoint = load_checkpoint(path)
    model, config = checkpoint.model.eval(), checkpoint.config
    epsilon, norm = config.resolved_epsilon, config.norm
    x, y = load_points(config.dataset, args.n, "cpu")
    scale = 100 / len(x)

    started = time.perf_counter()
    surrogate = train_surrogate(config.dataset, config.model, config.model_params)
    surrogate_seconds = time.perf_counter() - started
    costs = {name: timed(check, args.repeats) * scale
             for name, check in {**probes(model, x, y, epsilon, norm),
                                 **indicators(model, x, y, epsilon, norm, surrogate)}.items()}
    clean = clean_flags(model, x, y)
    _, broken = attack_points(model, x, y, create_attack("pgd:steps=20", epsilon=epsilon,
                                                          norm=norm), clean=clean,
                              epsilon=epsilon, norm=norm)
    kept = worst_case_points(clean, [broken])
    costs["verify: re-check kept points"] = timed(
        lambda: verify_points(model, x, y, kept, epsilon=epsilon, norm=norm), args.repeats) * scale

    once = "surrogate training (once per architecture)"
    width = max(len(once), *map(len, costs))
    print(f"{len(x)} points of {config.dataset}, {config.model}, {norm} ε={epsilon:g}, "
          f"{args.threads} thread(s); seconds per 100 points (median of {args.repeats})")
    for name, seconds in costs.items():
        print(f"  {name:<{width}}  {seconds:7.3f}")
    print(f"  {once:<{width}}  {surrogate_seconds:7.3f} (total)")
    total = sum(seconds for name, seconds in costs.items() if not name.startswith("verify"))
    if evaluation_per_100:
        print(f"checks and indicators / evaluation: {total / evaluation_per_100:.3f} "
              f"(target < 0.25)")
    else:
        print(f"checks and indicators: {total:.2f} s per 100 points (target < 5)")


if __name__ == "__main__":
    main()
