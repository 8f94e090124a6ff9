"""The eager fast path (functional._takes_fast_path, the _drop_block_train op) and the host-time
benchmark (benchmarks/host_time.py) on a tiny size.

The fast path must be invisible: the same outputs, the same key from the same generator (and the
generator left in the same state), the same autograd node, as the general path of separate ops;
and every call it does not recognise goes the general way. No timing assertions: the numbers
live in the benchmark.
"""

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

import dropblock_cuda  # noqa: F401  (registers the ops)
from dropblock_cuda import DropBlock1d, DropBlock2d, DropBlock3d, drop_block1d, drop_block2d, drop_block3d
from dropblock_cuda import functional
from dropblock_cuda import modules
from helpers import assert_equal, p_tensor

from benchmarks import host_time

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ops = torch.ops.dropblock_cuda


@pytest.fixture
def fast_calls(monkeypatch):
    """Counts the calls of the fast path's op, from the functions and the modules alike."""
    calls = []

    def counted(*args):
        calls.append(args)
        return ops._drop_block_train.default(*args)

    monkeypatch.setattr(functional, "_train_op", counted)
    monkeypatch.setattr(modules, "_train_op", counted)
    return calls


def separate_ops(x, p, block_size, eps=1e-6, shared_channels=False, scale_by_keep=True):
    """What the general path computes, step by step: the key from torch.randint, then the two ops."""
    seed = torch.randint(functional._KEY_LOW, functional._KEY_HIGH, (), dtype=torch.int64, device=x.device)
    mask, scale = ops.drop_block_mask(x, seed, p_tensor(p), list(block_size), eps, shared_channels)
    if not scale_by_keep:
        scale = torch.ones((), dtype=torch.float64, device=x.device)
    return ops.drop_block_apply(x, mask, scale, shared_channels)


FUNCTIONS = [
    (drop_block1d, DropBlock1d, (2, 3, 40)),
    (drop_block2d, DropBlock2d, (2, 3, 11, 13)),
    (drop_block3d, DropBlock3d, (1, 2, 5, 6, 7)),
]


@pytest.mark.parametrize("function, cls, shape", FUNCTIONS)
@pytest.mark.parametrize("kwargs", [{}, dict(shared_channels=True), dict(scale_by_keep=False, eps=0.5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fast_path_draws_the_key_randint_draws_and_the_same_output(fast_calls, function, cls, shape, kwargs, dtype):
    x = torch.randn(shape).to(dtype)
    spatial = len(shape) - 2
    for seed in range(4):
        torch.manual_seed(seed)
        expected = separate_ops(x, 0.3, [3] * spatial, **kwargs)
        after_expected = torch.get_rng_state()
        torch.manual_seed(seed)
        assert_equal(function(x, 0.3, 3, **kwargs), expected)
        assert torch.equal(torch.get_rng_state(), after_expected)  # one draw, as randint's
        torch.manual_seed(seed)
        assert_equal(cls(0.3, 3, **kwargs)(x), expected)
        torch.manual_seed(seed)
        # a tuple block size takes the general path for the function
        assert_equal(function(x, 0.3, (3,) * spatial, **kwargs), expected)
    assert len(fast_calls) == 4 * 2  # the function with an int block size, and the module


def test_fast_path_keeps_the_autograd_node_and_the_gradient(fast_calls):
    x = torch.rand(2, 3, 9, 9, requires_grad=True)
    torch.manual_seed(5)
    y = drop_block2d(x, 0.4, 3)
    assert fast_calls
    assert y.grad_fn.name().startswith("torch::autograd::CppNode")
    y.sum().backward()
    torch.manual_seed(5)
    assert_equal(x.grad, separate_ops(torch.ones_like(x), 0.4, [3, 3]))  # the apply of the same mask
    with torch.no_grad():
        torch.manual_seed(5)
        assert drop_block2d(x, 0.4, 3).grad_fn is None


def test_the_op_takes_any_key_range_edge():
    # The key draw's modulo maps the generator's 2**64 - 1 to 0: the draw must equal randint's
    # for many seeds, so that no bit of the transformation differs.
    x = torch.randn(1, 1, 8, 8)
    for seed in range(200):
        torch.manual_seed(seed)
        expected = separate_ops(x, 0.5, [1, 1])
        torch.manual_seed(seed)
        assert_equal(ops._drop_block_train(x, 0.5, [1, 1], 1e-6, False, True), expected)


def unusual_calls(x):
    """Calls the fast path leaves to the general one (each still valid)."""
    g = torch.Generator().manual_seed(0)
    return {
        "generator": lambda: drop_block2d(x, 0.3, 3, generator=g),
        "inplace": lambda: drop_block2d(x.clone(), 0.3, 3, inplace=True),
        "int p": lambda: drop_block2d(x, 1, 3),
        "p = 0": lambda: drop_block2d(x, 0.0, 3),
        "eval": lambda: drop_block2d(x, 0.3, 3, training=False),
        "gamma_scale": lambda: drop_block2d(x, 0.3, 3, gamma_scale=0.5),
        "int flag": lambda: drop_block2d(x, 0.3, 3, shared_channels=1),
        "tuple block": lambda: drop_block2d(x, 0.3, (3, 3)),
        "huge block": lambda: drop_block2d(x, 0.3, 2**70),
        "parameter": lambda: drop_block2d(torch.nn.Parameter(x.clone()), 0.3, 3),
    }


@pytest.mark.parametrize("case", list(unusual_calls(torch.zeros(1))))
def test_unusual_calls_take_the_general_path(fast_calls, case):
    unusual_calls(torch.randn(2, 3, 8, 8))[case]()
    assert not fast_calls


def test_invalid_calls_fail_as_before(fast_calls):
    with pytest.raises(TypeError, match="input: expected a float32, float64, float16 or bfloat16 tensor"):
        drop_block2d(torch.ones(1, 1, 4, 4, dtype=torch.int64), 0.3, 3)
    with pytest.raises(ValueError, match="input: expected a 4-d tensor"):
        drop_block2d(torch.ones(1, 4, 4), 0.3, 3)
    with pytest.raises(ValueError, match="p: drop probability has to be between 0 and 1"):
        drop_block2d(torch.ones(1, 1, 4, 4), 1.5, 3)
    with pytest.raises(ValueError, match="eps: expected a finite number"):
        drop_block2d(torch.ones(1, 1, 4, 4), 0.3, 3, eps=math.inf)
    module = DropBlock2d(0.3, 3)
    module.p = -0.5
    with pytest.raises(ValueError, match="p: drop probability has to be between 0 and 1"):
        module(torch.ones(1, 1, 4, 4))
    assert not fast_calls


def test_modes_transforms_and_tracing_take_the_general_path(fast_calls):
    x = torch.randn(1, 2, 6, 6)
    seen = []

    class Recording(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with Recording():
        drop_block2d(x, 0.3, 3)
    assert torch.randint in seen  # the mode sees the key's draw, as it always did
    torch.func.vmap(lambda t: drop_block2d(t, 0.3, 3), randomness="different")(x.unsqueeze(0).repeat(2, 1, 1, 1, 1))
    torch.func.grad(lambda t: drop_block2d(t, 0.3, 3).sum())(x)
    with torch.autograd.forward_ad.dual_level():
        drop_block2d(torch.autograd.forward_ad.make_dual(x, torch.ones_like(x)), 0.3, 3)
    torch.jit.trace(lambda t: drop_block2d(t, 0.3, 3), (x,), check_trace=False)
    assert not fast_calls


@requires_cuda
def test_fast_path_on_cuda_draws_the_cuda_generators_key(fast_calls):
    x = torch.randn(2, 3, 16, 16, device="cuda")
    for kwargs in ({}, dict(shared_channels=True)):
        torch.cuda.manual_seed(3)
        expected = separate_ops(x, 0.2, [5, 5], **kwargs)
        torch.cuda.manual_seed(3)
        assert_equal(drop_block2d(x, 0.2, 5, **kwargs), expected)
    assert fast_calls


def test_host_time_benchmark_runs_on_a_tiny_size():
    args = host_time.config_from_args(
        ["--quick", "--device", "cpu", "--rounds", "2", "--calls", "2", "--shape", "1,1,4,4"]
    )
    rows = host_time.run(args)
    assert {(r.call, r.grad) for r in rows} == {
        (c, g) for c in ("F.dropout", "nn.Dropout", "drop_block2d", "DropBlock2d") for g in (False, True)
    }
    assert all(r.device == "cpu" and r.us > 0 and r.vs_dropout > 0 for r in rows)
    assert all(r.vs_dropout == 1.0 for r in rows if r.call == host_time.BASELINE)
    assert "x F.dropout" in host_time.format_table(rows)


def test_the_op_called_directly_under_tracers_draws_through_randint():
    # Only a plain eager call draws from the generator directly: a tracer or a mode must see the
    # draw (a compiled graph that baked the key in would repeat one mask forever).
    x = torch.randn(1, 2, 8, 8)

    def train(t):
        return ops._drop_block_train(t, 0.4, [3, 3], 1e-6, False, True)

    compiled = torch.compile(train, backend="aot_eager", fullgraph=True)
    torch.manual_seed(9)
    first = compiled(x)
    torch.manual_seed(9)
    assert_equal(train(x), first)  # the same key from the same generator
    assert not torch.equal(compiled(x), compiled(x))  # a fresh key per call
    traced = torch.jit.trace(train, (x,), check_trace=False)  # records the op, which draws per run
    torch.manual_seed(9)
    assert_equal(traced(x), first)
    assert not torch.equal(traced(x), traced(x))
