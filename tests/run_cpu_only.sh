#!/usr/bin/env bash
# The CPU-only build: dropblock_cuda against the CPU build of torch 2.13.0 (no CUDA, an older
# torch than the main suite's), from its sdist. setup.py must fall back to the CPU ops and say so,
# the package must report cuda_version() None, and the core tests must pass.
# Usage: bash tests/run_cpu_only.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${DROPBLOCK_CPU_VENV:-.venv-cpu}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
venv=$(cd "$venv" && pwd)
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements-cpu-only.txt

# Built the way a user builds a release: an sdist made from a copy of the tree (the main suite's
# in-place build owns build/ and dropblock_cuda/_C*.so here, and a build against another torch must
# not touch them), then a wheel made from that sdist alone, installed into the venv. A source or
# header the sdist lacks fails here.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/tree" "$work/dist"
git ls-files -z --cached --others --exclude-standard | xargs -0 tar cf - --ignore-failed-read 2>/dev/null | tar xf - -C "$work/tree"
mkdir -p build
log=$root/build/cpu-only-build.log
(cd "$work/tree" && "$venv/bin/python" -m build --sdist --no-isolation --outdir "$work/dist" . >"$log" 2>&1) \
  || { tail -50 "$log"; exit 1; }
sdist=$(ls "$work"/dist/dropblock_cuda-*.tar.gz)
(cd "$work/dist" && MAX_JOBS=${MAX_JOBS:-2} "$venv/bin/pip" wheel -v --disable-pip-version-check --no-build-isolation \
  --no-deps -w "$work/dist" "$sdist" >>"$log" 2>&1) || { tail -50 "$log"; exit 1; }
grep -q "dropblock_cuda: building the CPU ops only" "$log" || { echo "setup.py did not announce the CPU-only build"; exit 1; }
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "$work"/dist/dropblock_cuda-*.whl
# A smoke test from outside the source tree: the package from site-packages, forward and backward.
(cd "$work" && "$venv/bin/python" -c "
import importlib.metadata, dropblock_cuda, torch
assert 'site-packages' in dropblock_cuda.__file__, dropblock_cuda.__file__
assert torch.version.cuda is None and dropblock_cuda.cuda_version() is None
assert dropblock_cuda.__version__ == importlib.metadata.version('dropblock_cuda')
x = torch.randn(2, 3, 16, 16, requires_grad=True)
y = dropblock_cuda.DropBlock2d(0.3, 3)(x)
y.sum().backward()
assert ((x.grad == 0) == (y == 0)).all() and (y == 0).any()
print('dropblock_cuda', dropblock_cuda.__version__, 'from its sdist, CPU-only, on torch', torch.__version__)
")

# The venv's pytest (not python -m pytest, which would put the source tree first on sys.path)
# imports the installed package.
"$venv/bin/pytest" tests/test_api.py tests/test_build_info.py tests/test_mask_path_switch.py tests/test_mask_law.py \
  tests/test_compile.py tests/test_scheduler.py tests/test_misuse.py tests/test_func.py tests/test_cuda.py "$@"
