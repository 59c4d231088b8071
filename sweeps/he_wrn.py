"""Hypersphere Embedding on WRN-34-10 / CIFAR-10 (HE Sec. 4, Table 6).

PGD-AT+HE at the paper's schedule (100 epochs, lr 0.1 ÷10 at 75 and 90); Optuna searches the
scale s, the angular margin m, the framework (PGD-AT, ALP, TRADES, FastAT, FreeAT) with its own
knobs, and the weight decay. ``--smoke`` runs it on real MNIST with TRADES' small CNN on the CPU.
"""

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a Ray job

from sweeps.cli import main  # noqa: E402
from sweeps.spec import SweepSpec  # noqa: E402
from trainables.defenses import preset  # noqa: E402

SPEC = SweepSpec(
    name="he-wrn-34-10-cifar10",
    base={**preset("he", "pgd_at_he_cifar10"), "val_subset": 1000, "bf16": True},
    num_samples=32, max_concurrent=4, cpus_per_trial=4, gpus_per_trial=1.0, grace_period=10,
    reduction_factor=3,
)


def smoke_model(spec: SweepSpec, args) -> SweepSpec:
    if args.smoke:  # the cosine head is exercised on a convolutional network
        return dataclasses.replace(spec, base={**spec.base, "model": "small_cnn",
                                               "model_params": {}})
    return spec


def run(argv: list[str] | None = None) -> int:
    return main(SPEC, __doc__, argv, adjust=smoke_model, prog="robust-sweeps sweep he_wrn")


if __name__ == "__main__":
    sys.exit(run())
