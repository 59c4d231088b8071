"""LMA-AT on ResNet-18 / CIFAR-10 at the paper's settings (LMA-AT Sec. 5.1, Table 4).

130 epochs, lr 0.01, batch 100, weight decay 3.5e-3; Optuna searches τ, δ, α, β and the
weight decay around the paper's τ = 0.2, δ = 0.9, α = 5.345, β = 86.
``--smoke`` runs the same sweep on real MNIST with a small MLP on the CPU.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a Ray job

from sweeps.cli import main  # noqa: E402
from sweeps.spec import SweepSpec  # noqa: E402
from trainables.defenses import preset  # noqa: E402

SPEC = SweepSpec(
    name="lma-at-resnet18-cifar10",
    base={**preset("lma_at", "cifar10_resnet18"), "val_subset": 1000, "bf16": True},
    num_samples=32, max_concurrent=4, cpus_per_trial=4, gpus_per_trial=0.5, grace_period=15,
    reduction_factor=3,
)


def run(argv: list[str] | None = None) -> int:
    return main(SPEC, __doc__, argv, prog="robust-sweeps sweep lma_resnet18")


if __name__ == "__main__":
    sys.exit(run())
