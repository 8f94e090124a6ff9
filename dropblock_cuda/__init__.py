"""DropBlock (Ghiasi et al., 2018) as fused PyTorch ops: CUDA and CPU kernels, one mask law."""

import torch

from . import _C  # noqa: F401  (loads the library that registers torch.ops.dropblock_cuda)
from . import _registrations  # noqa: F401
from .functional import drop_block1d, drop_block2d, drop_block3d
from .modules import DropBlock1d, DropBlock2d, DropBlock3d
from .scheduler import LinearScheduler
from .convert import convert_dropblock
from ._version import __version__  # noqa: F401  (the package version)


def cuda_version():
    """The CUDA version the extension was compiled with (e.g. 13000), or None for a CPU-only build."""
    version = torch.ops.dropblock_cuda._cuda_version()
    return None if version < 0 else version


__all__ = [
    "drop_block1d",
    "drop_block2d",
    "drop_block3d",
    "DropBlock1d",
    "DropBlock2d",
    "DropBlock3d",
    "LinearScheduler",
    "convert_dropblock",
    "cuda_version",
]
