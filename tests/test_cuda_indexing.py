"""The CUDA apply kernels' index arithmetic, compiled for the host and checked on every run.

csrc/cuda/apply_indexing.h holds the offsets the strided and shared-mask CUDA kernels compute and
the channels-last kernel's tiles;
tests/cpp/apply_indexing_test.cpp compares them with plain stride arithmetic. No GPU needed.
"""

import subprocess

import pytest

from helpers import ROOT, host_compile_command


def test_cuda_apply_indexing_matches_stride_arithmetic(tmp_path):
    exe = tmp_path / "apply_indexing_test"
    # C++17, as nvcc compiles the header; -Werror for this project's code.
    command = host_compile_command(
        ROOT / "tests/cpp/apply_indexing_test.cpp", exe, std="c++17", flags=("-O1", "-Wall", "-Werror")
    )
    if command is None:
        pytest.skip("no C++ compiler")
    build = subprocess.run(command, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stdout + run.stderr
