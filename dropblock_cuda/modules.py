"""nn.Module wrappers; they hold settings only (no parameters, no buffers)."""

from torch import Tensor, nn

from .functional import BlockSize, _check_block_size, _check_eps, _check_p, _drop_block


class _DropBlockNd(nn.Module):
    spatial_dims = 0

    def __init__(self, p: float, block_size: BlockSize, inplace: bool = False, eps: float = 1e-06, *,
                 shared_channels: bool = False) -> None:
        super().__init__()
        _check_p(p)
        _check_eps(eps)
        _check_block_size(block_size, self.spatial_dims)
        # Public and plain, so that a scheduler can change p between steps.
        self.p = p
        self.block_size = block_size
        self.inplace = inplace
        self.eps = eps
        self.shared_channels = shared_channels

    def forward(self, input: Tensor) -> Tensor:
        return _drop_block(input, self.p, self.block_size, self.inplace, self.eps, self.training,
                           self.shared_channels, None, self.spatial_dims)

    def extra_repr(self) -> str:
        return (f"p={self.p}, block_size={self.block_size}, inplace={self.inplace}, eps={self.eps}, "
                f"shared_channels={self.shared_channels}")


class DropBlock1d(_DropBlockNd):
    """DropBlock on (N, C, L) inputs; see :func:`dropblock_cuda.drop_block1d`."""

    spatial_dims = 1


class DropBlock2d(_DropBlockNd):
    """DropBlock on (N, C, H, W) inputs; see :func:`dropblock_cuda.drop_block2d`."""

    spatial_dims = 2


class DropBlock3d(_DropBlockNd):
    """DropBlock on (N, C, D, H, W) inputs; see :func:`dropblock_cuda.drop_block3d`."""

    spatial_dims = 3
