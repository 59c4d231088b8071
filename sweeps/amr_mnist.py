"""Average Margin Regularizer on MNIST (AMR Sec. 5, Appendix F).

The paper's MNIST CNN (TRADES' small CNN here) with λ = 0.1, τ = 10, β = 1e-3 as the starting
point; Optuna searches λ, τ, β and the weight decay. Small enough to run on CPUs;
``--smoke`` shrinks it to a small MLP on an MNIST slice.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a Ray job

from sweeps.cli import run_study  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_study("amr_mnist"))
