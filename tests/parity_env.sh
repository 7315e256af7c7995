#!/usr/bin/env bash
# Test-only environment for tests/test_yolov8_parity.py: torch first, ultralytics with --no-deps (never torchvision).
# Usage: bash tests/parity_env.sh [VENV_DIR]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$repo/.venv-parity}"
python -m venv "$venv" && . "$venv/bin/activate"
pip install -q torch==2.13.0
pip install -q -e "$repo[test]"
pip install -q --no-deps -r "$repo/tests/requirements-parity.txt"
if python -c "import torchvision" 2>/dev/null; then echo "torchvision must not be installed" >&2; exit 1; fi
cd "$repo" && python -m pytest -q tests/test_yolov8_parity.py
