"""An independent, slow NumPy statement of the mask law in csrc/mask_logic.h.

The tests compare the kernels bit for bit against it, so a kernel that draws other random
numbers, counts or places seeds differently, expands blocks differently, or packs bits in
another order fails. Written from the law as the README states it, not from the C++.

The law, in short: logical indices are cut into chunks of 256; chunk c draws its seed count
K ~ Binomial(256, gamma) by comparing one 32-bit word with a table of cumulative bounds, then a
uniform K-subset of its 256 positions from the bytes that follow (first distinct bytes; the
complement for K > 128). Seeds where a whole block fits drop their block.
"""

import bisect

import numpy as np

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = np.uint64(0xFFFFFFFF)
CHUNK = 256


def philox4x32_10(counter_lo, counter_hi, key):
    """Philox4x32-10 of arrays of 64-bit counter halves under a 64-bit key; returns 4 uint32 arrays."""
    counter_lo = np.asarray(counter_lo, dtype=np.uint64)
    counter_hi = np.broadcast_to(np.asarray(counter_hi, dtype=np.uint64), counter_lo.shape)
    c0, c1 = counter_lo & MASK32, counter_lo >> np.uint64(32)
    c2, c3 = counter_hi & MASK32, counter_hi >> np.uint64(32)
    k0, k1 = key & 0xFFFFFFFF, (key >> 32) & 0xFFFFFFFF
    for _ in range(10):
        p0, p1 = M0 * c0, M1 * c2
        c0, c1, c2, c3 = (
            (p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0),
            p1 & MASK32,
            (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1),
            p0 & MASK32,
        )
        k0, k1 = (k0 + W0) & 0xFFFFFFFF, (k1 + W1) & 0xFFFFFFFF
    return c0, c1, c2, c3


def seed_probability(sizes, blocks, p):
    """gamma = min(p * prod(S / (b * (S - b + 1))), 1), the factor multiplied in dimension order."""
    factor = 1.0
    for s, b in zip(sizes, blocks):
        if s == 0:
            return 0.0
        factor *= s / (b * (s - b + 1))
    return min(p * factor, 1.0)


def count_table(gamma):
    """(bounds, mirrored): the drawn count m is the number of bounds <= the 32-bit word u.

    The bounds are round(CDF(k) * 2^32) of Binomial(256, h), k = 0, 1, ... while below 2^32,
    with h = gamma, or h = 1 - gamma and K = 256 - m ("mirrored") when gamma > 1/2, so that
    (1 - h)^256 never underflows. Python floats are IEEE doubles, each operation rounded once:
    the same steps in the same order as the kernels.
    """
    if not gamma > 0.0:  # also NaN
        return [], False
    gamma = min(gamma, 1.0)
    mirrored = gamma > 0.5
    h = 1.0 - gamma if mirrored else gamma
    q = 1.0 - h
    pmf = q
    for _ in range(8):  # q^256 by squaring
        pmf = pmf * pmf
    ratio = h / q
    cdf = pmf
    bounds = []
    for k in range(CHUNK):
        bound = round(cdf * 2.0**32)  # round half to even, as rint
        if bound >= 2**32:
            break
        bounds.append(bound)
        pmf = (pmf * ratio) * ((CHUNK - k) / (k + 1))  # P(k + 1) from P(k)
        cdf = cdf + pmf
    return bounds, mirrored


def count_distribution(gamma):
    """P(K = k), k = 0..256, exactly as the quantised table gives it."""
    bounds, mirrored = count_table(gamma)
    edges = np.array([0] + bounds + [2**32], dtype=np.float64)
    pm = np.zeros(CHUNK + 1)
    pm[: len(bounds) + 1] = np.diff(edges) / 2.0**32
    return pm[::-1].copy() if mirrored else pm


def effective_gamma(gamma):
    """The probability that a position is a seed under the quantised table: E[K] / 256."""
    return float(np.dot(np.arange(CHUNK + 1), count_distribution(gamma)) / CHUNK)


def _bytes_of(words):
    """The 4 bytes of each 32-bit word of a uint64 array, low byte first: shape (n, 4 * words)."""
    stacked = np.stack(words, axis=1)  # (n, w)
    shifts = np.arange(4, dtype=np.uint64) * np.uint64(8)
    return ((stacked[:, :, None] >> shifts) & np.uint64(0xFF)).reshape(stacked.shape[0], -1).astype(np.int64)


def seeds_of_chunks(chunks, key, gamma):
    """Boolean (len(chunks), 256): the seeds of each chunk, before any validity test."""
    chunks = np.asarray(chunks, dtype=np.uint64)
    bounds, mirrored = count_table(gamma)
    out = np.zeros((chunks.size, CHUNK), dtype=bool)
    if chunks.size == 0:
        return out
    first = philox4x32_10(chunks, 0, key)
    counts = np.array([bisect.bisect_right(bounds, int(u)) for u in first[0]], dtype=np.int64)
    if mirrored:
        counts = CHUNK - counts
    candidates = _bytes_of(first[1:])  # 12 bytes of the first draw
    for i in np.nonzero(counts)[0]:
        k = int(counts[i])
        need = min(k, CHUNK - k)
        chosen = []
        seen = set()
        row, call = list(candidates[i]), 1
        while len(chosen) < need:
            if not row:
                row = list(_bytes_of(philox4x32_10(chunks[i : i + 1], call, key))[0])
                call += 1
            b = row.pop(0)
            if b not in seen:
                seen.add(b)
                chosen.append(b)
        flags = np.zeros(CHUNK, dtype=bool)
        flags[chosen] = True
        out[i] = flags if k <= CHUNK // 2 else ~flags
    return out


def seed_flags(indices, key, gamma):
    """Whether each logical index is a seed (before the test that its block fits)."""
    g = np.asarray(indices, dtype=np.uint64)
    chunks, where = np.unique(g // np.uint64(CHUNK), return_inverse=True)
    seeds = seeds_of_chunks(chunks, key, gamma)
    return seeds[where.reshape(-1), (g % np.uint64(CHUNK)).astype(np.int64).reshape(-1)].reshape(g.shape)


def keep_mask(shape, block_size, p, key, shared_channels=False):
    """Boolean keep mask of the planes of an input of `shape` (N, C, *spatial).

    Returns an array of shape (planes, *spatial), planes = N*C, or N when shared.
    """
    n, c, *spatial = shape
    planes = n if shared_channels else n * c
    blocks = [min(b, s) if s > 0 else 1 for b, s in zip(block_size, spatial)]
    gamma = seed_probability(spatial, blocks, p)
    total = planes * int(np.prod(spatial))
    chunks = np.arange((total + CHUNK - 1) // CHUNK, dtype=np.uint64)
    seeds = seeds_of_chunks(chunks, key, gamma).reshape(-1)[:total].reshape(planes, *spatial)
    valid = np.zeros(spatial, dtype=bool)
    valid[tuple(slice(0, s - b + 1) for s, b in zip(spatial, blocks))] = True
    seeds &= valid
    dropped = np.zeros_like(seeds)
    for offset in np.ndindex(*blocks):
        # A seed at i drops i + offset for every offset inside the block.
        src = tuple(slice(0, s - o) for s, o in zip(spatial, offset))
        dst = tuple(slice(o, s) for s, o in zip(spatial, offset))
        dropped[(slice(None),) + dst] |= seeds[(slice(None),) + src]
    return ~dropped


def unpack_mask(mask_bytes, bits):
    """The first `bits` keep bits of a packed mask (bit g % 64 of little-endian word g // 64)."""
    return np.unpackbits(np.asarray(mask_bytes, dtype=np.uint8), bitorder="little")[:bits].astype(bool)


def drop_probability_per_position(spatial, block_size, p):
    """P(position dropped) under the seed law, as an array of shape `spatial`.

    Seeds are independent with probability effective_gamma: exact for the ideal binomial, and
    within about 2^-32 for the quantised table (positions of one chunk are then exchangeable
    rather than independent), far below any statistical tolerance of the tests.
    """
    blocks = [min(b, s) for b, s in zip(block_size, spatial)]
    gamma = effective_gamma(seed_probability(spatial, blocks, p))
    covering = np.ones(spatial, dtype=np.int64)
    for axis, (s, b) in enumerate(zip(spatial, blocks)):
        i = np.arange(s)
        count = np.minimum(i, s - b) - np.maximum(0, i - b + 1) + 1
        shape = [1] * len(spatial)
        shape[axis] = s
        covering = covering * count.reshape(shape)
    return 1.0 - (1.0 - gamma) ** covering
