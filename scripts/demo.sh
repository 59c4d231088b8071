#!/usr/bin/env bash
# Set up, then run the main job on the embedded default: real MNIST, local, no cluster needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m trainables.train --config configs/mnist_mlp_pgd_at.yaml "$@"
