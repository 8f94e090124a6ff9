"""drop_block1d / 2d / 3d: torchvision's signature, then keyword-only extras."""

import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

BlockSize = Union[int, Sequence[int]]


def _check_p(p, name: str = "p") -> float:
    if type(p) is float and 0.0 <= p <= 1.0:  # the usual case, without the ABC checks below
        return p
    # torch.compile passes a p that changes between calls as a SymFloat: keep it symbolic, so
    # that a scheduled p does not recompile the graph.
    if isinstance(p, bool) or not isinstance(p, (numbers.Real, torch.SymFloat)):
        raise TypeError(f"{name}: expected a real number, got {type(p).__name__}")
    if not isinstance(p, torch.SymFloat):
        p = float(p)
    if p != p or p < 0.0 or p > 1.0:  # p != p: NaN
        raise ValueError(f"{name}: drop probability has to be between 0 and 1, got {p}")
    return p


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps: expected a real number, got {type(eps).__name__}")
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0.0:
        raise ValueError(f"eps: expected a finite number >= 0, got {eps}")
    return eps


def _check_block_size(block_size, spatial_dims: int) -> Tuple[int, ...]:
    if type(block_size) is int and block_size >= 1:  # the usual case, without the ABC checks below
        return (block_size,) * spatial_dims
    sizes = (block_size,) * spatial_dims if isinstance(block_size, numbers.Integral) else block_size
    if isinstance(block_size, bool) or not isinstance(sizes, (tuple, list)):
        raise TypeError(f"block_size: expected an int or a tuple of {spatial_dims} ints, got {block_size!r}")
    if len(sizes) != spatial_dims:
        raise ValueError(f"block_size: expected {spatial_dims} sizes (one per spatial dimension), got {block_size!r}")
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, numbers.Integral):
            raise TypeError(f"block_size: expected ints, got {block_size!r}")
        if size < 1:
            raise ValueError(f"block_size: every size must be >= 1, got {block_size!r}")
    return tuple(int(size) for size in sizes)


def _check_input(input, spatial_dims: int) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"input: expected a Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"input: expected a floating point tensor, got {input.dtype}")
    if input.dim() != spatial_dims + 2:
        layout = ("(N, C, L)", "(N, C, H, W)", "(N, C, D, H, W)")[spatial_dims - 1]
        raise ValueError(f"input: expected a {spatial_dims + 2}-d tensor {layout}, got {input.dim()} dimensions")


_KEY_LOW, _KEY_HIGH = -(2**63), 2**63 - 1


def _draw_seed(device: torch.device, generator: Optional[torch.Generator]) -> Tensor:
    """The Philox key of one call, drawn from `generator` (default: the default generator of `device`).

    The key is drawn by a native random op on the generator's device, so it follows
    torch.manual_seed, is traceable by torch.compile, is safe under CUDA graph capture (with a
    generator on a CUDA device), and a generator on another device than the input (e.g. a CPU
    generator for a CUDA input) gives the very mask that generator gives on its own device. A key
    drawn on the CPU is passed to the CUDA kernels by value (a CUDA graph captured with it replays
    that key, and capturing warns); one drawn on another CUDA device is copied to `device`.
    """
    if generator is None:
        return torch.randint(_KEY_LOW, _KEY_HIGH, (), dtype=torch.int64, device=device)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    seed = torch.randint(_KEY_LOW, _KEY_HIGH, (), dtype=torch.int64, device=generator.device, generator=generator)
    # The ops take the key on the CPU or on the input's device only.
    return seed if seed.device.type == "cpu" else seed.to(device)


def _drop_block(
    input: Tensor,
    p: float,
    block_size: BlockSize,
    inplace: bool,
    eps: float,
    training: bool,
    shared_channels: bool,
    generator: Optional[torch.Generator],
    spatial_dims: int,
) -> Tensor:
    _check_input(input, spatial_dims)
    p = _check_p(p)
    eps = _check_eps(eps)
    sizes = _check_block_size(block_size, spatial_dims)
    if not training or p == 0.0:
        return input
    ops = torch.ops.dropblock_cuda
    seed = _draw_seed(input.device, generator)
    if torch.compiler.is_compiling():
        # p travels as a tensor on the input's device, so that a scheduled p stays a graph input.
        # Inductor keeps a changing p symbolic only through tensor arithmetic (its
        # tensorify_python_scalars pass): `zeros + p` stays symbolic, while torch.full(p)
        # would specialize p and recompile the graph for every value.
        drop_probability = torch.zeros((), dtype=torch.float64, device=input.device) + p
    else:
        # Eagerly, p stays on the CPU: the CUDA kernels take it by value (no fill kernel, no copy).
        drop_probability = torch.full((), p, dtype=torch.float64, device="cpu")
    mask, scale = ops.drop_block_mask(input, seed, drop_probability, sizes, eps, bool(shared_channels))
    if not inplace:
        return ops.drop_block_apply(input, mask, scale, bool(shared_channels))
    if torch.is_grad_enabled() and input.requires_grad:
        # Autograd needs the in-place write recorded; copy_ does that (and refuses leaves, as torch does).
        return input.copy_(ops.drop_block_apply(input, mask, scale, bool(shared_channels)))
    ops.drop_block_apply_(input, mask, scale, bool(shared_channels))
    return input


_DOC = """Randomly zeroes contiguous blocks of a {dims}-d feature map (DropBlock, arXiv 1810.12890).

    Args:
        input: a {layout} floating point tensor.
        p: probability of dropping an element (torchvision's and timm's ``p``, the paper's
            ``1 - keep_prob``).
        block_size: side of the dropped blocks, an int or one int per spatial dimension;
            a side larger than the map is clamped to the map.
        inplace: write the result into ``input`` and return it.
        eps: added to the kept count in the rescaling ``numel / (eps + kept)``.
        training: apply DropBlock; when False (or when p == 0) the input itself is returned.
        shared_channels: one mask per sample, shared by all its channels (timm's
            ``couple_channels``); default one mask per (sample, channel).
        generator: draw the randomness from this generator instead of the default one of
            ``input``'s device.

    Returns:
        ``input * keep * numel(input) / (eps + kept elements of input)`` with dropped elements
        exactly zero.
    """


def drop_block1d(
    input: Tensor,
    p: float,
    block_size: BlockSize,
    inplace: bool = False,
    eps: float = 1e-06,
    training: bool = True,
    *,
    shared_channels: bool = False,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    return _drop_block(input, p, block_size, inplace, eps, training, shared_channels, generator, 1)


def drop_block2d(
    input: Tensor,
    p: float,
    block_size: BlockSize,
    inplace: bool = False,
    eps: float = 1e-06,
    training: bool = True,
    *,
    shared_channels: bool = False,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    return _drop_block(input, p, block_size, inplace, eps, training, shared_channels, generator, 2)


def drop_block3d(
    input: Tensor,
    p: float,
    block_size: BlockSize,
    inplace: bool = False,
    eps: float = 1e-06,
    training: bool = True,
    *,
    shared_channels: bool = False,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    return _drop_block(input, p, block_size, inplace, eps, training, shared_channels, generator, 3)


drop_block1d.__doc__ = _DOC.format(dims=1, layout="(N, C, L)")
drop_block2d.__doc__ = _DOC.format(dims=2, layout="(N, C, H, W)")
drop_block3d.__doc__ = _DOC.format(dims=3, layout="(N, C, D, H, W)")
