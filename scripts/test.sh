#!/usr/bin/env bash
# Set up, lint (ruff, the import layers), then run every test (unit and integration).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/system-packages.sh
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache  # the layers (pyproject.toml, [tool.importlinter])
exec .venv/bin/python -m pytest "$@"
