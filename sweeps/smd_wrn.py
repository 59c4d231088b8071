"""SMD, the parameter-free control: WRN-28-4 / CIFAR-10 at the paper's settings, seeds only.

SMD has no knobs (SMD Sec. 4), so the sweep varies only the seed: its spread is the noise floor
against which tuned defenses are compared. ``--smoke`` runs on real MNIST with a small MLP.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a Ray job

from sweeps.cli import run_study  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_study("smd_wrn"))
