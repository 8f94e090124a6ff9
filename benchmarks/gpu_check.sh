#!/usr/bin/env bash
# One command for a GPU machine (torch preinstalled, no network):
#
#     bash benchmarks/gpu_check.sh [OUTDIR]
#
# builds the extension in place from source, then runs, most important first: the CUDA tests,
# the GPU benchmark, the huge-tensor test, compute-sanitizer memcheck and racecheck on a small
# forward + backward, torch.compile of the reference at batch 128, the ecosystem tests on CUDA,
# the comparative benchmark against the peers (quick), and the rest of the test suite. Every step
# logs into OUTDIR (default: $OUT/gpu_check when $OUT is set, as on the device machines, else
# benchmarks/results/<gpu>-<time>); a failing step does not stop the later ones; the exit status
# is the number of failed or skipped steps. Each step is time-boxed, and the whole run stays
# under TOTAL_BUDGET_S (default 345 s: leave the command's own limit some seconds more).
#
# A device machine returns at most 8 files from $OUT, so there the folder is packed at the end
# into $OUT/gpu_check.tar.gz, beside copies of the summary and the benchmark tables.
set -u

cd "$(dirname "$0")/.."
START=$(date +%s)
TOTAL_BUDGET_S=${TOTAL_BUDGET_S:-345}
PYTHON=${PYTHON:-python3}

gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 | tr -c 'A-Za-z0-9\n' '_' | tr -d '\n')
default_outdir=benchmarks/results/${gpu_name:-gpu}-$(date +%Y%m%d-%H%M%S)
[[ -n ${OUT:-} ]] && default_outdir=$OUT/gpu_check
OUTDIR=${1:-$default_outdir}
mkdir -p "$OUTDIR"
SUMMARY="$OUTDIR/summary.txt"
: >"$SUMMARY"
failures=0

# run NAME CAP_SECONDS COMMAND...: runs COMMAND with a timeout of min(CAP, time left), logging to
# OUTDIR/NAME.log, and records PASS / FAIL / TIMEOUT / SKIP in the summary.
run() {
  local name=$1 cap=$2
  shift 2
  local left=$((TOTAL_BUDGET_S - ($(date +%s) - START)))
  local limit=$((cap < left ? cap : left))
  local log="$OUTDIR/$name.log"
  if ((limit < 5)); then
    echo "SKIP     $name (out of time)" | tee -a "$SUMMARY"
    failures=$((failures + 1))
    return
  fi
  echo "== $name (limit ${limit}s): $*"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  local dt=$(($(date +%s) - t0))
  local status=PASS
  if ((rc == 124 || rc == 137)); then
    status=TIMEOUT
  elif ((rc != 0)); then
    status="FAIL(rc=$rc)"
  fi
  [[ $status == PASS ]] || failures=$((failures + 1))
  printf '%-8s %-14s %4ss  %s\n' "$status" "$name" "$dt" "$log" | tee -a "$SUMMARY"
  tail -n 3 "$log" | sed 's/^/    /'
}

# The environment.
{
  echo "date: $(date -Is)"
  echo "host: $(hostname)"
  echo "git: $(git rev-parse HEAD 2>/dev/null) $(git status --short 2>/dev/null | wc -l) changed files"
  nvidia-smi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
  command -v nvcc && nvcc --version
  $PYTHON -c "import torch, sys; print('python', sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'devices', torch.cuda.device_count())"
} >"$OUTDIR/environment.log" 2>&1

# 1. Build in place (the .so lands in dropblock_cuda/, so the tests import this checkout).
export MAX_JOBS=${MAX_JOBS:-16}
run build 150 $PYTHON -m pip install --no-build-isolation --no-deps -v -e .
if ! grep -q '^PASS *build' "$SUMMARY"; then
  # No pip / setuptools editable support: the plain setuptools in-place build.
  run build_inplace 120 $PYTHON setup.py build_ext --inplace
fi
run import 30 $PYTHON -c "import dropblock_cuda, torch; v = dropblock_cuda.cuda_version(); print('cuda_version', v); assert v is not None and torch.cuda.is_available()"

# 2. The CUDA tests first (the point of this machine), then the benchmark, so that both get
#    their time even if a later step runs long. No -x: one failure must not hide the others.
run tests_cuda 90 $PYTHON -m pytest tests/test_cuda.py -q -m "not huge" -p no:cacheprovider -rs

# 3. Benchmark (JSON + markdown into OUTDIR, rewritten after every case). The profiler runs once
#    per case: keep CUPTI up between its sessions (pytorch#112507).
export TEARDOWN_CUPTI=0
run bench 90 $PYTHON -m benchmarks.gpu_bench --compile off --out "$OUTDIR"

run tests_huge 60 $PYTHON -m pytest tests -q -m huge -p no:cacheprovider -rs

# 4. compute-sanitizer on a small forward + backward; no caching allocator, so that memcheck
#    sees every allocation's real bounds. Racecheck watches shared memory only: float32 is enough.
SANITIZER=$(command -v compute-sanitizer || true)
[[ -z $SANITIZER && -x /usr/local/cuda/bin/compute-sanitizer ]] && SANITIZER=/usr/local/cuda/bin/compute-sanitizer
if [[ -n $SANITIZER ]]; then
  run memcheck 60 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck --error-exitcode 3 \
    $PYTHON benchmarks/sanitizer_smoke.py
  run racecheck 45 "$SANITIZER" --tool racecheck --error-exitcode 3 $PYTHON benchmarks/sanitizer_smoke.py --quick
else
  echo "SKIP     memcheck/racecheck (compute-sanitizer not found)" | tee -a "$SUMMARY"
fi

# 5. torch.compile of the reference against our forward+backward at batch 128: a step of its own,
#    since compiling (a few graphs: per dtype, then dynamic shapes) takes most of its time.
run bench_compiled 90 $PYTHON -m benchmarks.gpu_bench --compiled-only --out "$OUTDIR/compiled"

# 6. The ecosystem tests on CUDA (torch.compile, AMP, DDP ... on this image's torch).
run tests_ecosystem 60 $PYTHON -m pytest tests/test_ecosystem.py -q -p no:cacheprovider -rs

# 7. The comparative benchmark (python -m benchmarks) on this GPU, quick form: the peers' table.
run bench_peers 45 $PYTHON -m benchmarks --device cuda --quick --no-compile --out "$OUTDIR/peers"

# 8. The rest of the suite (CPU tests CI already runs, torch.compile on this image's torch), less
#    the host emulation of the kernels (compiler-bound, and independent of the GPU and of torch).
run tests_rest 120 $PYTHON -m pytest tests -q -m "not huge" -p no:cacheprovider --ignore=tests/test_cuda.py \
  --ignore=tests/test_ecosystem.py --ignore=tests/test_cuda_emulated.py

echo
echo "gpu_check: $failures failed step(s) in $(($(date +%s) - START))s; logs in $OUTDIR"
cat "$SUMMARY"
for table in "$OUTDIR/gpu_bench.md" "$OUTDIR/compiled/gpu_bench.md"; do
  if [[ -f $table ]]; then
    echo
    cat "$table"
  fi
done

# Pack for the device machine's 8-file limit (only the default folder under $OUT: a folder named
# on the command line is left as it is).
if [[ -n ${OUT:-} && $OUTDIR == "$OUT/gpu_check" ]]; then
  if tar -czf "$OUT/gpu_check.tar.gz" -C "$OUT" gpu_check; then
    cp "$SUMMARY" "$OUT/summary.txt"
    [[ -f $OUTDIR/gpu_bench.md ]] && cp "$OUTDIR/gpu_bench.md" "$OUT/gpu_bench.md"
    [[ -f $OUTDIR/compiled/gpu_bench.md ]] && cp "$OUTDIR/compiled/gpu_bench.md" "$OUT/gpu_bench_compiled.md"
    rm -rf "$OUTDIR"
    echo "packed: $OUT/gpu_check.tar.gz"
  fi
fi
exit $((failures > 125 ? 125 : failures))
