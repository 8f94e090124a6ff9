"""Misuse of the raw ops and of the public API: wrong devices (meta mixes), dtypes, shapes,
overlapping memory, arguments that require grad and out-of-range values each get a clear
exception naming the argument, or a correct result; never uninitialised memory, a hang or a
silently dropped gradient (issue 12).

The fake kernels of dropblock_cuda/_registrations.py serve torch.compile and, through the Meta
dispatch key, every call with a meta tensor among its arguments: they must fail where the real
kernels fail, with the same exception and message. tests/run_sanitizers.sh runs this module
under AddressSanitizer and UndefinedBehaviorSanitizer (misaligned reads, overflows).
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

from dropblock_cuda import drop_block1d, drop_block2d, drop_block3d
from helpers import EPS, env_finding_package, ops, requires_cuda, shape_strategies
from reference import unpack_mask

FUNCTIONS = {1: drop_block1d, 2: drop_block2d, 3: drop_block3d}
# An input of 2**63 - 1 elements (7**2 * 73 * 127 * 337 * 92737 * 649657), all one element in memory.
HUGE_SHAPE = (49 * 73, 127 * 337, 92737, 649657)


def seed_(value=1, device="cpu"):
    return torch.tensor(value, dtype=torch.int64, device=device)


def p_(value=0.3, device="cpu"):
    return torch.tensor(value, dtype=torch.float64, device=device)


def positive(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) + 0.5).to(dtype)


def mask_and_scale(x, shared=False, p=0.3, key=1):
    return ops.drop_block_mask(x, seed_(key, x.device), p_(p, x.device), [3] * (x.dim() - 2), EPS, shared)


def reference_apply(x, mask, scale, shared):
    """out = keep ? x * scale : 0 from the packed mask, in the op's arithmetic (opmath, then x's dtype)."""
    n, c = x.shape[:2]
    spatial = tuple(x.shape[2:])
    planes = n if shared else n * c
    keep = unpack_mask(mask.cpu().numpy(), planes * int(np.prod(spatial))).reshape((planes,) + spatial)
    keep = torch.from_numpy(keep.astype(bool))
    keep = keep.view(n, 1, *spatial).expand(x.shape) if shared else keep.view(x.shape)
    opmath = torch.float64 if x.dtype == torch.float64 else torch.float32
    scaled = (x.cpu().to(opmath) * scale.cpu().to(opmath)).to(x.dtype)
    return torch.where(keep, scaled, torch.zeros((), dtype=x.dtype))


def raised(call):
    """(exception type, first line of its message) of call(), which must raise."""
    with pytest.raises(Exception) as info:
        call()
    return type(info.value), str(info.value).splitlines()[0]


# ---- the fake kernels fail as the real ones do ---------------------------------------------------
#
# Each case builds the arguments of a call that the real CPU kernel refuses (checked first), then
# makes the same call on fake tensors (torch.compile's) and on meta tensors (the Meta kernel).


def _x(shape=(2, 3, 8, 8), dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


def _mask_args(x=None, seed=None, p=None, block=None, eps=EPS, shared=False):
    x = _x() if x is None else x
    return (
        x,
        seed_() if seed is None else seed,
        p_() if p is None else p,
        [3] * (x.dim() - 2) if block is None else block,
        eps,
        shared,
    )


def _apply_args(x=None, mask=None, scale=None, shared=False):
    x = _x() if x is None else x
    if mask is None:  # the right mask for x's shape
        mask = mask_and_scale(_x(x.shape), shared)[0]
    return x, mask, p_(1.0) if scale is None else scale, shared


MASK_CASES = {
    "input_2d": lambda: _mask_args(x=_x((4, 4)), block=[]),
    "input_6d": lambda: _mask_args(x=_x((1, 1, 2, 2, 2, 2)), block=[1, 1, 1, 1]),
    "input_int64": lambda: _mask_args(x=_x(dtype=torch.int64)),
    "input_float8": lambda: _mask_args(x=_x(dtype=torch.float8_e4m3fn)),
    "input_complex": lambda: _mask_args(x=_x(dtype=torch.complex64)),
    "block_size_count": lambda: _mask_args(block=[3]),
    "block_size_zero": lambda: _mask_args(block=[3, 0]),
    "block_size_negative": lambda: _mask_args(block=[-2, 3]),
    "eps_negative": lambda: _mask_args(eps=-1.0),
    "eps_nan": lambda: _mask_args(eps=float("nan")),
    "seed_int32": lambda: _mask_args(seed=torch.tensor(1, dtype=torch.int32)),
    "seed_1d": lambda: _mask_args(seed=torch.tensor([1])),
    "seed_float": lambda: _mask_args(seed=torch.tensor(1.0)),
    "p_float32": lambda: _mask_args(p=torch.tensor(0.3)),
    "p_2_elements": lambda: _mask_args(p=p_().expand(2)),
    # A zero-size input whose sizes multiply past int64: its mask size would wrap around.
    "bits_overflow": lambda: _mask_args(x=torch.empty(0, 1, 1, 1).expand(0, 1, 2**40, 2**40)),
    "bits_overflow_shared": lambda: _mask_args(
        x=torch.empty(2**40, 0, 1, 1).expand(2**40, 0, 2**40, 2**40), shared=True
    ),
}

APPLY_CASES = {
    "input_2d": lambda: (_x((4, 4)), torch.zeros(8, dtype=torch.uint8), p_(1.0), False),
    "input_int64": lambda: _apply_args(x=_x(dtype=torch.int64)),
    "input_float8": lambda: _apply_args(x=_x(dtype=torch.float8_e5m2)),
    "mask_float32": lambda: _apply_args(mask=torch.zeros(48)),
    "scale_float32": lambda: _apply_args(scale=torch.tensor(1.0)),
    "scale_2_elements": lambda: _apply_args(scale=p_(1.0).expand(2)),
    "mask_2d": lambda: _apply_args(mask=torch.zeros(6, 8, dtype=torch.uint8)),
    "mask_strided": lambda: _apply_args(mask=torch.zeros(96, dtype=torch.uint8)[::2]),
    "mask_too_short": lambda: _apply_args(mask=torch.zeros(40, dtype=torch.uint8)),
    "mask_of_the_shared_size": lambda: _apply_args(mask=mask_and_scale(_x(), shared=True)[0]),
    # 2**63 - 1 logical elements: 2**60 mask bytes, computed without overflow (bits + 63 would).
    "mask_for_2_63_elements": lambda: _apply_args(
        x=torch.zeros(1, 1, 1, 1).expand(HUGE_SHAPE), mask=torch.zeros(8, dtype=torch.uint8)
    ),
    "bits_overflow": lambda: _apply_args(
        x=torch.empty(0, 1, 1, 1).expand(0, 1, 2**40, 2**40), mask=torch.zeros(0, dtype=torch.uint8)
    ),
}

EXPECTED = {  # (exception, start of the message) of each case
    "input_2d": (ValueError, "input: expected (N, C, *spatial) with 1 to 3 spatial dimensions, got 2 dimensions"),
    "input_6d": (ValueError, "input: expected (N, C, *spatial)"),
    "input_int64": (TypeError, "input: expected a float16, bfloat16, float32 or float64 tensor, got Long"),
    "input_float8": (TypeError, "input: expected a float16, bfloat16, float32 or float64 tensor, got Float8_e"),
    "input_complex": (TypeError, "input: expected a float16"),
    "block_size_count": (ValueError, "block_size: expected one size per spatial dimension (2), got 1"),
    "block_size_zero": (ValueError, "block_size: every size must be >= 1, got [3, 0]"),
    "block_size_negative": (ValueError, "block_size: every size must be >= 1"),
    "eps_negative": (ValueError, "eps: expected a non-negative number, got -1"),
    "eps_nan": (ValueError, "eps: expected a non-negative number, got nan"),
    "seed_int32": (ValueError, "seed: expected a 0-dim int64 tensor"),
    "seed_1d": (ValueError, "seed: expected a 0-dim int64 tensor"),
    "seed_float": (ValueError, "seed: expected a 0-dim int64 tensor"),
    "p_float32": (ValueError, "p: expected a 0-dim float64 tensor"),
    "p_2_elements": (ValueError, "p: expected a 0-dim float64 tensor"),
    "bits_overflow": (ValueError, "input: a mask for shape [0, 1, 1099511627776, 1099511627776] would have more"),
    "bits_overflow_shared": (ValueError, "input: a mask for shape"),
    "mask_float32": (TypeError, "mask: expected uint8, got Float"),
    "scale_float32": (TypeError, "scale: expected float64, got Float"),
    "scale_2_elements": (ValueError, "scale: expected one element, got 2"),
    "mask_2d": (ValueError, "mask: expected a contiguous 1-d tensor, got shape [6, 8]"),
    "mask_strided": (ValueError, "mask: expected a contiguous 1-d tensor, got shape [48] with strides [2]"),
    "mask_too_short": (ValueError, "mask: expected 48 bytes for an input of shape [2, 3, 8, 8], got 40"),
    "mask_of_the_shared_size": (ValueError, "mask: expected 48 bytes"),
    "mask_for_2_63_elements": (ValueError, f"mask: expected {2**60} bytes for an input of shape"),
}

CASES = [("drop_block_mask", name) for name in MASK_CASES] + [
    (op, name) for op in ("drop_block_apply", "drop_block_apply_") for name in APPLY_CASES
]


def _build(op, name):
    return (MASK_CASES if op == "drop_block_mask" else APPLY_CASES)[name]()


def _to_meta(value):
    """value on the meta device with its very strides (Tensor.to makes a non-dense tensor dense)."""
    if not isinstance(value, torch.Tensor):
        return value
    return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")


@pytest.mark.parametrize("op,name", CASES)
def test_real_fake_and_meta_kernels_refuse_alike(op, name):
    kind, start = EXPECTED[name]
    args = _build(op, name)
    real = raised(lambda: getattr(ops, op)(*args))
    assert real[0] is kind and real[1].startswith(start), real

    mode = FakeTensorMode(allow_non_fake_inputs=False)
    fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
    with mode:
        fake = raised(lambda: getattr(ops, op)(*fake_args))
    assert fake == real

    meta = raised(lambda: getattr(ops, op)(*[_to_meta(a) for a in args]))
    assert meta == (real[0], real[1].replace("cpu", "meta"))


def test_a_mask_too_large_to_allocate_is_an_allocation_error_not_a_short_mask():
    # 2**63 - 1 elements need 2**60 mask bytes: asked of the allocator (which refuses), not wrapped.
    x = torch.zeros(1, 1, 1, 1).expand(HUGE_SHAPE)
    with pytest.raises(RuntimeError, match=str(2**60)):
        ops.drop_block_mask(*_mask_args(x=x))


def test_p_out_of_range_is_refused_by_the_real_kernel():
    # The fake kernels cannot read p (fake and meta tensors hold no value); the CPU kernel reads it.
    for value in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="p: drop probability has to be between 0 and 1"):
            ops.drop_block_mask(*_mask_args(p=p_(value)))


# ---- devices: meta mixed with real tensors -------------------------------------------------------


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("op", ["drop_block_apply", "drop_block_apply_"])
@pytest.mark.parametrize("on_meta", ["input", "mask", "scale"])
def test_apply_with_one_argument_on_meta_raises(op, on_meta, shared):
    x = positive((2, 3, 8, 8))
    mask, scale = mask_and_scale(x, shared)
    args = {"input": x.clone(), "mask": mask, "scale": scale}
    args[on_meta] = args[on_meta].to("meta")
    before = args["input"].clone()
    named = "scale" if on_meta == "scale" else "mask"  # a meta input: the mask is then on the wrong device
    input_device = "meta" if on_meta == "input" else "cpu"
    other_device = "cpu" if on_meta == "input" else "meta"
    with pytest.raises(
        ValueError,
        match=rf"^{named}: expected a tensor on the input's device \({input_device}\), "
        rf"got one on {other_device}$",
    ):
        getattr(ops, op)(args["input"], args["mask"], args["scale"], shared)
    if on_meta != "input":
        assert torch.equal(args["input"], before)


@pytest.mark.parametrize("on_meta", ["seed", "p"])
def test_mask_with_a_scalar_on_meta_for_a_cpu_input_raises(on_meta):
    x = positive((2, 3, 8, 8))
    args = {"seed": seed_(), "p": p_()}
    args[on_meta] = args[on_meta].to("meta")
    with pytest.raises(
        ValueError,
        match=rf"^{on_meta}: expected a 0-dim .* on the CPU or on the input's device "
        r"\(cpu\), got .* on meta$",
    ):
        ops.drop_block_mask(x, args["seed"], args["p"], [3, 3], EPS, False)


def test_meta_input_with_cpu_scalars_gives_meta_outputs():
    # seed and p may sit on the CPU whatever the input's device: outputs on the input's device.
    x = torch.empty(2, 3, 8, 8, device="meta")
    mask, scale = ops.drop_block_mask(x, seed_(), p_(), [3, 3], EPS, False)
    assert (mask.device.type, mask.shape, mask.dtype) == ("meta", (48,), torch.uint8)
    assert (scale.device.type, scale.shape, scale.dtype) == ("meta", (), torch.float64)


def test_all_meta_calls_give_meta_results_of_the_right_layout():
    x = torch.empty(2, 3, 8, 8, device="meta").contiguous(memory_format=torch.channels_last)
    mask, scale = ops.drop_block_mask(x, seed_(device="meta"), p_(device="meta"), [3, 3], EPS, True)
    assert mask.shape == (16,)
    out = ops.drop_block_apply(x, mask, scale, True)
    assert out.device.type == "meta" and out.stride() == x.stride()
    assert ops.drop_block_apply_(x, mask, scale, True) is None
    assert drop_block2d(x, 0.3, 3).device.type == "meta"  # the public API too


def test_saved_tensors_moved_to_meta_make_backward_raise_not_return_garbage():
    x = positive((2, 3, 8, 8)).requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t.to("meta"), lambda t: t):
        y = drop_block2d(x, 0.3, 3)
    with pytest.raises(ValueError, match=r"^mask: expected a tensor on the input's device \(cpu\), got one on meta$"):
        y.sum().backward()
    assert x.grad is None


# ---- arguments that require grad -----------------------------------------------------------------


@pytest.mark.parametrize("op", ["drop_block_apply", "drop_block_apply_"])
def test_a_scale_that_requires_grad_is_refused(op):
    x = positive((2, 3, 8, 8))
    mask, scale = mask_and_scale(x)
    with pytest.raises(RuntimeError, match=rf"^{op}: scale requires grad, but the op has no gradient for it"):
        getattr(ops, op)(x, mask, scale.clone().requires_grad_(), False)
    # A float "mask" that requires grad: refused for its grad before its dtype.
    with pytest.raises(RuntimeError, match=rf"^{op}: mask requires grad"):
        getattr(ops, op)(x, mask.double().requires_grad_(), scale, False)


def test_where_autograd_does_not_record_a_scale_that_requires_grad_is_fine():
    x = positive((2, 3, 8, 8))
    mask, scale = mask_and_scale(x)
    expected = ops.drop_block_apply(x, mask, scale, False)
    with torch.no_grad():
        assert torch.equal(ops.drop_block_apply(x, mask, scale.clone().requires_grad_(), False), expected)


def test_a_p_that_requires_grad_is_refused():
    x = positive((2, 3, 8, 8))
    with pytest.raises(RuntimeError, match=r"^drop_block_mask: p requires grad, but the op has no gradient for it"):
        ops.drop_block_mask(x, seed_(), p_().requires_grad_(), [3, 3], EPS, False)


def test_an_input_that_requires_grad_is_fine_for_the_mask():
    # The mask depends on the input's shape only: the same mask, with no gradient to drop.
    x = positive((2, 3, 8, 8))
    expected = mask_and_scale(x)
    mask, scale = mask_and_scale(x.clone().requires_grad_())
    assert not mask.requires_grad and not scale.requires_grad
    assert torch.equal(mask, expected[0]) and torch.equal(scale, expected[1])


# ---- in place: the written tensor against every input --------------------------------------------


def _mask_inside_the_input():
    buffer = positive((2 * 3 * 8 * 8,))
    return buffer.view(2, 3, 8, 8), buffer.view(torch.uint8)[16 : 16 + 48]


def _mask_straddling_the_inputs_end():
    buffer = positive((2 * 3 * 8 * 8 + 16,))
    return buffer[:-16].view(2, 3, 8, 8), buffer.view(torch.uint8)[2 * 3 * 8 * 8 * 4 - 8 :][:48]  # 8 bytes inside


def _mask_beside_a_strided_input():
    # Overlap of a non-dense tensor is not worked out: within one storage it is refused.
    buffer = positive((2 * 3 * 8 * 16 + 12,))
    return buffer[:-12].view(2, 3, 8, 16)[..., ::2], buffer[-12:].view(torch.uint8)[:48]


@pytest.mark.parametrize(
    "place",
    [_mask_inside_the_input, _mask_straddling_the_inputs_end, _mask_beside_a_strided_input],
    ids=lambda f: f.__name__[1:],
)
def test_inplace_refuses_a_mask_in_the_inputs_memory(place):
    x, alias = place()  # a mask of 48 bytes, for a (2, 3, 8, 8) input
    _, scale = mask_and_scale(x)
    with pytest.raises(RuntimeError, match=r"^drop_block_apply_: mask shares memory with the input"):
        ops.drop_block_apply_(x, alias, scale, False)


def test_inplace_refuses_a_scale_that_is_the_input():
    x = torch.full((1, 1, 1), 2.0, dtype=torch.float64)
    mask, _ = mask_and_scale(x)
    with pytest.raises(RuntimeError, match=r"^drop_block_apply_: scale shares memory with the input"):
        ops.drop_block_apply_(x, mask, x.view(()), False)  # full overlap


def test_inplace_refuses_an_input_whose_elements_share_memory():
    x = positive((2, 3, 1, 8)).expand(2, 3, 8, 8)
    mask, scale = mask_and_scale(x)
    with pytest.raises(RuntimeError, match=r"^drop_block_apply_: input has elements that share memory"):
        ops.drop_block_apply_(x, mask, scale, False)


def test_a_mask_beside_a_dense_input_in_one_storage_is_used():
    buffer = positive((2 * 3 * 8 * 8 + 12,))
    x = buffer[:-12].view(2, 3, 8, 8)
    mask, scale = mask_and_scale(x)
    beside = buffer[-12:].view(torch.uint8)
    beside.copy_(mask)
    expected = reference_apply(x, mask, scale, False)
    ops.drop_block_apply_(x, beside, scale, False)
    assert torch.equal(x, expected)


def test_out_of_place_apply_may_read_a_mask_from_the_input():
    buffer = positive((2 * 3 * 8 * 8,))
    x = buffer.view(2, 3, 8, 8)
    mask, scale = mask_and_scale(x)
    inside = buffer.view(torch.uint8)[8 : 8 + mask.numel()]
    inside.copy_(mask)  # x now holds the mask's bytes (NaNs among them): the op reads both, writes neither
    torch.testing.assert_close(
        ops.drop_block_apply(x, inside, scale, False),
        reference_apply(x, mask, scale, False),
        rtol=0,
        atol=0,
        equal_nan=True,
    )


# ---- masks at any byte offset (the kernels read 64-bit words) ------------------------------------

LAYOUTS = {
    "contiguous": lambda t: t,
    "channels_last": lambda t: t.movedim(1, -1).contiguous().movedim(-1, 1),
    "strided": lambda t: t.transpose(-1, -2).contiguous().transpose(-1, -2),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("offset", range(1, 8))
def test_a_mask_at_an_odd_byte_offset_gives_the_aligned_result(offset, shared, layout):
    # A misaligned 64-bit load is undefined behaviour (x86 hides it; UBSan in run_sanitizers.sh does not).
    x = LAYOUTS[layout](positive((2, 17, 9, 11)))
    mask, scale = mask_and_scale(x, shared)
    shifted = torch.empty(mask.numel() + offset, dtype=torch.uint8)[offset:]
    shifted.copy_(mask)
    expected = reference_apply(x, mask, scale, shared)
    assert torch.equal(ops.drop_block_apply(x, shifted, scale, shared), expected)
    ops.drop_block_apply_(x, shifted, scale, shared)
    assert torch.equal(x, expected)
    assert torch.equal(shifted, mask)  # the copy is the op's own


@pytest.mark.parametrize("threads", [1, 2, 8])
@pytest.mark.parametrize("shared", [False, True])
def test_channels_last_tiles_of_any_length_give_the_reference(threads, shared):
    # The channels-last tiles shrink (512 down to 64 positions) to give every thread work: each
    # length, and tiles ending inside a mask word, give the same result.
    torch.set_num_threads(threads)  # conftest restores the count
    for shape in [(1, 16, 40, 40), (3, 9, 23, 29), (2, 33, 7, 130)]:
        x = LAYOUTS["channels_last"](positive(shape))
        mask, scale = mask_and_scale(x, shared)
        assert torch.equal(ops.drop_block_apply(x, mask, scale, shared), reference_apply(x, mask, scale, shared))


_EXAMPLES = int(os.environ.get("DROPBLOCK_MISUSE_EXAMPLES", "25"))


@settings(max_examples=_EXAMPLES, deadline=None)
@given(
    **shape_strategies(max_channels=20, max_side=13),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    layout=st.sampled_from(sorted(LAYOUTS)),
    shared=st.booleans(),
    mask_offset=st.integers(0, 7),
    input_offset=st.integers(0, 3),
    inplace=st.booleans(),
    key=st.integers(-(2**63), 2**63 - 1),
    p=st.floats(0.0, 1.0),
)
def test_random_views_offsets_and_keys_match_the_reference(
    n, c, spatial, dtype, layout, shared, mask_offset, input_offset, inplace, key, p
):
    # Inputs and masks at any element / byte offset, every layout path, every key and p.
    shape = (n, c, *spatial)
    numel = int(np.prod(shape))
    x = positive((numel + input_offset,), dtype, seed=abs(key) % 1000)[input_offset:].view(shape)
    x = LAYOUTS[layout](x)
    mask, scale = ops.drop_block_mask(x, seed_(key), p_(p), [3] * len(spatial), EPS, shared)
    shifted = torch.empty(mask.numel() + mask_offset, dtype=torch.uint8)[mask_offset:]
    shifted.copy_(mask)
    expected = reference_apply(x, mask, scale, shared)
    if inplace:
        ops.drop_block_apply_(x, shifted, scale, shared)
        assert torch.equal(x, expected)
    else:
        assert torch.equal(ops.drop_block_apply(x, shifted, scale, shared), expected)


# ---- tensors with flags or layouts the kernels do not read ---------------------------------------


def test_negative_views_are_resolved_before_the_kernels_read_them():
    # A neg view's memory holds -x: torch's Negative fallback resolves it for our ops too.
    x = positive((2, 3, 8, 8))
    mask, scale = mask_and_scale(x)
    expected = -reference_apply(x, mask, scale, False)
    assert torch.equal(ops.drop_block_apply(torch._neg_view(x), mask, scale, False), expected)
    inplace = torch._neg_view(x.clone())
    ops.drop_block_apply_(inplace, mask, scale, False)
    assert torch.equal(inplace, expected)


@pytest.mark.parametrize("sparse", ["input", "mask"])
def test_sparse_tensors_are_not_implemented(sparse):
    x = positive((2, 3, 8, 8))
    mask, scale = mask_and_scale(x)
    args = {"input": x, "mask": mask}
    args[sparse] = args[sparse].to_sparse()
    with pytest.raises(
        NotImplementedError, match="'dropblock_cuda::drop_block_apply' with arguments from the 'SparseCPU' backend"
    ):
        ops.drop_block_apply(args["input"], args["mask"], scale, False)
    with pytest.raises(NotImplementedError, match="SparseCPU"):
        ops.drop_block_mask(x.to_sparse(), seed_(), p_(), [3, 3], EPS, False)


# ---- out-of-range values that have a correct result ----------------------------------------------


def test_block_sizes_past_the_map_and_extreme_keys_are_valid():
    x = positive((2, 3, 5, 6))
    for key in (-(2**63), 2**63 - 1, 0):
        clamped = ops.drop_block_mask(x, seed_(key), p_(0.5), [5, 6], EPS, False)
        huge = ops.drop_block_mask(x, seed_(key), p_(0.5), [2**62, 2**63 - 1], EPS, False)
        assert torch.equal(huge[0], clamped[0]) and torch.equal(huge[1], clamped[1])


def test_an_infinite_eps_scales_to_zero():
    x = positive((2, 3, 8, 8))
    mask, scale = ops.drop_block_mask(x, seed_(), p_(), [3, 3], float("inf"), False)
    assert scale.item() == 0.0
    assert torch.equal(ops.drop_block_apply(x, mask, scale, False), torch.zeros_like(x))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_public_api_refuses_float8_naming_the_input(dims):
    x = torch.zeros((2, 3) + (6,) * dims).to(torch.float8_e4m3fn)
    with pytest.raises(TypeError, match="input"):
        FUNCTIONS[dims](x, 0.3, 3)


def test_public_inplace_on_an_expanded_input_names_the_input():
    x = positive((2, 3, 1, 8)).expand(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match="input has elements that share memory"):
        drop_block2d(x, 0.3, 3, inplace=True)


# ---- fork: a child of a parent that used the thread pool ----------------------------------------

FORK_CHILD = textwrap.dedent("""
    import os, sys, time
    import torch
    import dropblock_cuda
    from dropblock_cuda import drop_block1d, drop_block2d, drop_block3d

    torch.set_num_threads(2)  # the parent's pool has threads, whatever this machine has
    drop_block2d(torch.ones(8, 64, 56, 56), 0.1, 7)  # parallel regions in the parent
    pid = os.fork()
    if pid == 0:
        # At most at::internal::GRAIN_SIZE (32768) elements each: torch's own ops stay serial there.
        x = torch.rand(2, 4, 64, 64) + 0.5
        for view in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3)):
            for shared in (False, True):
                y = drop_block2d(view, 0.3, 3, shared_channels=shared)
                assert ((y == 0) | (y > view)).all()
                drop_block2d(view.clone(), 0.3, 3, inplace=True, shared_channels=shared)
        drop_block1d(torch.ones(4, 8, 1024), 0.3, 5)
        drop_block3d(torch.ones(1, 64, 8, 8, 8).contiguous(memory_format=torch.channels_last_3d), 0.3, 2)
        g = torch.ones(2, 4, 64, 64, requires_grad=True)
        drop_block2d(g, 0.3, 3).sum().backward()
        os._exit(0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            sys.exit(os.waitstatus_to_exitcode(status))
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    print("the forked child hung", flush=True)
    sys.exit(3)
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_runs_small_tensors_without_hanging(tmp_path):
    # A DataLoader worker started with fork: libgomp's pool does not survive fork, so the child must
    # not enter a parallel region for a small tensor (the kernels go parallel past GRAIN_SIZE only).
    run = subprocess.run(
        [sys.executable, "-c", FORK_CHILD],
        env=env_finding_package(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]


# ---- CUDA (skipped without a device) -------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("other", ["cpu", "meta"])
def test_cuda_apply_with_a_mask_elsewhere_raises(other):
    x = torch.rand(2, 3, 8, 8, device="cuda")
    mask, scale = mask_and_scale(x)
    with pytest.raises(
        ValueError, match=rf"^mask: expected a tensor on the input's device \(cuda:0\), got one on {other}"
    ):
        ops.drop_block_apply(x, mask.to(other), scale, False)
    with pytest.raises(
        ValueError, match=rf"^scale: expected a tensor on the input's device \(cuda:0\), got one on {other}"
    ):
        ops.drop_block_apply_(x, mask, scale.to(other), False)


@requires_cuda
def test_cuda_mask_with_a_seed_on_meta_raises():
    x = torch.rand(2, 3, 8, 8, device="cuda")
    with pytest.raises(ValueError, match=r"^seed: expected a 0-dim int64 tensor on the CPU or on the input's device"):
        ops.drop_block_mask(x, seed_(device="meta"), p_(device="cuda"), [3, 3], EPS, False)


@requires_cuda
def test_cuda_inplace_refuses_a_mask_inside_the_input():
    buffer = torch.rand(2 * 3 * 8 * 8, device="cuda") + 0.5
    x = buffer.view(2, 3, 8, 8)
    mask, scale = mask_and_scale(x)
    with pytest.raises(RuntimeError, match=r"^drop_block_apply_: mask shares memory with the input"):
        ops.drop_block_apply_(x, buffer.view(torch.uint8)[8 : 8 + mask.numel()], scale, False)
