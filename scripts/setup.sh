#!/usr/bin/env bash
# Create .venv with Python 3.11 and install the pinned stack; a no-op when already done.
#   torch / torchvision come from pip (a local wheel cache is used when the machine has one);
#   everything else is installed from requirements.lock with uv, which resolves in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
UV_PIN="uv==0.13.9"
stamp="$VENV/.setup-complete"
want=$(cat requirements.lock pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found (Python 3.11 is required)" >&2; exit 1; }
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "setup: $PYTHON is not Python 3.11" >&2; exit 1; }

echo "setup: creating $VENV and installing the pinned stack (a few minutes the first time)" >&2
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $TORCH_PINS "$UV_PIN" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
"$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" -r requirements.lock
"$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" --no-deps -e .
"$VENV/bin/python" -c 'import torch, torchvision, ray, optuna, mlflow, pyautoattack, safetensors'
echo "$want" > "$stamp"
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))" >&2
