"""Average Margin Regularizer on MNIST (AMR Sec. 5, Appendix F).

The paper's MNIST CNN (TRADES' small CNN here) with λ = 0.1, τ = 10, β = 1e-3 as the starting
point; Optuna searches λ, τ, β and the weight decay. Small enough to run on CPUs;
``--smoke`` shrinks it to a small MLP on an MNIST slice.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a Ray job

from sweeps.cli import main  # noqa: E402
from sweeps.spec import SweepSpec  # noqa: E402
from trainables.defenses import preset  # noqa: E402

SPEC = SweepSpec(
    name="amr-mnist",
    base={**preset("amr", "amr_mnist_cnn"), "epochs": 50, "val_subset": 2000},
    num_samples=24, max_concurrent=4, cpus_per_trial=2, gpus_per_trial=0.0, grace_period=5,
    reduction_factor=3,
)


def run(argv: list[str] | None = None) -> int:
    return main(SPEC, __doc__, argv, prog="robust-sweeps sweep amr_mnist")


if __name__ == "__main__":
    sys.exit(run())
