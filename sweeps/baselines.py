"""TRADES and MART baselines on WRN-34-10 / CIFAR-10, tuned the same way as the new defenses.

``--defense trades`` (default; β and weight decay searched around the TRADES paper's β = 6) or
``--defense mart`` (β around MART's 6). The point of a fair comparison is that baselines get the
same tuning budget as the method they are compared with. ``--smoke`` runs on real MNIST.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a Ray job

from sweeps.cli import main  # noqa: E402
from sweeps.spec import SweepSpec  # noqa: E402
from trainables.defenses import preset  # noqa: E402

PRESETS = {"trades": "trades_paper", "mart": "mart_paper"}
WRN_CIFAR = {"dataset": "cifar10", "model": "wrn-34-10", "epochs": 100, "lr": 0.1,
             "lr_milestones": [75, 90], "batch_size": 128, "val_subset": 1000, "bf16": True}


def spec_for(defense: str) -> SweepSpec:
    return SweepSpec(name=f"{defense}-wrn-34-10-cifar10",
                     base={**WRN_CIFAR, **preset(defense, PRESETS[defense])},
                     num_samples=16, max_concurrent=4, cpus_per_trial=4, gpus_per_trial=1.0,
                     grace_period=10, reduction_factor=3)


def run(argv: list[str] | None = None) -> int:
    chooser = argparse.ArgumentParser(add_help=False)
    chooser.add_argument("--defense", choices=sorted(PRESETS), default="trades")
    known, rest = chooser.parse_known_args(argv)
    return main(spec_for(known.defense), __doc__, argv=rest, prog="robust-sweeps sweep baselines")


if __name__ == "__main__":
    sys.exit(run())
