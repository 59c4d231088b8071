"""EMR on WRN-34-10 / CIFAR-10 at the paper's schedule (EMR Sec. 5, Table 3).

100 epochs, SGD lr 0.1 divided by 10 at epochs 60 and 90 (λ_EMR follows the learning rate);
Optuna searches λ_EMR, the temperature t, the weight decay and the base (PGD-AT, TRADES with
β, MART, MAIL). ``--smoke`` runs the same sweep on real MNIST with a small MLP on the CPU.

    ray job submit --working-dir . -- "$PWD/.venv/bin/python" sweeps/emr_wrn.py --smoke
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a Ray job

from sweeps.cli import run_study  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_study("emr_wrn"))
