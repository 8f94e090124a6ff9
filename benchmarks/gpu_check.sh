#!/usr/bin/env bash
# One command for a GPU machine (torch preinstalled, no network):
#
#     bash benchmarks/gpu_check.sh [OUTDIR]
#
# builds the extension in place from source, then runs, most important first: the CUDA tests,
# the GPU benchmark, the huge-tensor test, compute-sanitizer memcheck and racecheck on a small
# forward + backward, the CUDA tests of tests/test_ecosystem.py (graph-captured training,
# torch.compile), torch.compile of the reference at batch 128, and the comparative benchmark
# against the peers (quick). The CPU tests are left to CI. Every step logs into OUTDIR (default
# benchmarks/results/<gpu>-<time>); a failing step does not stop the later ones; the exit status
# is the number of failed or skipped steps. Each step is time-boxed, and the whole run stays
# under TOTAL_BUDGET_S (default 345 s: give the command's own limit 30 s more).
#
# On a device machine ($OUT set, no OUTDIR given), which returns at most 8 files from $OUT, the
# logs are written to a temporary folder and packed after every step into $OUT/gpu_check.tar.gz,
# with the summary and the benchmark tables beside it: a run killed midway still returns them.
set -u

cd "$(dirname "$0")/.."
START=$(date +%s)
TOTAL_BUDGET_S=${TOTAL_BUDGET_S:-345}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 | tr -c 'A-Za-z0-9\n' '_' | tr -d '\n')
PUBLISH_TO=
if [[ $# -ge 1 ]]; then
  OUTDIR=$1
elif [[ -n ${OUT:-} ]]; then
  OUTDIR=$(mktemp -d)/gpu_check
  PUBLISH_TO=$OUT
else
  OUTDIR=benchmarks/results/${gpu_name:-gpu}-$(date +%Y%m%d-%H%M%S)
fi
mkdir -p "$OUTDIR"
SUMMARY="$OUTDIR/summary.txt"
: >"$SUMMARY"
failures=0

# publish: the folder packed into $PUBLISH_TO, with the summary and the tables beside it.
publish() {
  [[ -n $PUBLISH_TO ]] || return 0
  tar -czf "$PUBLISH_TO/gpu_check.tar.gz.part" -C "$(dirname "$OUTDIR")" gpu_check &&
    mv "$PUBLISH_TO/gpu_check.tar.gz.part" "$PUBLISH_TO/gpu_check.tar.gz"
  cp "$SUMMARY" "$PUBLISH_TO/summary.txt"
  [[ -f $OUTDIR/gpu_bench.md ]] && cp "$OUTDIR/gpu_bench.md" "$PUBLISH_TO/gpu_bench.md"
  [[ -f $OUTDIR/compiled/gpu_bench.md ]] && cp "$OUTDIR/compiled/gpu_bench.md" "$PUBLISH_TO/gpu_bench_compiled.md"
  return 0
}

# run NAME CAP_SECONDS COMMAND...: runs COMMAND with a timeout of min(CAP, time left less a
# margin for the kill), logging to OUTDIR/NAME.log, and records PASS / FAIL / TIMEOUT / SKIP in
# the summary. A timeout interrupts (SIGINT), so that pytest still reports what failed so far.
# With UNSUPPORTED_IF set, a log matching that pattern makes the step a SKIP (a tool that
# refuses this machine), not a failure.
run() {
  local name=$1 cap=$2
  shift 2
  local left=$((TOTAL_BUDGET_S - ($(date +%s) - START) - 15))
  local limit=$((cap < left ? cap : left))
  local log="$OUTDIR/$name.log"
  if ((limit < 20)); then
    echo "SKIP     $name (out of time)" | tee -a "$SUMMARY"
    failures=$((failures + 1))
    publish
    return
  fi
  echo "== $name (limit ${limit}s): $*"
  local t0=$(date +%s)
  timeout -s INT --kill-after=10 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  local dt=$(($(date +%s) - t0))
  local status=PASS
  if [[ -n ${UNSUPPORTED_IF:-} ]] && grep -q -- "$UNSUPPORTED_IF" "$log"; then
    status=SKIP
  elif ((rc == 124 || rc == 137)); then
    status=TIMEOUT
  elif ((rc != 0)); then
    status="FAIL(rc=$rc)"
  fi
  [[ $status == PASS || $status == SKIP ]] || failures=$((failures + 1))
  printf '%-8s %-15s %4ss  %s\n' "$status" "$name" "$dt" "$log" | tee -a "$SUMMARY"
  tail -n 3 "$log" | sed 's/^/    /'
  publish
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

PYTEST=($PYTHON -m pytest -q -p no:cacheprovider -rfEs --durations=10)

# 1. Build in place (the .so lands in dropblock_cuda/, so the tests import this checkout).
export MAX_JOBS=${MAX_JOBS:-16}
run build 150 $PYTHON -m pip install --no-build-isolation --no-deps --no-index --disable-pip-version-check -v -e .
if ! grep -q '^PASS *build' "$SUMMARY" && ! grep -qE '^ *\[[0-9]+/[0-9]+\]' "$OUTDIR/build.log"; then
  # pip failed before compiling anything (no editable support): the plain setuptools in-place build.
  run build_inplace 120 $PYTHON setup.py build_ext --inplace
fi
run import 30 $PYTHON -c "import dropblock_cuda, torch; v = dropblock_cuda.cuda_version(); print('cuda_version', v); assert v is not None and torch.cuda.is_available()"

# 2. The CUDA tests first (the point of this machine), then the benchmark, so that both get
#    their time even if a later step runs long. No -x: one failure must not hide the others.
run tests_cuda 90 "${PYTEST[@]}" tests/test_cuda.py -m "not huge"

# 3. Benchmark (JSON + markdown into OUTDIR, rewritten after every case). The profiler runs last,
#    once per case: keep CUPTI up between its sessions (pytorch#112507).
export TEARDOWN_CUPTI=0
run bench 90 $PYTHON -m benchmarks.gpu_bench --compile off --out "$OUTDIR"

run tests_huge 60 "${PYTEST[@]}" tests/test_cuda.py tests/test_mask_law.py -m huge

# 4. compute-sanitizer on a small forward + backward; no caching allocator, so that memcheck
#    sees every allocation's real bounds. Racecheck watches shared memory only: float32 is enough.
#    Some machines' runtimes refuse the tool ("Device not supported"): then the steps are skipped.
SANITIZER=$(command -v compute-sanitizer || true)
[[ -z $SANITIZER && -x /usr/local/cuda/bin/compute-sanitizer ]] && SANITIZER=/usr/local/cuda/bin/compute-sanitizer
if [[ -n $SANITIZER ]]; then
  UNSUPPORTED_IF="Device not supported" run memcheck 60 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" \
    --tool memcheck --error-exitcode 3 $PYTHON benchmarks/sanitizer_smoke.py
  UNSUPPORTED_IF="Device not supported" run racecheck 45 "$SANITIZER" --tool racecheck --error-exitcode 3 \
    $PYTHON benchmarks/sanitizer_smoke.py --quick
else
  echo "SKIP     memcheck/racecheck (compute-sanitizer not found)" | tee -a "$SUMMARY"
fi

# 5. The ecosystem tests that need CUDA: a graph-captured training step, torch.compile on CUDA
#    (fullgraph and reduce-overhead) on this image's torch. Their CPU twins run in CI.
run tests_ecosystem 120 "${PYTEST[@]}" tests/test_ecosystem.py -k cuda

# 6. torch.compile of the reference against our forward+backward at batch 128: a step of its own,
#    since compiling (a few graphs: per dtype, then dynamic shapes) takes most of its time.
run bench_compiled 90 $PYTHON -m benchmarks.gpu_bench --compiled-only --out "$OUTDIR/compiled"

# 7. The comparative benchmark (python -m benchmarks) on this GPU, quick form: the peers' table.
run bench_peers 45 $PYTHON -m benchmarks --device cuda --quick --no-compile --out "$OUTDIR/peers"

echo
echo "gpu_check: $failures failed step(s) in $(($(date +%s) - START))s; logs in $OUTDIR"
cat "$SUMMARY"
for table in "$OUTDIR/gpu_bench.md" "$OUTDIR/compiled/gpu_bench.md"; do
  if [[ -f $table ]]; then
    echo
    cat "$table"
  fi
done
[[ -n $PUBLISH_TO ]] && echo "packed: $PUBLISH_TO/gpu_check.tar.gz"
exit $((failures > 125 ? 125 : failures))
