#!/usr/bin/env bash
# Make a throwaway venv at $1 with torch 2.13 (CPU), edgekit and ultralytics (no torchvision), then run the
# YOLOv8 parity test. Usage: bash tests/parity_env.sh /tmp/ulvenv   (EDGEKIT_ASSETS as for the other tests)
set -euo pipefail
VENV="${1:?usage: tests/parity_env.sh VENV_DIR}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
export EDGEKIT_ASSETS="${EDGEKIT_ASSETS:-$(cd "$REPO/.." && pwd)/shared/assets}"
start=$(date +%s)

"$PY" -m venv --clear "$VENV"           # plain venv: nothing from the main environment leaks in
PIP=("$VENV/bin/python" -m pip install -q)
PIN="$(mktemp)"; echo "torch==2.13.0" > "$PIN"
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" --no-deps -e "$REPO"
# edgekit's runtime deps, straight from pyproject.toml (torch is not among them; the constraint keeps it at 2.13.0)
mapfile -t DEPS < <("$VENV/bin/python" -c 'import tomllib,sys; print(*tomllib.load(open(sys.argv[1],"rb"))["project"]["dependencies"], sep="\n")' "$REPO/pyproject.toml")
"${PIP[@]}" -c "$PIN" "pytest>=8" "${DEPS[@]}"
"${PIP[@]}" --no-deps -c "$PIN" -r "$REPO/tests/requirements-parity.txt"
rm -f "$PIN"

"$VENV/bin/python" - <<'PY'
import importlib.util, torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert importlib.util.find_spec("torchvision") is None, "torchvision must not be installed"
PY
echo "parity env: $(( $(date +%s) - start )) s to install"
cd "$REPO"
"$VENV/bin/python" -m pytest tests/test_yolov8_parity.py -q -p no:cacheprovider
