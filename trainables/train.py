"""``python -m trainables.train --config cfg.yaml [--set key=value ...]``: one run, no Ray.

Shows per-epoch progress on stderr, keeps the latest checkpoint up to date after every epoch
(``--resume DIR`` continues from it), and prints the final metrics as one JSON line on stdout,
last: test ``clean_accuracy`` and ``robust_accuracy`` (PGD-``eval_steps``) and ``checkpoint``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads only when a run starts: `--help` answers at once
    from trainables.config import TrialConfig
    from trainables.engine import TrainingRun


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="YAML file with TrialConfig fields")
    source.add_argument("--resume", type=Path, help="checkpoint directory to continue")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a field (dotted keys for dicts)")
    parser.add_argument("--run-name", help="folder under output_dir (default: derived)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def default_run_name(config: TrialConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{config.dataset}-{config.model}-{config.defense}-seed{config.seed}-{stamp}"


def load_run(args: argparse.Namespace) -> tuple[TrainingRun, Path]:
    from trainables.checkpoints import resume
    from trainables.config import TrialConfig, apply_overrides
    from trainables.engine import TrainingRun

    if args.resume:
        config_values = json.loads((args.resume / "config.json").read_text())
        config = TrialConfig.from_dict(apply_overrides(config_values, args.overrides))
        run = TrainingRun(config)
        resume(run, args.resume)
        return run, args.resume
    config = TrialConfig.from_yaml(args.config, args.overrides)
    run_dir = Path(config.output_dir) / (args.run_name or default_run_name(config))
    return TrainingRun(config), run_dir / "checkpoint"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _saved_history(checkpoint: Path) -> list[dict]:
    """Per-epoch metrics kept in the checkpoint (so a resumed run reports every epoch)."""
    from trainables.checkpoints import METRICS

    try:
        return list(json.loads((checkpoint / METRICS).read_text()).get("history", []))
    except (OSError, ValueError):
        return []


def train(run: TrainingRun, checkpoint: Path, *, quiet: bool = False) -> dict:
    from tqdm import tqdm

    from trainables.checkpoints import save_checkpoint

    cfg = run.config
    log(f"training {cfg.model} with {cfg.defense} on {cfg.dataset}: {len(run.train_set)} train "
        f"/ {len(run.val_set)} val images, {cfg.epochs} epochs, ε={cfg.epsilon:g}, "
        f"device {run.device}")
    history = _saved_history(checkpoint)[:run.epoch] if run.epoch else []
    while not run.finished:
        bar = tqdm(total=len(run.train_set), unit="img", desc=f"epoch {run.epoch + 1}",
                   disable=True if quiet else None, file=sys.stderr, leave=False)

        def advance(n: int, batch_metrics: dict, bar=bar) -> None:
            bar.update(n)
            bar.set_postfix(loss=batch_metrics["loss"])

        metrics = run.run_epoch(advance)
        bar.close()
        history.append(metrics)
        save_checkpoint(checkpoint, model=run.model, config=cfg,
                        metrics={**metrics, "history": history},
                        training_state=run.state_dict())
        val = (f" val clean {metrics['val_clean_accuracy']:.4f} "
               f"PGD-{cfg.eval_steps} {metrics['val_robust_accuracy']:.4f}"
               if "val_clean_accuracy" in metrics else "")
        log(f"epoch {metrics['epoch']}/{cfg.epochs} lr {metrics['lr']:.4g} "
            f"loss {metrics['train_loss']:.4f}{val} "
            f"({metrics['train_seconds']:.1f}s, {metrics['images_per_second']:.0f} img/s)")
    test = run.test()
    final = {"clean_accuracy": test["clean_accuracy"], "robust_accuracy": test["robust_accuracy"],
             "robust_attack": f"pgd-{cfg.eval_steps}", "test_examples": test["n"],
             "epochs": run.epoch, "seconds_per_epoch": [m["train_seconds"] for m in history],
             "history": history, "checkpoint": str(checkpoint.resolve())}
    save_checkpoint(checkpoint, model=run.model, config=cfg, metrics=final,
                    training_state=run.state_dict())
    log(f"test clean {final['clean_accuracy']:.4f} PGD-{cfg.eval_steps} "
        f"{final['robust_accuracy']:.4f} ({test['n']} images); checkpoint {checkpoint}")
    return final


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from trainables.checkpoints import CheckpointError
    from trainables.config import ConfigError

    try:
        run, checkpoint = load_run(args)
    except ConfigError as error:
        log(f"config error: {error}")
        return 2
    except (CheckpointError, OSError) as error:
        log(f"cannot resume: {error}")
        return 2
    final = train(run, checkpoint, quiet=args.quiet)
    print(json.dumps(final))
    return 0


if __name__ == "__main__":
    sys.exit(main())
