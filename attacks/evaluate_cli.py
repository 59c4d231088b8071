"""``python -m attacks.evaluate CHECKPOINT``: evaluate a saved checkpoint on its test set.

The first ``--n-examples`` test points of the checkpoint's dataset are attacked at the
checkpoint's training radius (or ``--epsilon``), as a cascade (``--mode cascade``, the default:
:mod:`attacks.cascade`) or with every attack on every point (``--mode full``); progress goes to
stderr, a one-line summary (the report without per-example flags or labels, its per-class
accuracies included) is the last line on stdout, then the per-class table (class, n, clean and
worst-case accuracy in % with their 95 % intervals; :func:`class_table`) goes to stderr, and
``--json`` writes the whole evaluation record (:mod:`attacks.schema`), per-example flags, labels
and per-class accuracies included, with its plan (the flags that decide the numbers), its
source (the checkpoint, a checksum of the evaluated points) and the checkpoint's training
record.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from trainables.flags import parse

DEFAULT_ATTACKS = ("aa-standard", "pgd-100-ce", "pgd-100-cw")
WHERE = ("checkpoint", "device", "threads", "json", "points")  # flags that change no number


@dataclass(frozen=True)
class EvaluationFlags:
    """Evaluate one saved checkpoint on the first n points of its test set."""

    checkpoint: Annotated[Path, tyro.conf.Positional]  # a checkpoint directory
    attacks: tuple[str, ...] = DEFAULT_ATTACKS  # attack specs, name[:key=value,...]
    # cascade: attacks cheapest first, the full worst case and flags, per-attack accuracies only
    # for attacks that ran on every point (attacks.cascade); full: every per-attack accuracy
    mode: str = "cascade"
    n_examples: int = 1000  # first n test points
    epsilon: float | None = None  # radius (default: the checkpoint's training epsilon)
    seed: int = 0
    batch_size: int = 256
    epsilon_curve: tuple[float, ...] = ()  # also AutoAttack accuracy at these radii
    checks: bool = True  # the model probes (gradient masking, randomness, ...)
    indicators: bool = True  # the indicators of attack failure (on the first 100 points)
    surrogate: str = "train"  # transfer indicator's surrogate: train, none, or a checkpoint dir
    eot: str = "auto"  # EOT attacks: auto (when the forward pass is random), always, never
    eot_samples: int = 20  # forward passes per EOT gradient
    points: Path | None = None  # write the worst-case adversarial points (safetensors) here
    device: str | None = None  # default: cuda when there is one, else cpu
    threads: int | None = None  # torch CPU threads
    json: Path | None = None  # write the full report, per-example flags included, here

    def __post_init__(self) -> None:
        if self.n_examples <= 0:
            raise ValueError(f"--n-examples must be positive, got {self.n_examples}")
        if self.eot not in ("auto", "always", "never"):
            raise ValueError(f"--eot must be auto, always or never, got {self.eot!r}")
        if self.mode not in ("cascade", "full"):
            raise ValueError(f"--mode must be cascade or full, got {self.mode!r}")
        from attacks.pool_config import check_attack
        from attacks.shards import refuse_repeats

        for spec in self.attacks:  # a bad spec fails now, not after the first attacks ran
            check_attack(spec)
        refuse_repeats(self.attacks)


def parse_args(argv: list[str] | None = None) -> EvaluationFlags:
    return parse(EvaluationFlags, sys.argv[1:] if argv is None else argv)


def compact(report: dict[str, Any]) -> dict[str, Any]:
    """A report document without its per-example flags and labels."""
    attacks = {label: {k: v for k, v in r.items() if k != "robust"}
               for label, r in report["attacks"].items()}
    return {k: v for k, v in report.items() if k not in ("clean_correct", "labels")} \
        | {"attacks": attacks}


def _percent(stats: dict[str, Any]) -> str:
    return f"{100 * stats['accuracy']:5.1f} [{100 * stats['ci_low']:.1f}, " \
           f"{100 * stats['ci_high']:.1f}]"


def class_table(per_class: list[dict[str, Any]]) -> str:
    """The per-class entries of a report document (``per_class``) as a plain-text table: class,
    n, clean and worst-case accuracy in % with their 95 % intervals; empty without entries."""
    if not per_class:
        return ""
    lines = [f"{'class':>5}  {'n':>6}  {'clean %':<20}  worst-case %"]
    lines += [f"{entry['label']:>5}  {entry['n']:>6}  {_percent(entry['clean']):<20}  "
              f"{_percent(entry['worst_case'])}" for entry in per_class]
    return "\n".join(lines)


def plan_of(args: EvaluationFlags, epsilon: float, norm: str, eot_samples: int
            ) -> dict[str, Any]:
    """The flags that decide the numbers, with the radius and norm they resolved to."""
    chosen = {k: v for k, v in dataclasses.asdict(args).items() if k not in WHERE}
    chosen.update(epsilon=epsilon, norm=norm, eot_samples=eot_samples)
    return json.loads(json.dumps(chosen, default=str))


def surrogate_of(choice: str, config, device: str, seed: int):
    """The transfer indicator's surrogate: ``train`` (a standard model of the checkpoint's
    architecture, trained now), ``none``, or a checkpoint directory."""
    from attacks.indicators import train_surrogate
    from trainables.checkpoints import load_checkpoint

    if choice == "none":
        return None
    if choice == "train":
        return train_surrogate(config.dataset, config.model, config.model_params, seed=seed,
                               device=device)
    return load_checkpoint(Path(choice), device=device).model.eval()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    from attacks.evaluate import evaluate_model
    from attacks.indicators import IndicatorSettings
    from attacks.schema import Source, TrainingRecord
    from attacks.targets import checkpoint_context, load_points, points_checksum
    from attacks.verify import save_points
    from trainables.checkpoints import CheckpointError, load_checkpoint

    args = dataclasses.replace(
        args, device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        checkpoint = load_checkpoint(args.checkpoint, device=args.device)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    config = checkpoint.config
    epsilon = args.epsilon if args.epsilon is not None else config.resolved_epsilon
    x, y = load_points(config.dataset, args.n_examples, args.device)
    report = evaluate_model(
        checkpoint.model, x, y, attacks=args.attacks, epsilon=epsilon, norm=config.norm,
        seed=args.seed, batch_size=args.batch_size, checks=args.checks,
        epsilon_curve=args.epsilon_curve, eot=args.eot, eot_samples=args.eot_samples,
        indicators=IndicatorSettings() if args.indicators else None,
        surrogate=lambda: surrogate_of(args.surrogate, config, args.device, args.seed),
        progress=lambda message: print(message, file=sys.stderr, flush=True), mode=args.mode,
        **checkpoint_context(config))
    if args.points and report.adversarial is not None:
        save_points(args.points, report.adversarial, n=report.n, epsilon=epsilon,
                    norm=config.norm, data_checksum=points_checksum(x, y))
    record = report.to_record(
        plan=plan_of(args, epsilon, config.norm, report.eot_samples), dataset=config.dataset,
        source=Source(checkpoint=str(args.checkpoint), data_checksum=points_checksum(x, y)),
        training=TrainingRecord.from_config(config.to_dict())).to_dict()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1))
    print(json.dumps(compact(record)), flush=True)
    table = class_table(record["per_class"])
    if table:
        print(f"per class (95 % intervals):\n{table}", file=sys.stderr, flush=True)
    return record
