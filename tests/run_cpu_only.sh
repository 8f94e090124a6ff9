#!/usr/bin/env bash
# The CPU-only build: dropblock_cuda against the CPU build of torch 2.13.0 (no CUDA, an older
# torch than the main suite's). setup.py must fall back to the CPU ops and say so, the package
# must report cuda_version() None, and the core tests must pass.
# Usage: bash tests/run_cpu_only.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${DROPBLOCK_CPU_VENV:-.venv-cpu}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
venv=$(cd "$venv" && pwd)
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements-cpu-only.txt

# Built from a copy of the tree: the main suite's in-place build owns build/ and
# dropblock_cuda/_C*.so here, and a build against another torch must not touch them.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
git ls-files -z --cached --others --exclude-standard | xargs -0 tar cf - --ignore-failed-read 2>/dev/null | tar xf - -C "$src"
mkdir -p build
log=$root/build/cpu-only-build.log
(cd "$src" && MAX_JOBS=${MAX_JOBS:-2} "$venv/bin/pip" install -v --disable-pip-version-check --no-build-isolation \
  --no-deps . >"$log" 2>&1) || { tail -50 "$log"; exit 1; }
grep -q "dropblock_cuda: building the CPU ops only" "$log" || { echo "setup.py did not announce the CPU-only build"; exit 1; }
(cd "$venv" && "$venv/bin/python" -c "
import dropblock_cuda, torch
assert 'site-packages' in dropblock_cuda.__file__, dropblock_cuda.__file__
assert torch.version.cuda is None and dropblock_cuda.cuda_version() is None
print('dropblock_cuda CPU-only build on torch', torch.__version__)
")

# The venv's pytest (not python -m pytest, which would put the source tree first on sys.path)
# imports the installed package.
"$venv/bin/pytest" tests/test_ops.py tests/test_mask_law.py tests/test_compile.py tests/test_scheduler.py \
  tests/test_cuda.py "$@"
