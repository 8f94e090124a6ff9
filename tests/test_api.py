"""The public API's contract: semantics, dtypes, layouts, autograd, saved state, op checks, errors."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dropblock_cuda import DropBlock1d, DropBlock2d, DropBlock3d, drop_block1d, drop_block2d, drop_block3d
from helpers import key_of, mask_of, ops, p_tensor, shape_strategies

FUNCTIONS = {1: drop_block1d, 2: drop_block2d, 3: drop_block3d}
MODULES = {1: DropBlock1d, 2: DropBlock2d, 3: DropBlock3d}
SHAPES = {1: (2, 3, 40), 2: (2, 3, 16, 18), 3: (2, 3, 6, 7, 8)}


def positive(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) + 0.5).to(dtype)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_not_training_or_p_zero_returns_the_input(dims):
    x = positive(SHAPES[dims])
    f = FUNCTIONS[dims]
    assert f(x, 0.5, 3, training=False) is x
    assert f(x, 0.0, 3) is x
    module = MODULES[dims](0.5, 3).eval()
    assert module(x) is x


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("shared", [False, True])
def test_output_is_input_times_keep_times_global_scale(dims, shared):
    x = positive(SHAPES[dims], torch.float64)
    g = gen(3)
    key = key_of(gen(3))
    y = FUNCTIONS[dims](x, 0.4, 3, generator=g, shared_channels=shared)
    keep, scale = mask_of(x, key, 0.4, (3,) * dims, shared)
    keep_full = torch.from_numpy(keep)
    if shared:
        keep_full = keep_full.unsqueeze(1).expand(x.shape)
    keep_full = keep_full.reshape(x.shape)
    kept = int(keep_full.sum())
    expected_scale = x.numel() / (1e-6 + kept)
    assert scale == pytest.approx(expected_scale, rel=1e-15)
    torch.testing.assert_close(y, torch.where(keep_full, x * expected_scale, 0.0), rtol=1e-15, atol=0)


def test_everything_dropped_gives_zeros_not_nan():
    x = positive((2, 3, 5, 5))
    y = drop_block2d(x, 1.0, 5, eps=0.0)
    assert torch.equal(y, torch.zeros_like(x))


def test_dropped_elements_are_exactly_zero_whatever_the_input():
    x = torch.full((1, 4, 8, 8), float("nan"))
    x[0, 0] = float("inf")
    y = drop_block2d(x, 0.5, 3, generator=gen(1))
    dropped = torch.from_numpy(~mask_of(x, key_of(gen(1)), 0.5, (3, 3))[0]).reshape(x.shape)
    assert dropped.any()
    assert (y[dropped] == 0).all()


@pytest.mark.parametrize("shared", [False, True])
def test_inplace_writes_into_the_input_and_returns_it(shared):
    x = positive((2, 3, 16, 16))
    expected = drop_block2d(x, 0.3, 4, generator=gen(5), shared_channels=shared)
    y = drop_block2d(x, 0.3, 4, inplace=True, generator=gen(5), shared_channels=shared)
    assert y is x
    torch.testing.assert_close(x, expected, rtol=0, atol=0)


def test_inplace_under_autograd_matches_out_of_place():
    base = positive((2, 3, 12, 12)).requires_grad_()
    x = base * 1.0
    y = drop_block2d(x, 0.3, 3, inplace=True, generator=gen(8))
    assert y is x
    y.sum().backward()
    ref_base = base.detach().clone().requires_grad_()
    ref = drop_block2d(ref_base, 0.3, 3, generator=gen(8))
    ref.sum().backward()
    torch.testing.assert_close(base.grad, ref_base.grad, rtol=0, atol=0)


def test_inplace_on_a_leaf_that_requires_grad_is_refused():
    x = positive((1, 2, 8, 8)).requires_grad_()
    with pytest.raises(RuntimeError, match="leaf"):
        drop_block2d(x, 0.3, 3, inplace=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_compute_in_opmath_with_the_same_mask(dtype):
    x = positive((2, 4, 20, 20), dtype)
    y = drop_block2d(x, 0.25, 5, generator=gen(2))
    y64 = drop_block2d(x.double(), 0.25, 5, generator=gen(2))
    assert y.dtype == dtype
    keep = y64 != 0
    assert torch.equal(y != 0, keep)
    # float32 arithmetic for the reduced types and float32, float64 for float64, as torch does.
    opmath = torch.float64 if dtype == torch.float64 else torch.float32
    scale = (y64[keep] / x.double()[keep])[0].to(opmath)
    expected = torch.where(keep, (x.to(opmath) * scale).to(dtype), torch.zeros((), dtype=dtype))
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_half_precision_scale_survives_many_kept_elements():
    # torchvision sums an fp16 mask in fp16 and returns zeros past ~65k kept elements.
    x = torch.ones(4, 16, 64, 64, dtype=torch.float16)
    y = drop_block2d(x, 0.1, 7, generator=gen(0))
    kept = int((y != 0).sum())
    assert kept > 65536
    expected = x.numel() / (1e-6 + kept)
    torch.testing.assert_close(y[y != 0].float(), torch.full((kept,), expected), rtol=1e-3, atol=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda x: x.contiguous(memory_format=torch.channels_last),
        lambda x: x.transpose(2, 3).contiguous().transpose(2, 3),
        lambda x: torch.stack([x, -x], dim=-1)[..., 0],
        lambda x: x.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3),
    ],
)
@pytest.mark.parametrize("shared", [False, True])
def test_layout_does_not_change_the_result(make, shared):
    x = positive((2, 3, 14, 15))
    expected = drop_block2d(x, 0.3, 4, generator=gen(4), shared_channels=shared)
    strided = make(x)
    assert torch.equal(strided, x)
    y = drop_block2d(strided, 0.3, 4, generator=gen(4), shared_channels=shared)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    inplace = make(x)
    drop_block2d(inplace, 0.3, 4, inplace=True, generator=gen(4), shared_channels=shared)
    torch.testing.assert_close(inplace, expected, rtol=0, atol=0)


def test_output_keeps_the_memory_format():
    x = positive((2, 3, 8, 8)).contiguous(memory_format=torch.channels_last)
    assert drop_block2d(x, 0.3, 3).is_contiguous(memory_format=torch.channels_last)
    x3 = positive((2, 3, 4, 5, 6)).contiguous(memory_format=torch.channels_last_3d)
    assert drop_block3d(x3, 0.3, 2).is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("shape", [(0, 3, 5, 5), (2, 0, 5, 5), (2, 3, 0, 5), (2, 3, 5, 0)])
@pytest.mark.parametrize("shared", [False, True])
def test_zero_size_tensors(shape, shared):
    x = torch.empty(shape, requires_grad=True)
    y = drop_block2d(x, 0.5, 3, shared_channels=shared)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_manual_seed_reproduces_and_calls_draw_fresh_masks():
    x = positive((2, 4, 16, 16))
    torch.manual_seed(123)
    a = drop_block2d(x, 0.3, 3)
    b = drop_block2d(x, 0.3, 3)
    torch.manual_seed(123)
    a2 = drop_block2d(x, 0.3, 3)
    assert torch.equal(a, a2)
    assert not torch.equal(a, b)
    assert torch.equal(drop_block2d(x, 0.3, 3, generator=gen(9)), drop_block2d(x, 0.3, 3, generator=gen(9)))


def test_generator_leaves_the_default_generator_alone():
    x = positive((1, 2, 8, 8))
    state = torch.get_rng_state()
    drop_block2d(x, 0.3, 3, generator=gen(1))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("shared", [False, True])
def test_gradcheck_with_a_fixed_generator(dims, shared):
    x = positive((2, 2) + SHAPES[dims][2:], torch.float64).requires_grad_()

    def f(inp):
        return FUNCTIONS[dims](inp, 0.3, 2, generator=gen(6), shared_channels=shared)

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_gradient_uses_the_forward_mask():
    x = positive((2, 3, 16, 16)).requires_grad_()
    y = drop_block2d(x, 0.3, 5)
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    factor = y.detach() / x.detach()  # keep * scale
    torch.testing.assert_close(x.grad, grad_out * factor, rtol=1e-6, atol=0)


@pytest.mark.parametrize("shared", [False, True])
def test_saved_state_is_the_bit_packed_mask_and_the_scale(shared):
    saved = []

    def pack(t):
        saved.append(t)
        return t

    x = positive((4, 8, 28, 28)).requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = drop_block2d(x * 1.0, 0.2, 7, shared_channels=shared)
    assert {t.dtype for t in saved} == {torch.uint8, torch.float64}
    mask_bits = x.numel() // x.shape[1] if shared else x.numel()
    total = sum(t.numel() * t.element_size() for t in saved)
    assert total == (mask_bits + 63) // 64 * 8 + 8
    assert total <= x.numel() / 8 + 16
    y.sum().backward()


@pytest.mark.parametrize("shared", [False, True])
def test_opcheck(shared):
    x = positive((2, 3, 9, 10)).requires_grad_()
    seed = torch.tensor(17)
    p = p_tensor(0.3)
    torch.library.opcheck(ops.drop_block_mask, (x, seed, p, [3, 4], 1e-6, shared))
    mask, scale = ops.drop_block_mask(x, seed, p, [3, 4], 1e-6, shared)
    torch.library.opcheck(ops.drop_block_apply, (x, mask, scale, shared))
    torch.library.opcheck(ops.drop_block_apply_, (x.detach().clone(), mask, scale, shared))


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_bad_p_raises_value_error(p):
    with pytest.raises(ValueError, match="p"):
        drop_block2d(positive((1, 1, 4, 4)), p, 3)
    with pytest.raises(ValueError, match="p"):
        DropBlock2d(p, 3)


@pytest.mark.parametrize("block_size", [0, -1, (3, 0), (3,), (3, 3, 3)])
def test_bad_block_size_raises_value_error(block_size):
    with pytest.raises(ValueError, match="block_size"):
        drop_block2d(positive((1, 1, 4, 4)), 0.5, block_size)
    with pytest.raises(ValueError, match="block_size"):
        DropBlock2d(0.5, block_size)


@pytest.mark.parametrize("dims,shape", [(2, (4, 4)), (2, (1, 1, 1, 4, 4)), (1, (1, 1, 4, 4)), (3, (1, 4, 4))])
def test_wrong_number_of_dimensions_raises_value_error(dims, shape):
    with pytest.raises(ValueError, match="input"):
        FUNCTIONS[dims](torch.ones(shape), 0.5, 3)


def test_non_floating_input_raises_type_error():
    with pytest.raises(TypeError, match="input"):
        drop_block2d(torch.ones(1, 1, 4, 4, dtype=torch.int64), 0.5, 3)
    with pytest.raises(TypeError, match="input"):
        drop_block2d(np.ones((1, 1, 4, 4)), 0.5, 3)


def test_bad_eps_and_types_raise():
    x = positive((1, 1, 4, 4))
    with pytest.raises(ValueError, match="eps"):
        drop_block2d(x, 0.5, 3, eps=-1.0)
    with pytest.raises(TypeError, match="p"):
        drop_block2d(x, "0.5", 3)
    with pytest.raises(TypeError, match="block_size"):
        drop_block2d(x, 0.5, 2.5)
    with pytest.raises(TypeError, match="generator"):
        drop_block2d(x, 0.5, 3, generator=0)


@pytest.mark.parametrize("block_size", [2**63, 2**64 + 5, (2**70, 3)])
def test_huge_block_sizes_are_valid_and_clamped_to_the_map(block_size):
    # Any block size >= 1 is valid (semantics 2): past int64 it is the whole map, as any size >= S.
    x = positive((2, 3, 6, 7))
    clamped = (6, 7) if isinstance(block_size, int) else (6, 3)
    assert torch.equal(
        drop_block2d(x, 0.5, block_size, generator=gen(4)), drop_block2d(x, 0.5, clamped, generator=gen(4))
    )
    module = DropBlock2d(0.5, block_size)
    assert module.block_size == block_size  # shown as given
    torch.manual_seed(4)
    expected = drop_block2d(x, 0.5, clamped)
    torch.manual_seed(4)
    assert torch.equal(module(x), expected)


class Flip:
    """A truth value that changes each time it is read."""

    def __init__(self):
        self.reads = 0

    def __bool__(self):
        self.reads += 1
        return self.reads % 2 == 1


def test_each_flag_is_read_once():
    x = positive((2, 3, 8, 8))
    flag = Flip()
    y = drop_block2d(x, 0.5, 3, shared_channels=flag, generator=gen(1))
    assert flag.reads == 1
    # Read as True once: the mask and the apply both took the shared mask.
    assert torch.equal(y, drop_block2d(x, 0.5, 3, shared_channels=True, generator=gen(1)))
    for name in ("inplace", "scale_by_keep"):
        flag = Flip()
        drop_block2d(x.clone(), 0.5, 3, generator=gen(1), **{name: flag})
        assert flag.reads == 1, name
    with pytest.raises(TypeError, match="shared_channels"):
        drop_block2d(x, 0.5, 3, shared_channels=torch.tensor(True))


@pytest.mark.parametrize(
    "dtype", [getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name)]
)
def test_float8_input_is_refused_before_a_key_is_drawn(dtype):
    x = torch.zeros(1, 1, 4, 4).to(dtype)
    generator = gen(3)
    state = generator.get_state()
    with pytest.raises(TypeError, match="input: expected a float32, float64, float16 or bfloat16"):
        drop_block2d(x, 0.5, 3, generator=generator)
    assert torch.equal(generator.get_state(), state)  # nothing drawn
    with pytest.raises(TypeError, match="input"):
        DropBlock2d(0.5, 3)(x)


def test_raw_ops_check_their_arguments():
    x = positive((2, 3, 8, 8))
    seed = torch.tensor(1)
    with pytest.raises(ValueError, match="block_size"):
        ops.drop_block_mask(x, seed, torch.tensor(0.5, dtype=torch.float64, device=x.device), [3], 1e-6, False)
    with pytest.raises(ValueError, match="p"):
        ops.drop_block_mask(x, seed, torch.tensor(1.5, dtype=torch.float64, device=x.device), [3, 3], 1e-6, False)
    mask, scale = ops.drop_block_mask(
        x, seed, torch.tensor(0.5, dtype=torch.float64, device=x.device), [3, 3], 1e-6, False
    )
    with pytest.raises(ValueError, match="mask"):
        ops.drop_block_apply(x[:1], mask, scale, False)
    with pytest.raises(TypeError, match="mask"):
        ops.drop_block_apply(x, mask.float(), scale, False)


def test_raw_mask_op_wants_one_int64_seed_and_one_float64_p():
    # Devices are checked too (the CPU or the input's device): tests/test_cuda.py.
    x = positive((2, 3, 8, 8))
    p = torch.tensor(0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match="seed: expected a 0-dim int64 tensor"):
        ops.drop_block_mask(x, torch.tensor([1, 2]), p, [3, 3], 1e-6, False)
    with pytest.raises(ValueError, match="seed"):
        ops.drop_block_mask(x, torch.tensor(1, dtype=torch.int32), p, [3, 3], 1e-6, False)
    with pytest.raises(ValueError, match="p: expected a 0-dim float64 tensor"):
        ops.drop_block_mask(x, torch.tensor(1), p.float(), [3, 3], 1e-6, False)
    with pytest.raises(ValueError, match="p: expected a 0-dim float64 tensor"):
        ops.drop_block_mask(x, torch.tensor(1), p.expand(2), [3, 3], 1e-6, False)
    with pytest.raises(ValueError, match="p: expected a 0-dim float64 tensor"):
        ops.drop_block_mask(x, torch.tensor(1), p.reshape(1), [3, 3], 1e-6, False)
    with pytest.raises(ValueError, match="seed: expected a 0-dim int64 tensor"):
        ops.drop_block_mask(x, torch.tensor([1]), p, [3, 3], 1e-6, False)


def test_a_default_device_elsewhere_does_not_move_the_scalars():
    # functional.py creates p (and draws the key) on explicit devices, not the default one.
    x = positive((2, 3, 8, 8))
    expected = drop_block2d(x, 0.3, 3, generator=gen(5))
    with torch.device("meta"):
        y = drop_block2d(x, 0.3, 3, generator=gen(5))
    assert y.device.type == "cpu" and torch.equal(y, expected)


def test_inplace_op_refuses_tracked_inputs_and_bumps_the_version():
    x = positive((2, 3, 8, 8))
    mask, scale = ops.drop_block_mask(x, torch.tensor(1), p_tensor(0.5), [3, 3], 1e-6, False)
    leaf = x.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="requires grad"):
        ops.drop_block_apply_(leaf, mask, scale, False)
    with torch.no_grad():
        ops.drop_block_apply_(leaf, mask, scale, False)  # allowed where autograd does not track
    # A tensor saved for another op's backward, then overwritten in place: backward must refuse.
    w = torch.ones(2, 3, 8, 8, requires_grad=True)
    saved = x.clone()
    y = w * saved  # mul saves `saved` for w's gradient
    version = saved._version
    drop_block2d(saved, 0.5, 3, inplace=True)
    assert saved._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_modules_hold_settings_only(dims):
    module = MODULES[dims](0.2, 3, inplace=False, eps=1e-5, shared_channels=True)
    assert (module.p, module.block_size, module.inplace, module.eps, module.shared_channels) == (
        0.2,
        3,
        False,
        1e-5,
        True,
    )
    assert list(module.parameters()) == [] and list(module.buffers()) == []
    assert module.state_dict() == {}
    text = repr(module)
    for part in ("p=0.2", "block_size=3", "inplace=False", "eps=1e-05", "shared_channels=True"):
        assert part in text
    x = positive(SHAPES[dims])
    module.p = 0.0  # a scheduler sets p between steps
    assert module(x) is x
    module.p = 0.5
    assert not torch.equal(module(x), x)


def test_module_in_a_model_trains():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), DropBlock2d(0.2, 3), nn.Conv2d(8, 2, 1))
    x = torch.randn(4, 3, 12, 12)
    loss = model(x).square().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "shape", [(3, 70, 9, 11), (2, 5, 4, 6, 7), (2, 1, 20, 20), (1, 130, 3, 3), (2, 9, 150)], ids=str
)
@pytest.mark.parametrize("shared", [False, True], ids=["per_channel", "shared"])
def test_channels_innermost_memory_gives_the_contiguous_result(dtype, shape, shared):
    # channels_last / channels_last_3d (and its 1-d analogue): the CPU kernel's tiled path.
    x = (torch.randn(shape, generator=gen(1)) * 100).to(dtype)
    block = [3] * (len(shape) - 2)
    mask, scale = ops.drop_block_mask(x, torch.tensor(9), p_tensor(0.4), block, 1e-6, shared)
    expected = ops.drop_block_apply(x, mask, scale, shared)
    channels_last = x.movedim(1, -1).contiguous().movedim(-1, 1)
    assert (channels_last.stride(1) == 1 or shape[1] == 1) and torch.equal(channels_last, x)
    out = ops.drop_block_apply(channels_last, mask, scale, shared)
    assert out.stride() == channels_last.stride()
    assert torch.equal(out, expected)
    ops.drop_block_apply_(channels_last, mask, scale, shared)
    assert torch.equal(channels_last, expected)


@settings(max_examples=60, deadline=None)
@given(
    **shape_strategies(max_channels=70, max_side=20),
    shared=st.booleans(),
    key=st.integers(0, 2**62),
)
def test_channels_innermost_random_shapes(n, c, spatial, shared, key):
    shape = (n, c, *spatial)
    x = torch.randn(shape, generator=gen(key % 1000))
    mask, scale = ops.drop_block_mask(x, torch.tensor(key), p_tensor(0.3), [3] * len(spatial), 1e-6, shared)
    channels_last = x.movedim(1, -1).contiguous().movedim(-1, 1)
    assert torch.equal(
        ops.drop_block_apply(channels_last, mask, scale, shared), ops.drop_block_apply(x, mask, scale, shared)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shared", [False, True], ids=["per_channel", "shared"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_16_bit_outputs_are_the_rounded_float_products(dtype, shared, channels_last):
    # Bit for bit: kept elements are (float(x) * float(scale)) rounded to nearest even (subnormals,
    # infinities and the largest finite values included), dropped ones are +0.
    special = torch.tensor(
        [0.0, -0.0, 1.0, -1.0, 65504.0, 1e-7, -6e-8, 3.3e-5, float("inf"), float("-inf"), 1e30, -1e-30]
    )
    x = torch.cat([special, torch.randn(2 * 24 * 7 * 11 - len(special), generator=gen(2)) * 100]).to(dtype)
    x = x.view(2, 24, 7, 11)
    mask, scale = ops.drop_block_mask(x, torch.tensor(3), p_tensor(0.4), [3, 3], 1e-6, shared)
    kept = ops.drop_block_apply(torch.ones(x.shape), mask, scale, shared) != 0
    expected = torch.where(kept, (x.float() * scale.float()).to(dtype), torch.zeros((), dtype=dtype))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = ops.drop_block_apply(x, mask, scale, shared)
    assert torch.equal(y.view(torch.int16), expected.view(torch.int16))


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize(
    "shape", [(1, 1, 0), (1, 1, 1), (1, 1, 63), (1, 1, 64), (1, 1, 65), (3, 5, 7, 9), (2, 3, 4, 5, 6)]
)
def test_packed_mask_size_is_one_rule_in_cpp_and_in_the_fake_kernel(shape, shared):
    # One statement of the packed size each side ((bits + 63) / 64 * 8 bytes): the C++ kernels'
    # packed_mask_bytes (csrc/op_args.cpp) and the fake kernels' _packed_mask_bytes agree.
    from dropblock_cuda._registrations import _mask_bits, _packed_mask_bytes

    x = torch.empty(shape)
    mask, _ = ops.drop_block_mask(x, torch.tensor(1), p_tensor(0.1), [3] * (x.dim() - 2), 1e-6, shared)
    bits = _mask_bits(x, shared)
    assert bits == (shape[0] if shared else shape[0] * shape[1]) * math.prod(shape[2:])
    assert mask.numel() == _packed_mask_bytes(bits) == (bits + 63) // 64 * 8
