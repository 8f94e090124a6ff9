"""What the build reports about itself: the CUDA toolkit the kernels were compiled with
(dropblock_cuda.cuda_version(), the private op _cuda_version), None for a build without them.

The package's version and its one source are tests/test_packaging.py's."""

import torch

import dropblock_cuda
from helpers import requires_cuda


def test_cuda_version_is_none_or_the_cuda_of_torch():
    version = dropblock_cuda.cuda_version()
    if torch.version.cuda is None:
        assert version is None  # setup.py falls back to the CPU ops
    else:  # None when no nvcc was found; else the toolkit torch was built with, up to the minor version
        assert version is None or (
            isinstance(version, int) and version // 1000 == int(torch.version.cuda.split(".")[0])
        )


@requires_cuda
def test_compiled_cuda_version():
    version = dropblock_cuda.cuda_version()
    assert version is not None and version >= 11000
