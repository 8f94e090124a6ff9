"""Fake kernels and the autograd formula of the dropblock_cuda ops (the C++ side holds the schema)."""

import torch

_ops = torch.ops.dropblock_cuda


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


def _mask_setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(*output)


def _mask_backward(ctx, grad_mask, grad_scale):
    # The mask depends on the input's shape only.
    return None, None, None, None, None, None


torch.library.register_autograd(
    "dropblock_cuda::drop_block_mask", _mask_backward, setup_context=_mask_setup_context
)


def _apply_setup_context(ctx, inputs, output):
    _, mask, scale, shared_channels = inputs
    ctx.save_for_backward(mask, scale)
    ctx.shared_channels = shared_channels


def _apply_backward(ctx, grad_output):
    # out = keep * scale * input is linear in input: the gradient goes through the same mask.
    mask, scale = ctx.saved_tensors
    grad_input = _ops.drop_block_apply(grad_output, mask, scale, ctx.shared_channels)
    return grad_input, None, None, None


torch.library.register_autograd(
    "dropblock_cuda::drop_block_apply", _apply_backward, setup_context=_apply_setup_context
)
