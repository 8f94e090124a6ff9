"""The correctness gate of the benchmarks (benchmarks/gate.py) and the corrected seed-article
module it is also run on (benchmarks/reference_dropblock.py)."""

import pytest
import torch
from benchmark_helpers import random_input as _x

import dropblock_cuda
from benchmarks.gate import check_dropblock_output
from benchmarks.reference_dropblock import DropBlock2dReference, drop_block2d_reference


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gate_accepts_ours(shared, dtype):
    x = _x(dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    y = dropblock_cuda.drop_block2d(x, 0.3, 3, shared_channels=shared, generator=gen)
    gate = check_dropblock_output(x, y, 0.3, 3, shared_channels=shared)
    assert gate.ok, gate.reason
    assert 0.0 < gate.drop_frac < 1.0
    assert gate.scale == pytest.approx(1.0 / (1.0 - gate.drop_frac), rel=2e-2)


def test_gate_p_zero_needs_identity():
    x = _x()
    assert check_dropblock_output(x, x.clone(), 0.0, 3).ok
    assert not check_dropblock_output(x, x * 2, 0.0, 3).ok


def test_gate_rejects_two_scales():
    x = _x()
    y = dropblock_cuda.drop_block2d(x, 0.3, 3, generator=torch.Generator().manual_seed(2)).clone()
    y[:2] *= 1.5  # half the batch with another scale
    gate = check_dropblock_output(x, y, 0.3, 3)
    assert not gate.ok
    assert "one s" in gate.reason


def test_gate_rejects_dropping_nothing():
    x = _x()
    gate = check_dropblock_output(x, x.clone(), 0.5, 3)
    assert not gate.ok
    assert "drop fraction" in gate.reason


def test_gate_rejects_wrong_rescale_dtype_and_shape():
    x = _x()
    y = dropblock_cuda.drop_block2d(x, 0.3, 3, generator=torch.Generator().manual_seed(3))
    keep = y != 0
    assert "1/(1 - drop fraction)" in check_dropblock_output(x, x * keep, 0.3, 3).reason  # not rescaled
    assert "dtype" in check_dropblock_output(x, y.double(), 0.3, 3).reason
    assert "shape" in check_dropblock_output(x, y[:1], 0.3, 3).reason
    nan = y.clone()
    nan[0, 0, 0, 0] = float("nan")
    assert not check_dropblock_output(x, nan, 0.3, 3).ok


def test_gate_drops_too_much_is_lenient_only_when_asked():
    x = _x()
    keep = torch.zeros_like(x)
    keep[..., :4, :4] = 1.0  # drops 15/16
    y = x * keep * (keep.numel() / keep.sum())
    assert not check_dropblock_output(x, y, 0.3, 3).ok
    gate = check_dropblock_output(x, y, 0.3, 3, lenient_upper=True)
    assert gate.ok and "drops" in gate.warning


@pytest.mark.parametrize("block_size", [1, 3, 4, 16, 20])
def test_reference_is_a_valid_dropblock(block_size):
    module = DropBlock2dReference(p=0.3, block_size=block_size)  # the article's module could not be built
    assert module.training
    x = _x()
    torch.manual_seed(0)
    y = module(x)
    assert check_dropblock_output(x, y, 0.3, block_size).ok
    assert drop_block2d_reference(x, 0.3, block_size, training=False) is x
    assert drop_block2d_reference(x, 0.0, block_size) is x


def test_reference_blocks_lie_inside_the_map():
    x = torch.ones(64, 1, 9, 9)
    torch.manual_seed(0)
    dropped = drop_block2d_reference(x, 0.5, 9) == 0
    # block == map: a plane is either fully dropped or fully kept (a single valid seed position)
    per_plane = dropped.flatten(1).float().mean(1)
    assert set(per_plane.tolist()) <= {0.0, 1.0}
    assert 0 < per_plane.sum() < 64
