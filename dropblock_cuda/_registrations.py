"""Fake kernels of the dropblock_cuda ops, for torch.compile and export.

The schema lives in csrc/dropblock.cpp, the autograd formula in csrc/autograd/.
"""

import torch


@torch.library.register_fake("dropblock_cuda::drop_block_mask")
def _drop_block_mask_fake(input, seed, p, block_size, eps, shared_channels):
    planes = input.shape[0] if shared_channels else input.shape[0] * input.shape[1]
    bits = planes
    for size in input.shape[2:]:
        bits = bits * size
    mask = input.new_empty(((bits + 63) // 64 * 8,), dtype=torch.uint8)
    scale = input.new_empty((), dtype=torch.float64)
    return mask, scale


@torch.library.register_fake("dropblock_cuda::drop_block_apply")
def _drop_block_apply_fake(input, mask, scale, shared_channels):
    return torch.empty_like(input)


@torch.library.register_fake("dropblock_cuda::drop_block_apply_")
def _drop_block_apply_inplace_fake(input, mask, scale, shared_channels):
    return None
