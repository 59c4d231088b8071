"""How fast ``robust-sweeps --help`` and every subcommand's ``--help`` answer, beside a bare
interpreter start, median of ``--rounds`` interleaved rounds (fresh processes each time).

    .venv/bin/python benchmarks/cli_help.py --rounds 5

Prints one line per command (seconds, and × a bare ``python -c pass``); the last line is
``slowest help: S s (target < 1.5 s)``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["", "train", "sweep", "sweep emr_wrn", "sweep lma_resnet18", "pool", "evaluate",
            "verify", "report", "leaderboard", "compare"]


def seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    console = str(Path(sys.executable).parent / "robust-sweeps")
    runs = {"(bare python)": [sys.executable, "-c", "pass"]}
    runs |= {f"robust-sweeps {c} --help".replace("  ", " "): [console, *c.split(),
                                                              "--help"] for c in COMMANDS}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, argv in runs.items():
            times[name].append(seconds(argv))
    bare = statistics.median(times["(bare python)"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<36} {median:6.3f} s  {median / bare:5.1f}× bare python")
    slowest = max(statistics.median(v) for k, v in times.items() if k != "(bare python)")
    print(f"slowest help: {slowest:.3f} s (target < 1.5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
