"""Repeat the multi-host fault tests and count, per fault, how many rounds survived.

Each round is one run of ``tests/integration/test_hosts.py`` (a fresh three-host cluster of
network namespaces with PostgreSQL, the S3 store and the MLflow server; root only). A fault
survived when its test passed: every trial in Ray, Optuna and MLflow exactly once, each epoch
logged once, checkpoints there; for the pools, each checkpoint evaluated once, no finished unit
redone, the numbers of an uninterrupted evaluation. Prints one line per fault and a summary.

    sudo .venv/bin/python benchmarks/host_faults.py --rounds 3
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_round(number: int) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "round.xml"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/integration/test_hosts.py", f"--junitxml={report}"], cwd=ROOT,
                       env={**os.environ, "ROBUST_SWEEPS_REQUIRE_HOSTS": "1"})
        outcomes = {}
        for case in ElementTree.parse(report).getroot().iter("testcase"):
            failed = case.find("failure") is not None or case.find("error") is not None
            skipped = case.find("skipped") is not None
            outcomes[case.get("name")] = "failed" if failed else "skipped" if skipped else "passed"
    print(f"round {number}: {time.perf_counter() - start:.0f} s, "
          f"{sum(v == 'passed' for v in outcomes.values())}/{len(outcomes)} passed", flush=True)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    tally: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for number in range(1, args.rounds + 1):
        for name, outcome in one_round(number).items():
            tally[name][outcome] += 1
    for name, counts in tally.items():
        print(f"{name}: {counts['passed']}/{args.rounds} passed"
              + (f", {counts['failed']} failed" if counts["failed"] else ""))
    return 0 if all(c["passed"] == args.rounds for c in tally.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
