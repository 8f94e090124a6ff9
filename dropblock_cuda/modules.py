"""nn.Module wrappers; they hold settings only (no parameters, no buffers).

`forward` is TorchScript-compatible: torch.jit.script compiles `_drop_block_checked` with the
settings as typed attributes. `block_size` is a property that validates on assignment and keeps
the per-dimension sizes the ops take, so no call re-derives them.
"""

from typing import List

import torch
from torch import Tensor, nn

from .functional import (
    BlockSize,
    _check_block_size,
    _check_flag,
    _check_real,
    _check_scalars,
    _drop_block,
    _drop_block_checked,
    _takes_fast_path,
    _train_op,
)
from .functional import drop_block1d, drop_block2d, drop_block3d


class _DropBlockNd(nn.Module):
    spatial_dims = 0
    __constants__ = ["spatial_dims"]
    _functional = None  # drop_block1d / 2d / 3d
    # TorchScript compiles properties unless told not to; forward reads _block_sizes instead.
    __jit_unused_properties__ = ["block_size"]

    def __init__(
        self,
        p: float,
        block_size: BlockSize,
        inplace: bool = False,
        eps: float = 1e-06,
        *,
        shared_channels: bool = False,
        gamma_scale: float = 1.0,
        scale_by_keep: bool = True,
    ) -> None:
        super().__init__()
        # Public and plain, so that a scheduler can change p between steps; checked on every call.
        self.p = _check_real(p, "p")
        self.block_size = block_size
        self.inplace = _check_flag(inplace, "inplace")
        self.eps = _check_real(eps, "eps")
        self.shared_channels = _check_flag(shared_channels, "shared_channels")
        self.gamma_scale = _check_real(gamma_scale, "gamma_scale")
        self.scale_by_keep = _check_flag(scale_by_keep, "scale_by_keep")
        _check_scalars(self.p, self.eps, self.gamma_scale)

    def __prepare_scriptable__(self) -> "_DropBlockNd":
        # torch.jit.script types attributes by their values: a p set to 0 (an int) would not match
        # forward's float. The values stay equal.
        for name in ("p", "eps", "gamma_scale"):
            setattr(self, name, _check_real(getattr(self, name), name))
        return self

    def __setstate__(self, state) -> None:
        # Modules pickled (torch.save(model)) by 0.1, before block_size was a property and before
        # gamma_scale and scale_by_keep existed.
        if "block_size" in state:
            block_size = state.pop("block_size")
            state["_block_size"] = block_size
            state["_block_sizes"] = list(_check_block_size(block_size, type(self).spatial_dims))
        state.setdefault("gamma_scale", 1.0)
        state.setdefault("scale_by_keep", True)
        super().__setstate__(state)

    @property
    def block_size(self) -> BlockSize:
        return self._block_size

    @block_size.setter
    def block_size(self, block_size: BlockSize) -> None:
        self._block_sizes: List[int] = list(_check_block_size(block_size, self.spatial_dims))
        self._block_size = block_size

    def forward(self, input: Tensor) -> Tensor:
        if not torch.jit.is_scripting():  # TorchScript compiles the return below only
            # The settings are public and may have been reassigned: the fast path tests them on every
            # call, as the functions do, but the block sizes were checked when they were set.
            if _takes_fast_path(
                input,
                self.p,
                self.inplace,
                self.eps,
                self.training,
                None,
                self.gamma_scale,
                self.shared_channels,
                self.scale_by_keep,
                self.spatial_dims,
            ):
                return _train_op(input, self.p, self._block_sizes, self.eps, self.shared_channels, self.scale_by_keep)
            return self._eager_forward(input)
        return _drop_block_checked(
            input,
            self.p,
            self._block_sizes,
            self.inplace,
            self.eps,
            self.training,
            self.shared_channels,
            self.gamma_scale,
            self.scale_by_keep,
            self.spatial_dims,
        )

    @torch.jit.unused
    def _eager_forward(self, input: Tensor) -> Tensor:
        # The block size as given: an int takes _check_block_size's fast path.
        return _drop_block(
            type(self)._functional,
            input,
            self.p,
            self._block_size,
            self.inplace,
            self.eps,
            self.training,
            self.shared_channels,
            None,
            self.gamma_scale,
            self.scale_by_keep,
            self.spatial_dims,
        )

    def extra_repr(self) -> str:
        extras = ""
        if self.gamma_scale != 1.0:
            extras += f", gamma_scale={self.gamma_scale}"
        if not self.scale_by_keep:
            extras += ", scale_by_keep=False"
        return (
            f"p={self.p}, block_size={self.block_size}, inplace={self.inplace}, eps={self.eps}, "
            f"shared_channels={self.shared_channels}{extras}"
        )


class DropBlock1d(_DropBlockNd):
    """DropBlock on (N, C, L) inputs; see :func:`dropblock_cuda.drop_block1d`."""

    spatial_dims = 1
    _functional = staticmethod(drop_block1d)


class DropBlock2d(_DropBlockNd):
    """DropBlock on (N, C, H, W) inputs; see :func:`dropblock_cuda.drop_block2d`."""

    spatial_dims = 2
    _functional = staticmethod(drop_block2d)


class DropBlock3d(_DropBlockNd):
    """DropBlock on (N, C, D, H, W) inputs; see :func:`dropblock_cuda.drop_block3d`."""

    spatial_dims = 3
    _functional = staticmethod(drop_block3d)
