"""The mask is the law of csrc/mask_logic.h, bit for bit, and that law has the right statistics."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dropblock_cuda
from helpers import mask_of, p_tensor, reference_mask, shape_strategies
from reference import (
    CHUNK,
    count_distribution,
    count_table,
    drop_probability_per_position,
    effective_gamma,
    philox4x32_10,
    seed_flags,
    seed_probability,
)


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
    ((1, 3, 1000), (1,), 0.5, False),  # K near 128: many Philox calls per chunk for its positions
    ((2, 2, 700), (1,), 0.93, False),  # gamma > 1/2: the mirrored table, the non-seeds drawn
    ((1, 1, 999), (1,), 0.55, False),  # K on both sides of 128, a partial last chunk
    # A block reach of 16644 indices: CPU ranges grow to 5 x 2^15 indices and draw the chunks
    # within reach before them again; blocks cross the range boundary.
    ((2, 2, 20, 64, 64), (5, 5, 5), 0.3, False),
    ((3, 1, 5, 300, 301), (2, 3, 4), 0.2, False),  # planes past 2^16 positions, odd words per row
    ((1, 2, 3, 500), (2, 100), 0.3, False),  # blocks wider than a word: dilation shifts of whole words
]


@pytest.mark.parametrize("shape,block_size,p,shared", CASES)
def test_mask_matches_reference_law(shape, block_size, p, shared):
    x = torch.empty(shape)
    for key in (0, 987654321987654321):
        got, _ = mask_of(x, key, p, block_size, shared)
        np.testing.assert_array_equal(got, reference_mask(shape, key, p, block_size, shared))


@settings(max_examples=40, deadline=None)
@given(
    **shape_strategies(max_channels=3, max_side=12),
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


@pytest.mark.parametrize(
    "shape,block",
    [
        ((8, 16, 56, 56), (7, 7)),
        # CPU ranges of 5 x 2^15 indices (8 block reaches), each drawing the chunks within reach before it
        ((2, 2, 20, 64, 64), (5, 5, 5)),
    ],
)
def test_mask_does_not_depend_on_thread_count(shape, block):
    x = torch.empty(shape)
    masks = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            masks.append(mask_of(x, 42, 0.2, block)[0])
    finally:
        torch.set_num_threads(before)
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


@pytest.mark.parametrize("gamma", [1e-9, 1e-4, 0.0026, 0.1, 0.3, 0.5, 0.5 + 2**-20, 0.7, 0.999, 1.0])
def test_count_table_is_the_binomial_quantised_to_2_pow_minus_32(gamma):
    # The reference's table against the binomial computed another way (log-space, math.comb):
    # every cumulative bound within one quantum (plus double rounding) of round(CDF * 2^32).
    k = np.arange(CHUNK + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pmf = np.array([math.lgamma(CHUNK + 1) - math.lgamma(i + 1) - math.lgamma(CHUNK - i + 1) for i in k])
        log_pmf = log_pmf + k * (math.log(gamma) if gamma > 0 else -np.inf)
        log_pmf = log_pmf + (CHUNK - k) * (math.log1p(-gamma) if gamma < 1 else -np.inf)
    exact = np.nan_to_num(np.exp(log_pmf))
    if gamma == 1.0:
        exact = (k == CHUNK).astype(float)
    got = count_distribution(gamma)
    assert got.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(np.cumsum(got), np.cumsum(exact), rtol=0, atol=4 * 2.0**-32 + 1e-12)
    assert effective_gamma(gamma) == pytest.approx(gamma, rel=1e-6, abs=2.0**-32)
    bounds, mirrored = count_table(gamma)
    assert mirrored == (gamma > 0.5)
    assert bounds == sorted(bounds) and all(0 <= b < 2**32 for b in bounds)


@pytest.mark.parametrize("gamma", [0.004, 0.05, 0.5, 0.7])
def test_seed_counts_per_chunk_and_positions_in_a_chunk_follow_the_law(gamma):
    # Block size 1 on a 1d map: the dropped positions are the seeds themselves. K per chunk is
    # Binomial(256, gamma) (histogram against the table), and every offset in a chunk is a seed
    # with probability gamma (the K-subset is uniform).
    chunks = 6000
    keep, _ = mask_of(torch.empty(1, 1, chunks * CHUNK), 77, gamma, (1,))
    seeds = ~keep.reshape(chunks, CHUNK)
    counts = np.bincount(seeds.sum(axis=1), minlength=CHUNK + 1)
    expected = count_distribution(gamma) * chunks
    tolerance = np.vectorize(binomial_tolerance)(count_distribution(gamma), chunks) * chunks
    assert np.all(np.abs(counts - expected) <= tolerance)
    rate = seeds.mean(axis=0)
    gamma_eff = effective_gamma(gamma)
    assert np.all(np.abs(rate - gamma_eff) <= binomial_tolerance(gamma_eff, chunks))
    # Pairs inside a chunk are independent: P(offsets 0 and 255 both seeds) = gamma^2.
    both = (seeds[:, 0] & seeds[:, -1]).mean()
    assert abs(both - gamma_eff**2) <= binomial_tolerance(gamma_eff**2, chunks)


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
    mask, _ = torch.ops.dropblock_cuda.drop_block_mask(x, seed, p_tensor(p, x.device), [b], 1e-6, False)
    bits = mask.numpy()
    gamma = seed_probability([length], [b], p)
    for start in (2**31 - 64, 2**32 - 64, 2 * length - 200):
        # Plane 1 starts at `length`; positions of the window and the seeds that reach them.
        g = np.arange(start - b + 1, start + 128, dtype=np.int64)
        g = g[g < 2 * length]
        in_plane = g % length
        valid = in_plane <= length - b
        seeds = seed_flags(np.maximum(g, 0).astype(np.uint64), key, gamma) & valid & (g >= 0)
        for i, gi in enumerate(g):
            if gi < start:
                continue
            lo = max(i - b + 1, 0)
            window = [j for j in range(lo, i + 1) if g[j] // length == gi // length]
            dropped = bool(seeds[window].any())
            bit = (bits[gi // 8] >> (gi % 8)) & 1
            assert bit == (0 if dropped else 1), gi
