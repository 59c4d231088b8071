#!/usr/bin/env bash
# Set up, then run the whole service locally on real MNIST: smoke sweeps of PGD-AT, TRADES and
# EMR on a local Ray cluster, the evaluation pool on their best checkpoints, the leaderboard in
# the embedded sqlite MLflow store, and the HTML report (sweeps/demo.py; --help for options).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python sweeps/demo.py "$@"
