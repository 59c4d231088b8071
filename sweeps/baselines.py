"""TRADES and MART baselines on WRN-34-10 / CIFAR-10, tuned the same way as the new defenses.

``--defense trades`` (default; β and weight decay searched around the TRADES paper's β = 6) or
``--defense mart`` (β around MART's 6). The point of a fair comparison is that baselines get the
same tuning budget as the method they are compared with. ``--smoke`` runs on real MNIST.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a Ray job

from sweeps.cli import run_study  # noqa: E402

if __name__ == "__main__":
    chooser = argparse.ArgumentParser(add_help=False)
    chooser.add_argument("--defense", choices=("trades", "mart"), default="trades")
    known, rest = chooser.parse_known_args()
    sys.exit(run_study(f"{known.defense}_wrn", rest, prog="sweeps/baselines.py"))
