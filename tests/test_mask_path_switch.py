"""The private switch between the two CUDA mask paths (window and scatter; csrc/private_ops.cpp):
the op _set_cuda_mask_kernel and the environment variable DROPBLOCK_CUDA_MASK_KERNEL, both checked.

Every build registers it, with or without CUDA; that both paths give the CPU mask is the CUDA
tests' (tests/test_cuda.py on a GPU, tests/test_cuda_emulated.py on the host)."""

import subprocess
import sys

import pytest

from helpers import env_finding_package, ops


def test_cuda_mask_kernel_setting_is_checked_and_returns_the_previous_one():
    # The private switch between the two CUDA mask paths is registered by every build (the CUDA
    # tests check that both paths give the CPU mask).
    assert ops._set_cuda_mask_kernel("scatter") == "auto"
    try:
        assert ops._set_cuda_mask_kernel("window") == "scatter"
        with pytest.raises(
            ValueError, match="_set_cuda_mask_kernel: kernel: expected 'auto', 'window' or 'scatter', got 'fast'"
        ):
            ops._set_cuda_mask_kernel("fast")
        assert ops._set_cuda_mask_kernel("window") == "window"  # a refused setting changes nothing
    finally:
        ops._set_cuda_mask_kernel("auto")


@pytest.mark.parametrize("value,expected", [("scatter", "scatter"), ("", "auto"), ("fast", "ValueError")])
def test_cuda_mask_kernel_environment_variable_is_read_once_and_checked(value, expected, tmp_path):
    code = (
        "import torch, dropblock_cuda\n"
        "try:\n"
        "    print(torch.ops.dropblock_cuda._set_cuda_mask_kernel('auto'))\n"
        "except ValueError as exc:\n"
        "    print('ValueError', exc)\n"
    )
    env = env_finding_package(DROPBLOCK_CUDA_MASK_KERNEL=value)
    # Run outside the source tree, so that a source checkout without a build is not imported.
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    assert out.splitlines()[0].startswith(expected)
    if expected == "ValueError":
        assert "DROPBLOCK_CUDA_MASK_KERNEL: expected 'auto', 'window' or 'scatter', got 'fast'" in out
