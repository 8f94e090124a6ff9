"""DropBlock under torch.func (grad, vjp, jvp, vmap) and forward-mode AD.

The autograd formula of the apply op lives in C++ (csrc/autograd/), because a training step pays
for it on every call. functorch cannot run a C++ autograd::Function, and a C++ Function has no
forward-mode rule, so while a transform or a forward-AD level is active the apply goes through
`_Apply` below instead: the same formula (the apply is linear in its input, so its backward and
its tangent are the apply itself with the forward's mask and scale) as a Python
autograd.Function, which functorch composes with its transforms. Nothing changes for ordinary
calls: `transforms_active()` is two cheap reads.

vmap needs batching rules for the raw ops; those below run the op once per batch member. The
key's batching carries vmap's randomness mode: with randomness="different" each member draws
its own key (its own mask), with "same" all share one, and "error" refuses the random key draw.
"""

import torch
from torch import Tensor
from torch.autograd import forward_ad

_ops = torch.ops.dropblock_cuda


def transforms_active() -> bool:
    """Whether a torch.func transform or a forward-mode AD level is active (ask outside torch.compile)."""
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0


class _Apply(torch.autograd.Function):
    # vmap over the Function runs forward/backward/jvp under vmap, i.e. the apply op's batching
    # rule below.
    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, mask: Tensor, scale: Tensor, shared_channels: bool) -> Tensor:
        return _ops.drop_block_apply(input, mask, scale, shared_channels)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, mask, scale, shared_channels = inputs
        ctx.save_for_backward(mask, scale)
        ctx.save_for_forward(mask, scale)
        ctx.shared_channels = shared_channels

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        mask, scale = ctx.saved_tensors
        return _Apply.apply(grad_output, mask, scale, ctx.shared_channels), None, None, None

    @staticmethod
    def jvp(ctx, input_tangent: Tensor, mask_tangent, scale_tangent, shared_tangent) -> Tensor:
        mask, scale = ctx.saved_tensors
        return _Apply.apply(input_tangent, mask, scale, ctx.shared_channels)


def apply(input: Tensor, mask: Tensor, scale: Tensor, shared_channels: bool, inplace: bool) -> Tensor:
    """The apply of functional.py under a transform (in place: the result copied into the input)."""
    output = _Apply.apply(input, mask, scale, shared_channels)
    return input.copy_(output) if inplace else output


def _member(tensor: Tensor, dim, index: int) -> Tensor:
    return tensor if dim is None else tensor.select(dim, index)


def _register_vmap(op: str):
    # torch.library.register_vmap is torch >= 2.5; without it vmap falls back to torch's loop.
    register = getattr(torch.library, "register_vmap", None)
    return (lambda rule: register(op, rule)) if register is not None else (lambda rule: rule)


@_register_vmap("dropblock_cuda::drop_block_mask")
def _drop_block_mask_vmap(info, in_dims, input, seed, p, block_size, eps, shared_channels):
    masks, scales = [], []
    for index in range(info.batch_size):
        mask, scale = _ops.drop_block_mask(
            _member(input, in_dims[0], index),
            _member(seed, in_dims[1], index),
            _member(p, in_dims[2], index),
            block_size,
            eps,
            shared_channels,
        )
        masks.append(mask)
        scales.append(scale)
    return (torch.stack(masks), torch.stack(scales)), (0, 0)


@_register_vmap("dropblock_cuda::drop_block_apply")
def _drop_block_apply_vmap(info, in_dims, input, mask, scale, shared_channels):
    outputs = [
        _ops.drop_block_apply(
            _member(input, in_dims[0], index),
            _member(mask, in_dims[1], index),
            _member(scale, in_dims[2], index),
            shared_channels,
        )
        for index in range(info.batch_size)
    ]
    return torch.stack(outputs), 0
