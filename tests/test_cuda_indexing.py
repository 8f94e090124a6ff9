"""The CUDA apply kernels' index arithmetic, compiled for the host and checked on every run.

csrc/cuda/apply_indexing.h holds the offsets the strided and shared-mask CUDA kernels compute and
the channels-last kernel's tiles;
tests/cpp/apply_indexing_test.cpp compares them with plain stride arithmetic. No GPU needed.
"""

import shutil
import subprocess
from pathlib import Path

import pytest
from torch.utils.cpp_extension import include_paths

ROOT = Path(__file__).resolve().parents[1]


def test_cuda_apply_indexing_matches_stride_arithmetic(tmp_path):
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path / "apply_indexing_test"
    # torch's headers as system headers: -Werror answers for this project's code, not theirs.
    includes = [f"-I{ROOT / 'csrc'}"] + [f"-isystem{path}" for path in include_paths()]
    build = subprocess.run(
        [compiler, "-std=c++17", "-O1", "-Wall", "-Werror", *includes, str(ROOT / "tests/cpp/apply_indexing_test.cpp"),
         "-o", str(exe)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stdout + run.stderr
