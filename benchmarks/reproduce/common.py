"""Shared pieces of the paper-reproduction scripts in ``benchmarks/reproduce/``.

Each script trains a few *arms* (one :class:`~trainables.config.TrialConfig` each) with the
project's own engine, evaluates them with the project's own attacks, prints the paper's numbers
beside ours and says, claim by claim, whether the paper's claim holds at this scale.

Training is resumable and cached: every arm keeps its checkpoint under ``--out`` after each
epoch, an interrupted script continues where it stopped, and a finished arm with the same config
is loaded instead of retrained (``--fresh`` retrains).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables import data
from trainables.checkpoints import CheckpointError, load_checkpoint, load_training_state, resume
from trainables.config import TrialConfig
from trainables.engine import TrainingRun
from trainables.train import train

RESULTS = Path(__file__).resolve().parent / "results"


def log(message: str) -> None:
    """Progress line on stderr (stdout carries the tables)."""
    print(message, file=sys.stderr, flush=True)


def parser(paper: str, description: str) -> argparse.ArgumentParser:
    """Arguments every reproduction script takes; scripts add their own scale knobs."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS / slug(paper),
                   help="checkpoints, results.json and results.md (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes: checks the script end to end in well under a minute")
    p.add_argument("--fresh", action="store_true", help="retrain arms even when cached")
    return p


def setup(args: argparse.Namespace) -> None:
    if args.threads < 1:
        raise SystemExit("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# --------------------------------------------------------------------------- training
def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in json.loads(json.dumps(config)).items()
            if k not in ("output_dir", "num_threads")}


def _saved_config(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None


def train_arm(name: str, config: TrialConfig, out: Path, *, fresh: bool = False
              ) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``config`` (or reuse / resume its checkpoint under ``out``); model in eval mode.

    Returns the model and the final training metrics (``seconds_per_epoch``, ``history``).
    """
    checkpoint = out / "arms" / slug(name) / "checkpoint"
    wanted = _comparable(config.resolved().to_dict())
    saved = _saved_config(checkpoint)
    matches = saved is not None and _comparable(saved) == wanted and not fresh
    if matches:
        try:
            loaded = load_checkpoint(checkpoint)
            if "test_examples" in loaded.metrics:  # written once training has finished
                log(f"[{name}] reusing the trained checkpoint {checkpoint}")
                return loaded.model.eval(), loaded.metrics
        except CheckpointError as error:
            log(f"[{name}] cached checkpoint unusable ({error}); retraining")
            matches = False
    run = TrainingRun(config)
    if matches and load_training_state(checkpoint) is not None:
        resume(run, checkpoint)
        log(f"[{name}] resuming after epoch {run.epoch}")
    log(f"[{name}] training")
    start = time.perf_counter()
    final = train(run, checkpoint, quiet=True)
    log(f"[{name}] done in {time.perf_counter() - start:.0f}s")
    return run.model.eval(), final


def test_points(dataset: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of the official test set (the same points for every arm)."""
    x, y = data.load_dataset(dataset, "test").tensors()
    return x[:n], y[:n]


def train_points(dataset: str, n: int, config: TrialConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of the training split an arm was trained on."""
    split = data.load_dataset(dataset, "train", val_size=config.val_size,
                              split_seed=config.split_seed, subset=config.train_subset)
    x, y = split.tensors()
    return x[:n], y[:n]


# --------------------------------------------------------------------------- reporting
@dataclass(frozen=True)
class Claim:
    """One checkable sentence of a paper and whether our numbers bear it out."""

    text: str
    holds: bool
    evidence: str


def percent(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{100 * value:.2f}"


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]],
                   formats: dict[str, Callable[[Any], str]] | None = None) -> str:
    """Rows as a Markdown table; ``columns`` are (key, header); missing cells print ``—``."""
    formats = formats or {}
    lines = ["| " + " | ".join(header for _, header in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row.get(key)
            cells.append("—" if value is None else formats.get(key, str)(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(claims: Sequence[Claim]) -> str:
    held = sum(c.holds for c in claims)
    if held == len(claims):
        return "holds"
    return "does not hold" if held == 0 else f"holds in part ({held} of {len(claims)})"


def finish(paper: str, args: argparse.Namespace, *, sections: Sequence[tuple[str, str]],
           claims: Sequence[Claim], scale: str, results: dict[str, Any],
           started: float) -> int:
    """Print the tables and the claim verdicts; write results.json / results.md under --out.

    The last printed line is ``<paper> claim: <verdict>``.
    """
    minutes = (time.perf_counter() - started) / 60
    cpu_minutes = time.process_time() / 60
    command = " ".join([".venv/bin/python", *sys.argv])
    lines = [f"# {paper} — reproduction", "", f"Command: `{command}`",
             f"Wall time: {minutes:.1f} min; CPU time {cpu_minutes:.1f} min "
             f"({args.threads} torch threads; on a shared machine the wall time is longer than "
             f"the CPU time, which is what one idle core per thread would take)", "",
             f"Scale: {scale}", ""]
    for title, body in sections:
        lines += [f"## {title}", "", body, ""]
    lines += ["## Claims", ""]
    lines += [f"- {'HOLDS' if c.holds else 'DOES NOT HOLD'}: {c.text} — {c.evidence}"
              for c in claims]
    text = "\n".join(lines)
    (args.out / "results.md").write_text(text + "\n")
    payload = {"paper": paper, "command": command, "minutes": minutes,
               "cpu_minutes": cpu_minutes, "scale": scale,
               "smoke": args.smoke, "claims": [asdict(c) for c in claims],
               "verdict": verdict(claims), **results}
    (args.out / "results.json").write_text(json.dumps(payload, indent=2, default=float))
    print(text)
    print(f"{paper} claim: {verdict(claims)}")
    return 0
