"""Builders shared by the tests of benchmarks/ (tests/test_bench_*.py, test_gpu_bench.py,
test_gpu_check.py, test_train_step.py, test_regularisation.py): inputs, file checks, and the
runner and stand-ins of benchmarks/gpu_check.sh.

No timing assertions anywhere: the tests check that the machinery runs, measures what it says
and writes valid files."""

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a folder of the checkout, not an installed package
    sys.path.insert(0, str(ROOT))

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHAPE = (4, 8, 16, 16)


def random_input(shape=SHAPE, dtype=torch.float32, seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def quiet_config(config, tmp_path, defaults: dict, **fields):
    """A benchmark's ``config`` (its Config class) for a tiny run in a test: ``defaults``, then
    ``fields``; no progress bar, nothing printed, the files written into ``tmp_path``."""
    return config(**{"progress": False, "quiet": True, "out": str(tmp_path), **defaults, **fields})


def assert_png(path) -> None:
    png = Path(path).read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 1000


# --------------------------------------------------------------------------------------------
# benchmarks/gpu_check.sh
# --------------------------------------------------------------------------------------------

# benchmarks/gpu_check.sh's steps in the order it runs them; the optional ones run when time allows.
GPU_CHECK_STEPS = [
    "build",
    "tests_cuda",
    "bench",
    "memcheck",
    "racecheck",
    "tests_ecosystem",
    "bench_peers",
    "train_step",
    "bench_compiled",
    "train_step_compiled",
]
GPU_CHECK_OPTIONAL = ["racecheck", "train_step", "bench_compiled", "train_step_compiled"]
GPU_CHECK = ROOT / "benchmarks" / "gpu_check.sh"


def gpu_check(tmp_path, *args, **env):
    """Runs gpu_check.sh in tmp_path with `env` added (strings); returns the CompletedProcess."""
    env = dict(os.environ, TMPDIR=str(tmp_path), **env)
    return subprocess.run(
        ["bash", str(GPU_CHECK), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )


def summary_lines(summary):
    """{step: (verdict, result)} from the step lines of a gpu_check summary."""
    lines = {}
    for line in summary.splitlines():
        fields = line.split(None, 4)
        if fields and fields[0] in GPU_CHECK_STEPS:
            lines[fields[0]] = (fields[1], fields[4] if len(fields) > 4 else "")
    return lines


# A stand-in for python on a GPU machine, for gpu_check.sh: the CUDA tests outside test_cuda.py
# fail, those of test_cuda.py pass, gpu_bench writes its table and targets.txt, train_step its
# markdown with a target line, a step given SLEEP_IN (a word of its command line) hangs (and says
# when SIGINT reaches it); with ARGS_LOG set, every command line is appended to that file.
FAKE_PYTHON = """#!/usr/bin/env bash
args="$*"
[[ -n ${ARGS_LOG:-} ]] && printf '%s\n' "$args" >> "$ARGS_LOG"
out=; prev=
for a in "$@"; do [[ $prev == --out ]] && out=$a; prev=$a; done
if [[ -n ${SLEEP_IN:-} && $args == *"$SLEEP_IN"* ]]; then
  trap 'echo "interrupted by SIGINT"; exit 130' INT
  sleep 30 & wait
fi
case $args in
  *"--ignore=tests/test_cuda.py"*) echo "1 failed, 3 passed in 0.52s"; exit 1 ;;
  *test_cuda.py*) echo "FAILED nothing"; echo "712 passed in 61.20s" ;;
  *"import dropblock_cuda"*) echo "cuda_version 13000" ;;
  *benchmarks.gpu_bench*)
    mkdir -p "$out"; echo "| table |" > "$out/gpu_bench.md"
    printf 'targets on Fake GPU (gpu_bench):\\n  NOT MET       backward <= 1.1x copy: 3 of 4 cases, worst 1.2\\n' \\
      > "$out/targets.txt"
    printf '  NOT MEASURED  mask <= 0.05x the fp32 copy\\n' >> "$out/targets.txt" ;;
  *benchmarks.train_step*)
    mkdir -p "$out"
    printf '| model |\\n\\n- MET: ours'"'"' DropBlock layers take <= 5%% of an eager step (paper'"'"'s settings): 2 of 2\\n' \\
      > "$out/train_step.md" ;;
esac
exit 0
"""


def fake_python(tmp_path) -> Path:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    return fake
