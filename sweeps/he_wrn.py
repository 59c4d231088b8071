"""Hypersphere Embedding on WRN-34-10 / CIFAR-10 (HE Sec. 4, Table 6).

PGD-AT+HE at the paper's schedule (100 epochs, lr 0.1 ÷10 at 75 and 90); Optuna searches the
scale s, the angular margin m, the framework (PGD-AT, ALP, TRADES, FastAT, FreeAT) with its own
knobs, and the weight decay. ``--smoke`` runs it on real MNIST with TRADES' small CNN on the CPU.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a Ray job

from sweeps.cli import run_study  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_study("he_wrn"))
