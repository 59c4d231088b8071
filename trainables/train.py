"""``python -m trainables.train [--config cfg.yaml] [--FIELD VALUE ...]``: one run, no Ray.

Shows per-epoch progress on stderr, keeps the latest checkpoint up to date after every epoch
(``--resume DIR`` continues from it), and prints the final metrics as one JSON line on stdout,
last: test ``clean_accuracy`` and ``robust_accuracy`` (PGD-``eval_steps``) and ``checkpoint``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import tyro

from trainables.config import TrialConfig
from trainables.flags import parse

if TYPE_CHECKING:  # torch loads only when a run starts: `--help` answers at once
    from trainables.engine import TrainingRun


@dataclass(frozen=True)
class TrainCommand:
    """Train one model, no Ray. Every TrialConfig field is a flag (``--epochs 3``,
    ``--defense trades``, ``--defense-params '{"beta": 6}'``), over ``--config``'s YAML or,
    with ``--resume``, the checkpoint's own config."""

    trial: Annotated[TrialConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=TrialConfig)
    config: Path | None = None  # YAML file with TrialConfig fields
    resume: Path | None = None  # checkpoint directory to continue
    set: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()  # KEY=VALUE (dotted keys)
    run_name: str | None = None  # folder under output_dir (default: derived)
    quiet: bool = False  # no progress bar


def parse_args(argv: list[str] | None = None) -> TrainCommand:
    """The command with its trial config checked (``--set`` applied): a flag over the file's
    value, the file's over the field's default."""
    from trainables.config import ConfigError, apply_overrides

    argv = list(sys.argv[1:] if argv is None else argv)
    files = argparse.ArgumentParser(add_help=False)
    files.add_argument("--config", type=Path)
    files.add_argument("--resume", type=Path)
    known, _ = files.parse_known_args(argv)
    if known.config and known.resume:
        fail("error: --config and --resume exclude each other (a resumed run keeps its "
             "checkpoint's config; flags still change fields)")
    try:
        if known.resume:
            base = TrialConfig.from_dict(json.loads((known.resume / "config.json").read_text()))
        elif known.config:
            base = TrialConfig.from_yaml(known.config)
        else:
            base = TrialConfig()
    except (OSError, ValueError, TypeError) as error:
        fail(f"config error: {error}")
    command = parse(TrainCommand, argv, default=TrainCommand(trial=base))
    try:
        trial = TrialConfig.from_dict(apply_overrides(command.trial.to_dict(), list(command.set)))
    except ConfigError as error:
        fail(f"config error: {error}")
    return TrainCommand(trial, command.config, command.resume, (), command.run_name,
                        command.quiet)


def default_run_name(config: TrialConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{config.dataset}-{config.model}-{config.defense}-seed{config.seed}-{stamp}"


def load_run(command: TrainCommand) -> tuple[TrainingRun, Path]:
    from trainables.checkpoints import resume
    from trainables.engine import TrainingRun

    config = command.trial
    if command.resume:
        run = TrainingRun(config)
        resume(run, command.resume)
        return run, command.resume
    run_dir = Path(config.output_dir) / (command.run_name or default_run_name(config))
    return TrainingRun(config), run_dir / "checkpoint"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fail(message: str) -> NoReturn:
    """Stop the command line: ``message`` on stderr, exit status 2."""
    log(message)
    raise SystemExit(2)


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
        save_checkpoint(checkpoint, model=run.published_model, config=cfg,
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
    save_checkpoint(checkpoint, model=run.published_model, config=cfg, metrics=final,
                    training_state=run.state_dict())
    log(f"test clean {final['clean_accuracy']:.4f} PGD-{cfg.eval_steps} "
        f"{final['robust_accuracy']:.4f} ({test['n']} images); checkpoint {checkpoint}")
    return final


def main(argv: list[str] | None = None) -> int:
    command = parse_args(argv)
    from trainables.checkpoints import CheckpointError

    try:
        run, checkpoint = load_run(command)
    except (CheckpointError, OSError) as error:
        log(f"cannot resume: {error}")
        return 2
    final = train(run, checkpoint, quiet=command.quiet)
    print(json.dumps(final))
    return 0


if __name__ == "__main__":
    sys.exit(main())
