#!/usr/bin/env bash
# Sets up a virtual environment, builds dropblock_cuda from source and runs the comparative
# benchmark. Usage: bash benchmarks/run.sh [benchmark args...]   (e.g. --quick)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${DROPBLOCK_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
. "$venv/bin/activate"
pip install --quiet --disable-pip-version-check -r benchmarks/requirements.txt ninja pybind11
MAX_JOBS=${MAX_JOBS:-2} pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
python -m benchmarks "$@"
