"""Fake kernels of the dropblock_cuda ops, for torch.compile and export; also their Meta kernels.

The schema lives in csrc/dropblock.cpp, the autograd formula in csrc/autograd/.

torch.library.register_fake also registers these functions for the Meta dispatch key, which the
dispatcher picks whenever ANY tensor argument is on the meta device, real CPU tensors included.
So they check what the real kernels check (csrc/op_args.cpp), in the same order, with the
same exception types and messages (tests/test_misuse.py compares them): dtypes, devices, shapes,
block_size and eps. A mix of meta and real tensors is then an error, never an uninitialised
tensor handed back as a result. What only data can tell (p's value, memory shared between the
arguments, the mask's alignment) stays with the real kernels; fake and meta tensors have none.
"""

import torch

_INT64_MAX = 2**63 - 1
_INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _dtype_name(t):
    """t's dtype as the C++ checks print it (c10's name: Float, BFloat16, Float8_e4m3fn, Long)."""
    # Tensor.type() is "torch[.device].<name>Tensor", fake and meta tensors included.
    return t.type().rsplit(".", 1)[-1][: -len("Tensor")]


def _check_input(input):
    torch._check_value(
        3 <= input.dim() <= 5,
        lambda: f"input: expected (N, C, *spatial) with 1 to 3 spatial dimensions, got {input.dim()} dimensions",
    )
    torch._check_type(
        input.dtype in _INPUT_DTYPES,
        lambda: f"input: expected a float16, bfloat16, float32 or float64 tensor, got {_dtype_name(input)}",
    )


def _mask_bits(input, shared_channels):
    """Bits of the packed mask, refused past int64 where the C++ check's running products overflow."""
    shape = input.shape
    planes = shape[0] if shared_channels else shape[0] * shape[1]
    spatial = 1
    products = [planes]
    for size in shape[2:]:
        spatial = spatial * size
        products.append(spatial)
    bits = planes * spatial
    products.append(bits)
    # Symbolic sizes (dynamic shapes) are left alone: int64 overflow concerns real tensors.
    overflows = any(isinstance(value, int) and value > _INT64_MAX for value in products)
    torch._check_value(
        not overflows, lambda: f"input: a mask for shape {list(shape)} would have more than 2**63 - 1 bits"
    )
    return bits


def _packed_mask_bytes(bits):
    return (bits + 63) // 64 * 8  # Python ints (and symbolic ones) do not overflow


def _check_scalar(tensor, name, dtype, input):
    """What seed and p must be: 0-dim, of `dtype`, on the CPU or on the input's device."""
    torch._check_value(
        tensor.dim() == 0 and tensor.dtype == dtype and (tensor.device == input.device or tensor.device.type == "cpu"),
        lambda: (
            f"{name}: expected a 0-dim {str(dtype).split('.')[-1]} tensor on the CPU or on the input's device"
            f" ({input.device}), got {_dtype_name(tensor)} of shape {list(tensor.shape)} on {tensor.device}"
        ),
    )


@torch.library.register_fake("dropblock_cuda::drop_block_mask")
def _drop_block_mask_fake(input, seed, p, block_size, eps, shared_channels):
    _check_input(input)
    spatial_dims = input.dim() - 2
    torch._check_value(
        len(block_size) == spatial_dims,
        lambda: f"block_size: expected one size per spatial dimension ({spatial_dims}), got {len(block_size)}",
    )
    for size in block_size:
        torch._check_value(size >= 1, lambda: f"block_size: every size must be >= 1, got {list(block_size)}")
    bits = _mask_bits(input, shared_channels)
    # :g prints a double as the C++ stream does (-1, 0.5, 1e-06, nan).
    torch._check_value(eps >= 0.0, lambda: f"eps: expected a non-negative number, got {eps:g}")
    _check_scalar(seed, "seed", torch.int64, input)
    _check_scalar(p, "p", torch.float64, input)
    mask = input.new_empty((_packed_mask_bytes(bits),), dtype=torch.uint8)
    scale = input.new_empty((), dtype=torch.float64)
    return mask, scale


def _check_apply_args(input, mask, scale, shared_channels):
    _check_input(input)
    torch._check_type(mask.dtype == torch.uint8, lambda: f"mask: expected uint8, got {_dtype_name(mask)}")
    torch._check_type(scale.dtype == torch.float64, lambda: f"scale: expected float64, got {_dtype_name(scale)}")
    for name, tensor in (("mask", mask), ("scale", scale)):
        torch._check_value(
            tensor.device == input.device,
            lambda: f"{name}: expected a tensor on the input's device ({input.device}), got one on {tensor.device}",
        )
    torch._check_value(scale.numel() == 1, lambda: f"scale: expected one element, got {scale.numel()}")
    torch._check_value(
        mask.dim() == 1 and mask.is_contiguous(),
        lambda: (
            f"mask: expected a contiguous 1-d tensor, got shape {list(mask.shape)} with strides {list(mask.stride())}"
        ),
    )
    expected = _packed_mask_bytes(_mask_bits(input, shared_channels))
    torch._check_value(
        mask.numel() == expected,
        lambda: f"mask: expected {expected} bytes for an input of shape {list(input.shape)}, got {mask.numel()}",
    )


@torch.library.register_fake("dropblock_cuda::drop_block_apply")
def _drop_block_apply_fake(input, mask, scale, shared_channels):
    _check_apply_args(input, mask, scale, shared_channels)
    return torch.empty_like(input)


@torch.library.register_fake("dropblock_cuda::drop_block_apply_")
def _drop_block_apply_inplace_fake(input, mask, scale, shared_channels):
    _check_apply_args(input, mask, scale, shared_channels)
    return None
