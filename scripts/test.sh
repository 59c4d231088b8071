#!/usr/bin/env bash
# Set up, lint, then run every test (unit and integration) on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/system-packages.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
