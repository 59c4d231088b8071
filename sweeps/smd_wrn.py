"""SMD, the parameter-free control: WRN-28-4 / CIFAR-10 at the paper's settings, seeds only.

SMD has no knobs (SMD Sec. 4), so the sweep varies only the seed: its spread is the noise floor
against which tuned defenses are compared. ``--smoke`` runs on real MNIST with a small MLP.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a Ray job

from sweeps.cli import main  # noqa: E402
from sweeps.spec import SweepSpec  # noqa: E402
from trainables.defenses import preset  # noqa: E402

SPEC = SweepSpec(
    name="smd-wrn-28-4-cifar10",
    base={**preset("smd", "cifar10_paper"), "val_subset": 1000, "bf16": True},
    num_samples=5, max_concurrent=5, cpus_per_trial=4, gpus_per_trial=1.0, seeds_only=True,
    sampler="random", early_stopping=False,
)


def run(argv: list[str] | None = None) -> int:
    return main(SPEC, __doc__, argv, prog="robust-sweeps sweep smd_wrn")


if __name__ == "__main__":
    sys.exit(run())
