#!/usr/bin/env bash
# The CPU extension built with AddressSanitizer and UndefinedBehaviorSanitizer, with
# -fno-sanitize-recover=all (the first report fails the run), then the core tests, the misuse tests
# and a bounded hypothesis run on it: a misaligned load, a signed overflow, a shift past the width or
# an out-of-bounds access in csrc/ fails CI instead of waiting for a reviewer (x86 hides most of them).
#
# Built from a copy of the tree in a temporary folder with FORCE_CUDA=0: the main build's build/ and
# dropblock_cuda/_C*.so stay untouched. Uses the main suite's environment (tests/run.sh creates it).
# The interpreter is not instrumented, so the ASan runtime (and libstdc++) is preloaded (LD_PRELOAD).
# Usage: bash tests/run_sanitizers.sh [pytest args...]
#   DROPBLOCK_VENV              the environment (default .venv)
#   DROPBLOCK_MISUSE_EXAMPLES   hypothesis examples of the random-views test (default 150)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${DROPBLOCK_VENV:-.venv}
[ -x "$venv/bin/python" ] || { echo "run_sanitizers: no $venv/bin/python (bash tests/run.sh creates it)"; exit 1; }
python=$(cd "$venv" && pwd)/bin/python
cxx=${CXX:-c++}
asan_runtime=$("$cxx" -print-file-name=libasan.so)
[ -f "$asan_runtime" ] || { echo "run_sanitizers: $cxx has no ASan runtime (libasan.so)"; exit 1; }
# ASan finds the real __cxa_throw when it starts: libstdc++ must be loaded by then (CPython does not
# link it), or the first C++ exception (every refused argument) aborts in the interceptor.
cxx_runtime=$("$cxx" -print-file-name=libstdc++.so.6)

src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
git ls-files -z --cached --others --exclude-standard | xargs -0 tar cf - --ignore-failed-read 2>/dev/null | tar xf - -C "$src"
rm -rf "$src"/build "$src"/dropblock_cuda/_C*.so
mkdir -p build
log=$root/build/sanitizer-build.log
# setup.py's flags come first (-O3, -fopenmp); CFLAGS reach every C++ compile of the extension.
sanitize="-fsanitize=address,undefined -fno-sanitize-recover=all"
(cd "$src" && FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} CFLAGS="$sanitize -fno-omit-frame-pointer -g1" \
  LDFLAGS="$sanitize" "$python" setup.py --quiet build_ext --inplace >"$log" 2>&1) || { tail -50 "$log"; exit 1; }
grep -q -- "-fsanitize=address,undefined" "$log" "$src"/build/temp*/build.ninja 2>/dev/null \
  || { echo "run_sanitizers: the extension was not compiled with the sanitizers"; exit 1; }

export LD_PRELOAD="$asan_runtime $cxx_runtime"
# Leaks are CPython's and torch's at exit; the 2**60-byte mask of tests/test_misuse.py must be an
# allocation error, as without ASan, not an ASan abort.
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export DROPBLOCK_MISUSE_EXAMPLES=${DROPBLOCK_MISUSE_EXAMPLES:-150}
cd "$src"
# python -m pytest puts this copy first on sys.path: its dropblock_cuda, with the sanitized _C.
"$python" -c "
import dropblock_cuda, os, sys
assert dropblock_cuda.__file__.startswith(os.getcwd()), dropblock_cuda.__file__
print('dropblock_cuda under ASan+UBSan:', os.path.dirname(dropblock_cuda.__file__))
"
# --capture=sys: the sanitizers write their reports to file descriptor 2, which pytest's default
# capture would swallow when the first report ends the process.
"$python" -m pytest -p no:cacheprovider --capture=sys tests/test_api.py tests/test_build_info.py \
  tests/test_mask_path_switch.py tests/test_mask_law.py tests/test_misuse.py tests/test_scheduler.py "$@"
