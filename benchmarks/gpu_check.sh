#!/usr/bin/env bash
# One command for a GPU machine (torch preinstalled, no network), under 7 minutes:
#
#     bash benchmarks/gpu_check.sh [OUTDIR]      # or: bash benchmarks/gpu_check.sh --plan
#
# Steps, in order (cap = the most seconds a step may take; "optional" steps run only when the
# time left still holds every later required step's cap):
#   build            the extension in place, for the visible GPU only (TORCH_CUDA_ARCH_LIST), MAX_JOBS =
#                    cores; then an import check
#   tests_cuda       tests/test_cuda.py, every test marked `cuda` (bit identity with the CPU, the
#                    concurrency test, capture, streams, vector widths, the huge-tensor test)
#   bench            benchmarks/gpu_bench.py: the performance targets (its TARGETS) against a
#                    device-to-device copy and the peers
#   memcheck         compute-sanitizer memcheck on benchmarks/sanitizer_smoke.py
#   racecheck        (optional) compute-sanitizer racecheck on its float32 part
#   tests_ecosystem  every other test marked `cuda` (tests/test_ecosystem.py's graph-captured training
#                    and torch.compile, the misuse tests on CUDA tensors, ...)
#   bench_peers      the comparative benchmark (python -m benchmarks) on this GPU, quick form
#   train_step       (optional) benchmarks/train_step.py eagerly on a timm and a torchvision ResNet-50:
#                    DropBlock's cost in a training step (batch 128 or what fits, bf16 autocast,
#                    channels_last), with the step's peak memory
#   bench_compiled   (optional) gpu_bench --compiled-only: ours against torch.compile of torchvision's
#   train_step_compiled (optional) the training step of the torchvision ResNet-50 under torch.compile
#
# The CPU tests are CI's; the pytest steps run in 4 processes when pytest-xdist is installed (the
# GPU image has it). Each step is time-boxed (SIGINT at its limit, so that pytest still
# reports; SIGKILL KILL_AFTER_S later); a failing step does not stop the later ones. The exit
# status is the number of FAILED steps (failed or timed out); a step skipped (out of time, not
# selected, no build, a tool that refuses this machine) is listed as SKIP with its reason and does
# not count. The summary (OUTDIR/summary.txt, printed last) gives each step's verdict, time and a
# one-line result, then each performance target met or not with its worst measured ratio (gpu_bench's
# and train_step's).
# Caps are checked against TOTAL_BUDGET_S (default 400 s: give the command's own limit 30 s more)
# by --plan, which CI runs (tests/test_benchmark.py, with PYTHON=true for a dry run of the rest).
#
# Environment: TOTAL_BUDGET_S; PYTHON (default python3); CAP_<step>=SECONDS overrides a cap;
# GPU_CHECK_STEPS="bench memcheck" runs only those steps (a rerun on a machine that built already);
# SANITIZER (default: compute-sanitizer on PATH or in /usr/local/cuda/bin); MIN_STEP_S (default 20:
# a step that would get less is skipped).
#
# Logs go to OUTDIR (default benchmarks/results/<gpu>-<time>). On a device machine ($OUT set, no
# OUTDIR given), which returns at most 8 files from $OUT, the logs are written to a temporary
# folder and packed after every step into $OUT/gpu_check.tar.gz, with summary.txt and the
# benchmark tables beside it (at most 6 files): a run killed midway still returns them.
set -u

cd "$(dirname "$0")/.."
START=$(date +%s)
TOTAL_BUDGET_S=${TOTAL_BUDGET_S:-400}
PYTHON=${PYTHON:-python3}
KILL_AFTER_S=5
SETUP_S=10          # the environment log, before the first step
STEP_OVERHEAD_S=6   # per step beyond its cap: the grace after SIGINT, packing the logs
MIN_STEP_S=${MIN_STEP_S:-20}  # a step given less than this is skipped, not started
export PYTHONUNBUFFERED=1

# name, cap (s), required (1) or optional (0). Required caps plus overheads fit the budget.
STEPS=(
  "build 50 1"
  "tests_cuda 95 1"
  "bench 50 1"
  "memcheck 50 1"
  "racecheck 40 0"
  "tests_ecosystem 70 1"
  "bench_peers 35 1"
  "train_step 45 0"
  "bench_compiled 75 0"
  "train_step_compiled 120 0"
)

cap_of() {  # the cap of step $1: CAP_<name> or the table's
  local entry name cap required override
  for entry in "${STEPS[@]}"; do
    read -r name cap required <<<"$entry"
    if [[ $name == "$1" ]]; then
      override="CAP_$name"
      echo "${!override:-$cap}"
      return
    fi
  done
}

# The seconds that the required steps after step $1 may take at most (caps plus overheads).
reserve_after() {
  local entry name cap required after=0 total=0
  for entry in "${STEPS[@]}"; do
    read -r name cap required <<<"$entry"
    if ((after && required)); then
      total=$((total + $(cap_of "$name") + STEP_OVERHEAD_S))
    fi
    [[ $name == "$1" ]] && after=1
  done
  echo "$total"
}

plan() {  # prints the steps and whether the required ones fit the budget; status 0 if they do
  local entry name cap required need=$SETUP_S
  printf '%-20s %5s  %s\n' step cap kind
  for entry in "${STEPS[@]}"; do
    read -r name cap required <<<"$entry"
    cap=$(cap_of "$name")
    printf '%-20s %5s  %s\n' "$name" "$cap" "$( ((required)) && echo required || echo optional)"
    ((required)) && need=$((need + cap + STEP_OVERHEAD_S))
  done
  echo "required: ${need} s (caps + ${STEP_OVERHEAD_S} s per step + ${SETUP_S} s set-up) of a ${TOTAL_BUDGET_S} s budget"
  ((need <= TOTAL_BUDGET_S))
}

if [[ ${1:-} == --plan ]]; then
  plan
  exit
fi

gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)
compute_cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' ')
PUBLISH_TO=
if [[ $# -ge 1 ]]; then
  OUTDIR=$1
elif [[ -n ${OUT:-} ]]; then
  OUTDIR=$(mktemp -d)/gpu_check
  PUBLISH_TO=$OUT
else
  OUTDIR=benchmarks/results/$(tr -c 'A-Za-z0-9\n' '_' <<<"${gpu_name:-gpu}" | tr -d '\n')-$(date +%Y%m%d-%H%M%S)
fi
mkdir -p "$OUTDIR"
SUMMARY="$OUTDIR/summary.txt"
STEP_LINES=()
failures=0
skipped=0
NO_BUILD=

# The build: for the visible GPU's architecture only, one compile job per core.
[[ -n $compute_cap && -z ${TORCH_CUDA_ARCH_LIST:-} ]] && export TORCH_CUDA_ARCH_LIST=$compute_cap
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

# The environment.
{
  echo "date: $(date -Is)"
  echo "host: $(hostname), $(nproc) cores; MAX_JOBS=$MAX_JOBS TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-}"
  echo "git: $(git rev-parse HEAD 2>/dev/null) $(git status --short 2>/dev/null | wc -l) changed files"
  echo "ninja: $(command -v ninja || echo 'none (the build compiles one file at a time)')"
  nvidia-smi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
  command -v nvcc && nvcc --version
  $PYTHON -c "import torch, sys; print('python', sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'devices', torch.cuda.device_count())"
} >"$OUTDIR/environment.log" 2>&1
torch_version=$(sed -n 's/^torch \([^ ]*\) .*/\1/p' "$OUTDIR/environment.log" | head -n1)
HEADER="gpu_check: ${gpu_name:-no GPU found} (compute capability ${compute_cap:-?}), torch ${torch_version:-?}, \
commit $(git rev-parse --short HEAD 2>/dev/null || echo ?), $(date -Is)"

# summary.txt: the header, a line per step, the totals, then the targets of the benchmarks run.
write_summary() {
  {
    echo "$HEADER"
    printf '%-20s %-8s %6s %5s  %s\n' step verdict time cap result
    printf '%s\n' "${STEP_LINES[@]}"
    echo "$failures failed step(s), $skipped skipped; $(($(date +%s) - START)) s of a $TOTAL_BUDGET_S s budget; logs in $OUTDIR"
    [[ -f $OUTDIR/targets.txt ]] && { echo; cat "$OUTDIR/targets.txt"; }
    # The compiled step measures one target: its other lines say NOT MEASURED.
    [[ -f $OUTDIR/compiled/targets.txt ]] && { echo; grep -v "NOT MEASURED" "$OUTDIR/compiled/targets.txt"; }
    local step
    for step in train_step train_step_compiled; do
      if [[ -f $OUTDIR/$step/train_step.md ]]; then
        echo
        echo "targets of $step (train_step):"
        grep -E '^- (MET|NOT MET|UNRESOLVED|not measured):' "$OUTDIR/$step/train_step.md"
      fi
    done
  } >"$SUMMARY"
}

# publish: the folder packed into $PUBLISH_TO, with the summary and the tables beside it.
publish() {
  write_summary
  [[ -n $PUBLISH_TO ]] || return 0
  tar -czf "$PUBLISH_TO/gpu_check.tar.gz.part" -C "$(dirname "$OUTDIR")" "$(basename "$OUTDIR")" &&
    mv "$PUBLISH_TO/gpu_check.tar.gz.part" "$PUBLISH_TO/gpu_check.tar.gz"
  cp "$SUMMARY" "$PUBLISH_TO/summary.txt"
  [[ -f $OUTDIR/gpu_bench.md ]] && cp "$OUTDIR/gpu_bench.md" "$PUBLISH_TO/gpu_bench.md"
  [[ -f $OUTDIR/compiled/gpu_bench.md ]] && cp "$OUTDIR/compiled/gpu_bench.md" "$PUBLISH_TO/gpu_bench_compiled.md"
  local step
  for step in train_step train_step_compiled; do
    [[ -f $OUTDIR/$step/train_step.md ]] && cp "$OUTDIR/$step/train_step.md" "$PUBLISH_TO/$step.md"
  done
  return 0
}

record() {  # record NAME VERDICT TIME CAP RESULT: a summary line, also printed
  local line
  line=$(printf '%-20s %-8s %6s %5s  %s' "$1" "$2" "$3" "$4" "$5")
  STEP_LINES+=("$line")
  echo "$line"
  publish
}

skip() {  # skip NAME CAP REASON
  skipped=$((skipped + 1))
  record "$1" SKIP - "$2" "$3"
}

# The result line of a step's log: pytest's counts, compute-sanitizer's error summary, or the
# last line.
result_of() {
  local line
  line=$(grep -E '[0-9]+ (passed|failed|errors?)( |,|$)|no tests ran|ERROR SUMMARY|^cuda_version' "$1" | tail -n1)
  [[ -n $line ]] || line=$(grep -v '^[[:space:]]*$' "$1" | tail -n1)
  line=${line//=/}
  line=$(sed -E 's/^ +//; s/ +$//' <<<"$line")
  echo "${line:0:90}"
}

# run NAME COMMAND...: runs COMMAND with a timeout of the step's cap, less when time is short,
# logging to OUTDIR/NAME.log. An optional step gets only what the later required steps leave.
# With UNSUPPORTED_IF set, a log matching that pattern makes the step a SKIP (a tool that refuses
# this machine), not a failure.
run() {
  local name=$1
  shift
  local cap required=0 entry n c r
  cap=$(cap_of "$name")
  for entry in "${STEPS[@]}"; do
    read -r n c r <<<"$entry"
    [[ $n == "$name" ]] && required=$r
  done
  if [[ -n ${GPU_CHECK_STEPS:-} && " $GPU_CHECK_STEPS " != *" $name "* ]]; then
    skip "$name" "$cap" "not selected (GPU_CHECK_STEPS)"
    return
  fi
  if [[ -n $NO_BUILD && $name != build ]]; then
    skip "$name" "$cap" "needs the build"
    return
  fi
  local remaining=$((TOTAL_BUDGET_S - ($(date +%s) - START) - STEP_OVERHEAD_S)) reserve=0
  ((required)) || reserve=$(reserve_after "$name")
  local left=$((remaining - reserve))
  local limit=$((cap < left ? cap : left))
  local least=$MIN_STEP_S
  ((required || cap / 2 <= least)) || least=$((cap / 2))
  if ((limit < least)); then
    skip "$name" "$cap" "out of time: ${remaining} s left, the later required steps keep ${reserve} s; needs ${least} s"
    return
  fi
  local log="$OUTDIR/$name.log"
  echo "== $name (limit ${limit} s): $*"
  local t0
  t0=$(date +%s)
  timeout -s INT --kill-after=$KILL_AFTER_S "$limit" "$@" >"$log" 2>&1
  local rc=$?
  local dt=$(($(date +%s) - t0))
  local verdict=PASS result
  result=$(result_of "$log")
  if [[ -n ${UNSUPPORTED_IF:-} ]] && grep -q -- "$UNSUPPORTED_IF" "$log"; then
    verdict=SKIP
    result="unsupported here: $UNSUPPORTED_IF"
    skipped=$((skipped + 1))
  elif ((rc == 124 || rc == 137)); then
    verdict=TIMEOUT
    result="stopped at ${limit} s; $result"
  elif ((rc != 0)); then
    verdict=FAIL
    result="rc=$rc; $result"
  fi
  [[ $verdict == PASS || $verdict == SKIP ]] || failures=$((failures + 1))
  [[ $name == build && $verdict != PASS ]] && NO_BUILD=1
  record "$name" "$verdict" "${dt} s" "$cap" "$result"
}

# 1. Build in place (the .so lands in dropblock_cuda/, so the tests import this checkout); pip
#    without editable support, failing before it compiles anything, falls back to setup.py.
build_and_import() {
  local pip_log rc
  pip_log=$(mktemp)
  # Through tee: the step's log shows the compile's progress even if the step is stopped.
  $PYTHON -m pip install --no-build-isolation --no-deps --no-index --disable-pip-version-check -v -e . 2>&1 |
    tee "$pip_log"
  rc=${PIPESTATUS[0]}
  if ((rc != 0)) && ! grep -qE '^ *\[[0-9]+/[0-9]+\]' "$pip_log"; then
    echo "== pip failed before compiling: setup.py build_ext --inplace"
    $PYTHON setup.py build_ext --inplace || return
  elif ((rc != 0)); then
    return $rc
  fi
  $PYTHON -c "import dropblock_cuda, torch; v = dropblock_cuda.cuda_version(); print('cuda_version', v); assert v is not None and torch.cuda.is_available()"
}
export PYTHON
export -f build_and_import
run build bash -c build_and_import

PYTEST=($PYTHON -m pytest -q -p no:cacheprovider -rfEs --durations=10)
# With pytest-xdist (the GPU image has it) the tests run in 4 processes that share the GPU: their
# CPU halves (the reference masks, torch.compile) overlap.
$PYTHON -c "import xdist" >/dev/null 2>&1 && PYTEST+=(-n 4)

# 2. The CUDA tests first (the point of this machine). No -x: one failure must not hide the others.
run tests_cuda "${PYTEST[@]}" tests/test_cuda.py -m cuda

# 3. The benchmark (JSON, markdown and targets.txt into OUTDIR, rewritten after every case). The
#    profiler runs last, once per case: keep CUPTI up between its sessions (pytorch#112507).
export TEARDOWN_CUPTI=0
run bench $PYTHON -m benchmarks.gpu_bench --compile off --out "$OUTDIR"

# 4. compute-sanitizer on a small forward + backward; no caching allocator, so that memcheck
#    sees every allocation's real bounds. Racecheck watches shared memory only: float32 is enough.
#    Some machines' runtimes refuse the tool ("Device not supported"): then the steps are skipped.
SANITIZER=${SANITIZER:-$(command -v compute-sanitizer || true)}
[[ -z $SANITIZER && -x /usr/local/cuda/bin/compute-sanitizer ]] && SANITIZER=/usr/local/cuda/bin/compute-sanitizer
if [[ -n $SANITIZER ]]; then
  UNSUPPORTED_IF="Device not supported" run memcheck env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" \
    --tool memcheck --error-exitcode 3 $PYTHON benchmarks/sanitizer_smoke.py
  UNSUPPORTED_IF="Device not supported" run racecheck "$SANITIZER" --tool racecheck --error-exitcode 3 \
    $PYTHON benchmarks/sanitizer_smoke.py --quick
else
  skip memcheck "$(cap_of memcheck)" "compute-sanitizer not found"
  skip racecheck "$(cap_of racecheck)" "compute-sanitizer not found"
fi

# 5. The other tests that need CUDA, whatever their file (tests/conftest.py marks every test that
#    skips without a CUDA device): a graph-captured training step, torch.compile on CUDA (fullgraph
#    and reduce-overhead) on this image's torch, the misuse checks on CUDA tensors, the build's
#    CUDA version. Their CPU twins run in CI.
run tests_ecosystem "${PYTEST[@]}" tests -m cuda --ignore=tests/test_cuda.py

# 6. The peers: the comparative benchmark (python -m benchmarks) on this GPU, quick form; then,
#    if time allows, torch.compile of torchvision's drop_block2d against our forward+backward at
#    batch 128 (compiling, per dtype and then for dynamic shapes, takes most of that step).
run bench_peers $PYTHON -m benchmarks --device cuda --quick --no-compile --out "$OUTDIR/peers"

# 7. DropBlock inside a training step (forward, loss, backward, SGD) at train_step.py's CUDA
#    defaults: batch 128 (halved until a step fits), bf16 autocast, channels_last; the overhead of
#    every implementation over the step without DropBlock, in interleaved rounds, and the step's
#    peak memory. Then, if time allows, the torch.compile comparison (compiling the variants of a
#    ResNet-50 takes most of that step; the eager rows are the previous step's).
#    Eagerly one warm-up step per variant is enough (cudnn.benchmark tunes in it); compiled, the
#    first step compiles and the second checks for recompiles, and only ours and torchvision's
#    (with the step without DropBlock) are compiled: each variant is a compile of its own.
#    The DropBlock layers' own cost (the eager layer passes, what the eager targets are judged on)
#    gets 1 s a model: a pass of a ResNet-50's sites takes about a millisecond on such a GPU, so
#    that is hundreds of rounds, and the step's cap keeps its margin.
TRAIN_STEP=($PYTHON -m benchmarks.train_step --device cuda --rounds 10 --layer-seconds 1 --no-progress)
run train_step "${TRAIN_STEP[@]}" --models timm_resnet50,tv_resnet50 --modes eager --warmup 1 \
  --out "$OUTDIR/train_step"
run bench_compiled $PYTHON -m benchmarks.gpu_bench --compiled-only --blocks 7 --out "$OUTDIR/compiled"
run train_step_compiled "${TRAIN_STEP[@]}" --models tv_resnet50 --modes compile --variants ours,torchvision \
  --out "$OUTDIR/train_step_compiled"

publish
echo
cat "$SUMMARY"
for table in "$OUTDIR/gpu_bench.md" "$OUTDIR/compiled/gpu_bench.md" "$OUTDIR/train_step/train_step.md" \
  "$OUTDIR/train_step_compiled/train_step.md"; do
  if [[ -f $table ]]; then
    echo
    cat "$table"
  fi
done
[[ -n $PUBLISH_TO ]] && echo "packed: $PUBLISH_TO/gpu_check.tar.gz"
exit $((failures > 125 ? 125 : failures))
