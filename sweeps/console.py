"""``robust-sweeps``: one command line for the whole service.

Each subcommand is the project's own command line for that job, imported only when it runs,
so ``robust-sweeps --help`` and every ``robust-sweeps CMD --help`` answer at once and the ones
that read results never load Ray.
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple


class Command(NamedTuple):
    module: str
    function: str
    summary: str


COMMANDS = {
    "train": Command("trainables.train", "main", "train one model, no Ray (--config, --resume)"),
    "sweep": Command("sweeps.cli", "sweep", "run or resume a study's sweep on Ray"),
    "pool": Command("attacks.pool_cli", "main", "evaluate every published checkpoint"),
    "evaluate": Command("attacks.evaluate_cli", "main", "evaluate one checkpoint"),
    "verify": Command("attacks.verify_cli", "main",
                      "re-check a leaderboard row from its kept adversarial points"),
    "report": Command("dashboards.cli", "report", "render the static HTML report"),
    "leaderboard": Command("dashboards.cli", "leaderboard", "print the ranked leaderboard"),
    "compare": Command("dashboards.cli", "compare",
                       "exact McNemar test between two rows or two sweeps"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    return ("usage: robust-sweeps COMMAND [flags]    (robust-sweeps COMMAND --help)\n\n"
            "Hyperparameter sweeps and honest robustness benchmarks for adversarial training.\n\n"
            "commands:\n" + "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"robust-sweeps: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    saved, sys.argv = sys.argv, [f"robust-sweeps {argv[0]}", *argv[1:]]  # argparse's prog
    try:
        result = getattr(importlib.import_module(command.module), command.function)(argv[1:])
    finally:
        sys.argv = saved
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
