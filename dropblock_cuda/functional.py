"""drop_block1d / 2d / 3d: torchvision's signature, then keyword-only extras.

Two layers: the eager entry points check the argument types (Python objects can be anything)
and hand plain values to `_drop_block_checked`, which TorchScript compiles too: it checks the
values, draws the key and calls the ops, so eager, compiled and scripted models share one
statement of the checks and of the calls.

An eager training call with plain arguments (the usual one) takes a shorter road, because on a
small map the Python around the ops costs more than the ops: `_takes_fast_path` recognises it
with a few type and range tests, and one op, `_drop_block_train`, draws the key, the mask and
the output in C++ (the same key from the same generator, the same ops, the same autograd node).
Anything else (other types, a generator, in place, torch.compile, TorchScript, torch.jit.trace,
ONNX export, torch.func, modes, tensor subclasses) goes the general way.
"""

import math
import numbers
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _functorch

_torch_C = torch._C
_forward_ad = torch.autograd.forward_ad

# The ONNX exporters' own flags, read directly: torch.onnx.is_in_onnx_export() imports on every
# call (a microsecond and a half, more than a small map's kernels), and Dynamo, which the
# dynamo=True exporter (the default since torch 2.9) traces with, folds it to False.
try:
    from torch.onnx._internal.exporter import _flags as _onnx_flags
except ImportError:  # torch before 2.6
    _onnx_flags = None
try:
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS as _onnx_globals
except ImportError:
    try:
        from torch.onnx._globals import GLOBALS as _onnx_globals  # torch before 2.9
    except ImportError:
        _onnx_globals = None

BlockSize = Union[int, Sequence[int]]

# The dtypes the kernels take: input.is_floating_point() and not one byte wide (float8), as one test.
_KERNEL_DTYPES = frozenset((torch.float32, torch.float64, torch.float16, torch.bfloat16))

# The ops take block sizes as int64; any size >= 1 is valid and is clamped to the map by the ops
# (a map side never exceeds this), so clamping here changes nothing and keeps huge ints legal.
_MAX_BLOCK = 2**63 - 1


def _check_real(value, name: str):
    # torch.compile passes a float that changes between calls (or, with dynamic=True, any float)
    # as a SymFloat: keep it symbolic, so that a scheduled p does not recompile the graph.
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.SymFloat)):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    return value if isinstance(value, torch.SymFloat) else float(value)


def _check_p(p, name: str = "p") -> float:
    """p's type and range: the whole check, for callers that keep a p (modules, the scheduler)."""
    p = _check_real(p, name)
    _check_probability(p, name)
    return p


def _check_probability(p: float, name: str) -> None:
    if not 0.0 <= p <= 1.0:  # NaN fails both comparisons
        raise ValueError(f"{name}: drop probability has to be between 0 and 1, got {p}")


def _check_nonnegative_finite(value: float, name: str) -> None:
    # Comparisons rather than math.isfinite: they also hold for a SymFloat (dynamic shapes make
    # module floats symbolic) and TorchScript compiles them. NaN fails both.
    if not (value >= 0.0 and value < math.inf):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value}")


def _check_block_size(block_size, spatial_dims: int) -> Tuple[int, ...]:
    if type(block_size) is int and block_size >= 1:  # the usual case, without the ABC checks below
        return (min(block_size, _MAX_BLOCK),) * spatial_dims
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
    return tuple(min(int(size), _MAX_BLOCK) for size in sizes)


def _check_flag(value, name: str) -> bool:
    # Read once, here: a custom object's truth value could change between the mask and the apply.
    if type(value) is bool:
        return value
    if isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a bool, got a Tensor")
    return bool(value)


def _check_values(input: Tensor, p: float, eps: float, gamma_scale: float, spatial_dims: int) -> None:
    """The value checks, for eager and TorchScript alike (types are known here)."""
    # float8 types are floating point too, but no kernel takes them: refuse before a key is drawn.
    if not input.is_floating_point() or input.element_size() == 1:
        raise TypeError(f"input: expected a float32, float64, float16 or bfloat16 tensor, got {input.dtype}")
    if input.dim() != spatial_dims + 2:
        layout = ["(N, C, L)", "(N, C, H, W)", "(N, C, D, H, W)"][spatial_dims - 1]
        raise ValueError(f"input: expected a {spatial_dims + 2}-d tensor {layout}, got {input.dim()} dimensions")
    if not (0.0 <= p <= 1.0 and 0.0 <= eps < math.inf and gamma_scale == 1.0):  # the usual case, in one test
        _check_scalars(p, eps, gamma_scale)


def _check_scalars(p: float, eps: float, gamma_scale: float) -> None:
    _check_probability(p, "p")
    _check_nonnegative_finite(eps, "eps")
    _check_nonnegative_finite(gamma_scale, "gamma_scale")
    if gamma_scale != 1.0 and p * gamma_scale > 1.0:
        raise ValueError(
            f"gamma_scale: p * gamma_scale is the seed rate's drop probability and must be <= 1, "
            f"got p={p}, gamma_scale={gamma_scale}"
        )


def _in_onnx_export(compiling: bool) -> bool:
    if _onnx_flags is not None and _onnx_flags._is_onnx_exporting:
        return True
    if compiling:  # the TorchScript-based exporter does not trace with Dynamo (which skips its flag)
        return False
    if _onnx_globals is not None:
        return _onnx_globals.in_onnx_export
    return torch.onnx.is_in_onnx_export()


# The eager training op (csrc/autograd/dropblock_autograd.cpp): its overload's own callable, which
# OpOverload.__call__ only forwards to (but under the modes that _takes_fast_path excludes), a Python
# frame less.
_train_op = torch.ops.dropblock_cuda._drop_block_train.default
_train_op = getattr(_train_op, "_op", _train_op)


def _takes_fast_path(
    input, p, inplace, eps, training, generator, gamma_scale, shared_channels, scale_by_keep, spatial_dims: int
) -> bool:
    """Whether a call may go straight to `_drop_block_train`: plain values that pass every check, an
    eager training call that draws from the default generator, outside everything that needs the
    separate ops (torch.compile, whose Dynamo sees False at the first test and so never traces the
    others; torch.jit.trace, ONNX export, torch.func, forward AD, modes, tensor subclasses)."""
    return (
        not torch.compiler.is_compiling()
        and training is True
        and inplace is False
        and generator is None
        and type(input) is Tensor
        and type(p) is float
        and 0.0 < p <= 1.0
        and type(eps) is float
        and 0.0 <= eps < math.inf
        and type(gamma_scale) is float
        and gamma_scale == 1.0
        and type(shared_channels) is bool
        and type(scale_by_keep) is bool
        and input.dtype in _KERNEL_DTYPES
        and input.dim() == spatial_dims + 2
        and _torch_C._get_tracing_state() is None
        and not _torch_C._are_functorch_transforms_active()
        and _forward_ad._current_level < 0
        and not _torch_C._is_torch_function_mode_enabled()
        and _torch_C._len_torch_dispatch_stack() == 0
        and not _in_onnx_export(False)
    )


def _drop_block_checked(
    input: Tensor,
    p: float,
    block_size: List[int],
    inplace: bool,
    eps: float,
    training: bool,
    shared_channels: bool,
    gamma_scale: float,
    scale_by_keep: bool,
    spatial_dims: int,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """DropBlock with arguments of the right types; TorchScript compiles this (a scripted module calls it).

    The key comes from `generator` (eager calls only), else from the default generator of the
    input's device; it is drawn after every check passed.
    """
    _check_values(input, p, eps, gamma_scale, spatial_dims)
    if not training or p == 0.0:
        return input
    compiling = torch.compiler.is_compiling()
    transformed = False
    if not torch.jit.is_scripting():
        if _in_onnx_export(compiling):
            raise RuntimeError(
                "DropBlock in training mode cannot be exported to ONNX (it draws a random mask "
                "with custom ops); call model.eval() before torch.onnx.export, where DropBlock "
                "is the identity"
            )
        transformed = not compiling and _functorch.transforms_active()
    if generator is None:
        # The literals are _KEY_LOW and _KEY_HIGH: TorchScript reads no module-level ints.
        seed = torch.randint(-9223372036854775807 - 1, 9223372036854775807, (), dtype=torch.int64, device=input.device)
    else:
        seed = _draw_seed(input.device, generator)
    if compiling:
        # p travels as a tensor on the input's device, so that a scheduled p stays a graph input.
        # Inductor keeps a changing p symbolic only through tensor arithmetic (its
        # tensorify_python_scalars pass): `zeros + p` stays symbolic, while torch.full(p)
        # would specialize p and recompile the graph for every value. So does p * gamma_scale
        # taken as Python floats on torch 2.11 (timm's stage-3 layers): the product is taken on
        # the tensor, the same IEEE double product (zeros + p is p exactly).
        drop_probability = torch.zeros((), dtype=torch.float64, device=input.device) + p
        if gamma_scale != 1.0:
            drop_probability = drop_probability * gamma_scale
    else:
        # Eagerly, p stays on the CPU: the CUDA kernels take it by value (no fill kernel, no copy).
        seed_p = p if gamma_scale == 1.0 else p * gamma_scale
        drop_probability = torch.full((), seed_p, dtype=torch.float64, device="cpu")
    ops = torch.ops.dropblock_cuda
    mask, scale = ops.drop_block_mask(input, seed, drop_probability, block_size, eps, shared_channels)
    if not scale_by_keep:
        scale = torch.ones((), dtype=torch.float64, device=input.device)
    if not torch.jit.is_scripting():
        if transformed:
            return _functorch.apply(input, mask, scale, shared_channels, inplace)
    if not inplace:
        return ops.drop_block_apply(input, mask, scale, shared_channels)
    if torch.is_grad_enabled() and input.requires_grad:
        # Autograd needs the in-place write recorded; copy_ does that (and refuses leaves, as torch does).
        return input.copy_(ops.drop_block_apply(input, mask, scale, shared_channels))
    ops.drop_block_apply_(input, mask, scale, shared_channels)
    return input


_KEY_LOW, _KEY_HIGH = -(2**63), 2**63 - 1  # every int64 key (the high end exclusive, as randint's)


@torch.jit.unused  # TorchScript has no Generator.device; scripted modules draw from the default generator
def _draw_seed(device: torch.device, generator: Optional[torch.Generator]) -> Tensor:
    """The Philox key of one call, drawn from `generator`.

    The key is drawn by a native random op on the generator's device, so it follows
    torch.manual_seed, is traceable by torch.compile, is safe under CUDA graph capture (with a
    generator on a CUDA device), and a generator on another device than the input (e.g. a CPU
    generator for a CUDA input) gives the very mask that generator gives on its own device. A key
    drawn on the CPU is passed to the CUDA kernels by value (a CUDA graph captured with it replays
    that key, and capturing warns); one drawn on another CUDA device is copied to `device`.
    Without a generator, `_drop_block_checked` draws from the default generator of the input's
    device with the same call.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    seed = torch.randint(_KEY_LOW, _KEY_HIGH, (), dtype=torch.int64, device=generator.device, generator=generator)
    # The ops take the key on the CPU or on the input's device only.
    return seed if seed.device.type == "cpu" else seed.to(device)


def _traced_call(function, input, p, block_size, inplace, eps, training, extras):
    """One graph node for a call on a torch.fx Proxy (symbolic_trace, torchvision's feature extraction)."""
    if extras["generator"] is not None:
        raise TypeError("generator: a torch.Generator cannot be recorded in a torch.fx graph; trace without it")
    del extras["generator"]
    return input.tracer.create_proxy("call_function", function, (input, p, block_size, inplace, eps, training), extras)


def _drop_block(
    function,
    input: Tensor,
    p: float,
    block_size: BlockSize,
    inplace: bool,
    eps: float,
    training: bool,
    shared_channels: bool,
    generator: Optional[torch.Generator],
    gamma_scale: float,
    scale_by_keep: bool,
    spatial_dims: int,
) -> Tensor:
    """The eager entry of `function` (drop_block1d/2d/3d): the type checks, then `_drop_block_checked`."""
    if (
        type(block_size) is int
        and 1 <= block_size <= _MAX_BLOCK
        and _takes_fast_path(
            input, p, inplace, eps, training, generator, gamma_scale, shared_channels, scale_by_keep, spatial_dims
        )
    ):
        return _train_op(input, p, [block_size] * spatial_dims, eps, shared_channels, scale_by_keep)
    if not isinstance(input, Tensor):
        if isinstance(input, torch.fx.Proxy):
            return _traced_call(
                function,
                input,
                p,
                block_size,
                inplace,
                eps,
                training,
                dict(
                    shared_channels=shared_channels,
                    generator=generator,
                    gamma_scale=gamma_scale,
                    scale_by_keep=scale_by_keep,
                ),
            )
        raise TypeError(f"input: expected a Tensor, got {type(input).__name__}")
    p = _check_real(p, "p")
    eps = _check_real(eps, "eps")
    gamma_scale = _check_real(gamma_scale, "gamma_scale")
    sizes = list(_check_block_size(block_size, spatial_dims))
    return _drop_block_checked(
        input,
        p,
        sizes,
        _check_flag(inplace, "inplace"),
        eps,
        _check_flag(training, "training"),
        _check_flag(shared_channels, "shared_channels"),
        gamma_scale,
        _check_flag(scale_by_keep, "scale_by_keep"),
        spatial_dims,
        generator,
    )


_DOC = """Randomly zeroes contiguous blocks of a {dims}-d feature map (DropBlock, arXiv 1810.12890).

    Args:
        input: a {layout} float32, float64, float16 or bfloat16 tensor.
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
        gamma_scale: a factor on the seed rate gamma (timm's ``gamma_scale``): seeds are drawn
            as for a drop probability ``p * gamma_scale``, which must be <= 1.
        scale_by_keep: rescale the kept elements by ``numel / (eps + kept)``; with False they
            keep their values (timm's ``scale_by_keep=False``).

    Returns:
        ``input * keep * numel(input) / (eps + kept elements of input)`` with dropped elements
        exactly zero (``input * keep`` with ``scale_by_keep=False``).
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
    gamma_scale: float = 1.0,
    scale_by_keep: bool = True,
) -> Tensor:
    return _drop_block(
        drop_block1d,
        input,
        p,
        block_size,
        inplace,
        eps,
        training,
        shared_channels,
        generator,
        gamma_scale,
        scale_by_keep,
        1,
    )


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
    gamma_scale: float = 1.0,
    scale_by_keep: bool = True,
) -> Tensor:
    return _drop_block(
        drop_block2d,
        input,
        p,
        block_size,
        inplace,
        eps,
        training,
        shared_channels,
        generator,
        gamma_scale,
        scale_by_keep,
        2,
    )


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
    gamma_scale: float = 1.0,
    scale_by_keep: bool = True,
) -> Tensor:
    return _drop_block(
        drop_block3d,
        input,
        p,
        block_size,
        inplace,
        eps,
        training,
        shared_channels,
        generator,
        gamma_scale,
        scale_by_keep,
        3,
    )


drop_block1d.__doc__ = _DOC.format(dims=1, layout="(N, C, L)")
drop_block2d.__doc__ = _DOC.format(dims=2, layout="(N, C, H, W)")
drop_block3d.__doc__ = _DOC.format(dims=3, layout="(N, C, D, H, W)")
