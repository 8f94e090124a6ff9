#!/usr/bin/env bash
# Sets up a virtual environment, builds dropblock_cuda from source (setup.py and CMake) and
# runs the test suite. Usage: bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${DROPBLOCK_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
. "$venv/bin/activate"
pip install --quiet --disable-pip-version-check -r tests/requirements.txt
MAX_JOBS=${MAX_JOBS:-2} pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
python -c "import dropblock_cuda as d; print('dropblock_cuda built; CUDA version:', d.cuda_version())"

# The CMake build of the same sources, loaded by tests/test_cmake_build.py.
mkdir -p build
cmake -S . -B build/cmake -DCMAKE_PREFIX_PATH="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
  -DDROPBLOCK_WITH_CUDA="${DROPBLOCK_CMAKE_CUDA:-AUTO}" > build/cmake.log 2>&1 || { cat build/cmake.log; exit 1; }
cmake --build build/cmake -j "${MAX_JOBS:-2}" >> build/cmake.log 2>&1 || { tail -50 build/cmake.log; exit 1; }
export DROPBLOCK_CMAKE_LIBRARY="$PWD/build/cmake/libdropblock_cuda_ops.so"

python -m pytest tests "$@"
