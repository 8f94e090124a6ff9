"""The CMake build of the ops registers the same ops with the same mask law."""

import os
import subprocess
import sys
import textwrap

import pytest

LIBRARY = os.environ.get("DROPBLOCK_CMAKE_LIBRARY")


@pytest.mark.skipif(not LIBRARY, reason="DROPBLOCK_CMAKE_LIBRARY not set (tests/run.sh builds it)")
def test_cmake_library_loads_and_follows_the_mask_law():
    # A fresh interpreter: the package's own library registers the same op names.
    script = textwrap.dedent(
        f"""
        import numpy as np, torch
        from reference import keep_mask, unpack_mask
        torch.ops.load_library({LIBRARY!r})
        x = torch.rand(2, 3, 15, 17) + 0.5
        mask, scale = torch.ops.dropblock_cuda.drop_block_mask(x, torch.tensor(5), torch.tensor(0.3, dtype=torch.float64, device=x.device), [3, 4], 1e-6, False)
        ref = keep_mask(x.shape, (3, 4), 0.3, 5)
        assert (unpack_mask(mask.numpy(), ref.size).reshape(ref.shape) == ref).all()
        y = torch.ops.dropblock_cuda.drop_block_apply(x, mask, scale, False)
        keep = torch.from_numpy(ref).reshape(x.shape)
        assert torch.equal(y != 0, keep)
        print("ok")
        """
    )
    here = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run([sys.executable, "-c", script], cwd=here, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
