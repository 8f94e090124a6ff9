"""The mask is the law of csrc/mask_logic.h, bit for bit, and that law has the right statistics."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dropblock_cuda
from helpers import mask_of, reference_mask
from reference import drop_probability_per_position, philox4x32_10, seed_probability, threshold, uniform32


def test_reference_philox_known_answers():
    # Known-answer vectors of Philox4x32-10 (Random123, kat_vectors).
    zero = philox4x32_10(np.array([0], dtype=np.uint64), 0, 0)
    assert [int(w[0]) for w in zero] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    ones = np.array([2**64 - 1], dtype=np.uint64)
    full = philox4x32_10(ones, 2**64 - 1, 2**64 - 1)
    assert [int(w[0]) for w in full] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


CASES = [
    # shape, block_size, p, shared_channels
    ((2, 3, 14, 14), (7, 7), 0.3, False),
    ((2, 3, 9, 70), (3, 5), 0.5, False),  # rectangular block, a row longer than one word
    ((2, 3, 8, 8), (4, 2), 0.4, False),  # even sizes
    ((2, 3, 10, 10), (20, 20), 0.5, False),  # clamped to the map
    ((2, 2, 5, 6, 7), (2, 3, 4), 0.4, True),  # 3d, shared
    ((1, 2, 200), (9,), 0.3, False),  # 1d
    ((3, 4, 1), (1,), 0.5, False),
    ((2, 5, 7, 7), (7, 7), 0.9, False),  # one seed position per plane
    ((1, 1, 300, 300), (5, 5), 0.2, False),  # a plane split into row slabs
    ((1, 2, 70000), (13,), 0.3, False),  # a line split into segments
    ((1, 1, 40, 40, 40), (3, 3, 3), 0.3, False),  # a volume split into depth slabs
    ((2, 3, 12, 12), (3, 3), 1.0, False),  # gamma = 1: every valid position seeds
    ((4, 8, 56, 56), (7, 7), 0.1, True),
]


@pytest.mark.parametrize("shape,block_size,p,shared", CASES)
def test_mask_matches_reference_law(shape, block_size, p, shared):
    x = torch.empty(shape)
    for key in (0, 987654321987654321):
        got, _ = mask_of(x, key, p, block_size, shared)
        np.testing.assert_array_equal(got, reference_mask(shape, key, p, block_size, shared))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 3),
    spatial=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    data=st.data(),
    p=st.floats(0.0, 1.0),
    shared=st.booleans(),
    key=st.integers(0, 2**63 - 1),
)
def test_mask_matches_reference_law_random_shapes(n, c, spatial, data, p, shared, key):
    block = data.draw(st.lists(st.integers(1, 14), min_size=len(spatial), max_size=len(spatial)))
    shape = (n, c, *spatial)
    got, _ = mask_of(torch.empty(shape), key, p, block, shared)
    np.testing.assert_array_equal(got, reference_mask(shape, key, p, block, shared))


def test_mask_does_not_depend_on_thread_count():
    x = torch.empty(8, 16, 56, 56)
    masks = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        masks.append(mask_of(x, 42, 0.2, (7, 7))[0])
    assert all((m == masks[0]).all() for m in masks[1:])


def blocks_opening(keep, blocks):
    """Union of all in-bounds blocks lying wholly in the dropped region (morphological opening)."""
    dropped = ~keep
    planes, *spatial = dropped.shape
    fits = np.ones((planes, *[s - b + 1 for s, b in zip(spatial, blocks)]), dtype=bool)
    for offset in np.ndindex(*blocks):
        fits &= dropped[(slice(None),) + tuple(slice(o, o + s - b + 1) for o, s, b in zip(offset, spatial, blocks))]
    opened = np.zeros_like(dropped)
    for offset in np.ndindex(*blocks):
        opened[(slice(None),) + tuple(slice(o, o + f) for o, f in zip(offset, fits.shape[1:]))] |= fits
    return opened


@settings(max_examples=30, deadline=None)
@given(
    h=st.integers(1, 20),
    w=st.integers(1, 20),
    bh=st.integers(1, 9),
    bw=st.integers(1, 9),
    p=st.floats(0.05, 0.9),
    key=st.integers(0, 2**63 - 1),
)
def test_dropped_region_is_a_union_of_whole_in_bounds_blocks(h, w, bh, bw, p, key):
    keep, _ = mask_of(torch.empty(2, 3, h, w), key, p, (bh, bw))
    blocks = (min(bh, h), min(bw, w))
    np.testing.assert_array_equal(~keep, blocks_opening(keep, blocks))


def test_single_seed_drops_exactly_one_block_inside_the_map():
    # 2000 planes at a small gamma: most dropped planes hold exactly one block.
    keep, _ = mask_of(torch.empty(1, 2000, 10, 12), 7, 0.05, (3, 4))
    singles = 0
    for plane in ~keep:
        if plane.sum() == 12:
            rows, cols = np.nonzero(plane)
            assert rows.max() - rows.min() == 2 and cols.max() - cols.min() == 3
            assert rows.max() < 10 and cols.max() < 12
            singles += 1
    assert singles > 100


def binomial_tolerance(prob, trials, z=5.5):
    """Half-width of a z-sigma band for a binomial proportion (z covers many comparisons)."""
    return z * math.sqrt(max(prob * (1 - prob), 1e-12) / trials) + 1.0 / trials


@pytest.mark.parametrize(
    "spatial,block,p",
    [((14, 14), (7, 7), 0.1), ((20, 9), (4, 3), 0.3), ((30,), (5,), 0.2), ((6, 7, 8), (2, 3, 3), 0.25)],
)
def test_per_position_drop_probability_follows_the_seed_law(spatial, block, p):
    planes = 40000
    keep, _ = mask_of(torch.empty(1, planes, *spatial), 2024, p, block)
    empirical = (~keep).mean(axis=0)
    exact = drop_probability_per_position(spatial, block, p)
    tolerance = np.vectorize(binomial_tolerance)(exact, planes)
    assert np.all(np.abs(empirical - exact) <= tolerance), np.abs(empirical - exact).max()


def test_block_size_one_is_dropout_with_probability_p():
    p = 0.3
    keep, _ = mask_of(torch.empty(16, 64, 32, 32), 5, p, (1, 1))
    dropped = ~keep
    n = dropped.size
    assert abs(dropped.mean() - p) <= binomial_tolerance(p, n)
    # Independent neighbours: P(both dropped) = p^2.
    both = (dropped[..., 1:] & dropped[..., :-1]).mean()
    assert abs(both - p * p) <= binomial_tolerance(p * p, dropped[..., 1:].size)


def test_small_maps_are_not_over_dropped():
    # 14x14 with block 7: no block hangs off the edge, so the drop rate stays at or below p.
    p = 0.1
    planes = 50000
    keep, _ = mask_of(torch.empty(1, planes, 14, 14), 11, p, (7, 7))
    rate = (~keep).mean()
    expected = drop_probability_per_position((14, 14), (7, 7), p).mean()
    assert expected <= p
    assert abs(rate - expected) <= binomial_tolerance(expected, planes * 196 / 49)


def test_seed_threshold_is_exact_for_top_byte_ties():
    # gamma such that T's top byte is hit often: the tie-break stream decides.
    key = 99
    g = np.arange(200000, dtype=np.uint64)
    u = uniform32(g, key)
    t = threshold(0.5 + 3 / 2**24)
    x = torch.empty(1, 1, g.size)
    gamma = seed_probability([g.size], [1], 0.5 + 3 / 2**24)
    assert threshold(gamma) == t
    keep, _ = mask_of(x, key, 0.5 + 3 / 2**24, (1,))
    np.testing.assert_array_equal(~keep[0], u < np.uint64(t))


def test_shared_mask_is_the_same_for_every_channel():
    torch.manual_seed(0)
    x = torch.rand(3, 5, 16, 16) + 0.5
    y = dropblock_cuda.drop_block2d(x, 0.3, 5, shared_channels=True)
    keep = y != 0
    assert (keep == keep[:, :1]).all()
    assert not (keep == keep[:1]).all()  # samples differ


def test_per_channel_masks_differ_between_channels():
    torch.manual_seed(0)
    x = torch.rand(2, 8, 16, 16) + 0.5
    keep = dropblock_cuda.drop_block2d(x, 0.3, 5) != 0
    assert not (keep == keep[:, :1]).all()


@pytest.mark.huge
def test_64bit_logical_indices():
    # An expanded input has 2^32 + 2^20 logical elements but no memory behind them: the mask op
    # only reads the shape, so indices past 2^32 can be checked against the law here.
    length = 2**31 + 2**19
    x = torch.empty(1, 1, 1).expand(1, 2, length)
    key, p, b = 3, 0.2, 5
    seed = torch.tensor(key)
    mask, _ = torch.ops.dropblock_cuda.drop_block_mask(x, seed, torch.tensor(p, dtype=torch.float64, device=x.device), [b], 1e-6, False)
    bits = mask.numpy()
    gamma = seed_probability([length], [b], p)
    t = np.uint64(threshold(gamma))
    for start in (2**31 - 64, 2**32 - 64, 2 * length - 200):
        # Plane 1 starts at `length`; positions of the window and the seeds that reach them.
        g = np.arange(start - b + 1, start + 128, dtype=np.int64)
        g = g[g < 2 * length]
        in_plane = g % length
        valid = in_plane <= length - b
        seeds = (uniform32(g.astype(np.uint64), key) < t) & valid & (g >= 0)
        for i, gi in enumerate(g):
            if gi < start:
                continue
            lo = max(i - b + 1, 0)
            window = [j for j in range(lo, i + 1) if g[j] // length == gi // length]
            dropped = bool(seeds[window].any())
            bit = (bits[gi // 8] >> (gi % 8)) & 1
            assert bit == (0 if dropped else 1), gi
