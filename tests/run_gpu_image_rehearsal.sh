#!/usr/bin/env bash
# A CPU rehearsal of the GPU machine's Python side, for a session without a GPU: the versions of
# that machine's image (benchmarks/results/README.md; /work/.library/device/KINDS.md has the list),
# the build exactly as benchmarks/gpu_check.sh runs it, then the whole test suite (the CUDA tests
# skip here; the rest find what that torch breaks before a GPU run does). Not part of CI: the
# environment is a 5-6 GB download from PyPI, about 2 minutes here.
#
#     bash tests/run_gpu_image_rehearsal.sh [pytest args...]
#
# Environment: REHEARSAL_VENV (default .venv-gpu-image), REHEARSAL_PYTHON (default python3.12),
# REHEARSAL_TORCH / REHEARSAL_TORCHVISION (default 2.11.0 / 0.26.0, the image's as of 2026-11).
# The test environment is tests/requirements.txt with the image's torch and torchvision, less what
# the image lacks (`dropblock`, `expecttest`, and the style tools ruff and clang-format, whose test
# skips without them), so that a test that needs them without skipping fails here first; plus
# pytest-xdist and setuptools, which the check's build and pytest steps use.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${REHEARSAL_VENV:-.venv-gpu-image}
python=${REHEARSAL_PYTHON:-python3.12}
torch_version=${REHEARSAL_TORCH:-2.11.0}
torchvision_version=${REHEARSAL_TORCHVISION:-0.26.0}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
venv=$(cd "$venv" && pwd)
mapfile -t needs < <(grep -v -E '^[[:space:]]*(#|$)' tests/requirements.txt | grep -v -E '^(torch|torchvision)==' |
  grep -v -x -E 'dropblock|expecttest|ruff|clang-format')
"$venv/bin/pip" install --quiet --disable-pip-version-check "torch==$torch_version" \
  "torchvision==$torchvision_version" "${needs[@]}" pytest-xdist setuptools

# The build step of gpu_check.sh: in place, no index, for sm_90 (the H100/H200 the device lends).
# Into a copy of the tree: the in-place build must not replace the main suite's dropblock_cuda/_C*.so.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git ls-files -z --cached --others --exclude-standard | xargs -0 tar cf - --ignore-failed-read 2>/dev/null | tar xf - -C "$work"
cd "$work"
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-2} "$venv/bin/python" -m pip install \
  --quiet --no-build-isolation --no-deps --no-index --disable-pip-version-check -e .
"$venv/bin/python" -c "import dropblock_cuda, torch; print('built against torch', torch.__version__, '; CUDA', dropblock_cuda.cuda_version())"
# What gpu_check.sh's pytest steps collect must collect without the missing packages.
"$venv/bin/python" -m pytest -q -p no:cacheprovider --collect-only -m cuda tests >/dev/null
"$venv/bin/python" -m pytest tests -p no:cacheprovider -n "${MAX_JOBS:-2}" --deselect tests/test_cmake_build.py "$@"
