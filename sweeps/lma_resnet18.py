"""LMA-AT on ResNet-18 / CIFAR-10 at the paper's settings (LMA-AT Sec. 5.1, Table 4).

130 epochs, lr 0.01, batch 100, weight decay 3.5e-3; Optuna searches τ, δ, α, β and the
weight decay around the paper's τ = 0.2, δ = 0.9, α = 5.345, β = 86.
``--smoke`` runs the same sweep on real MNIST with a small MLP on the CPU.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a Ray job

from sweeps.cli import run_study  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_study("lma_resnet18"))
