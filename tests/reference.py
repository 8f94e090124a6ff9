"""An independent, slow NumPy statement of the mask law in csrc/mask_logic.h.

The tests compare the kernels bit for bit against it, so a kernel that draws other random
numbers, expands blocks differently, or packs bits in another order fails.
"""

import numpy as np

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = np.uint64(0xFFFFFFFF)


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


def threshold(gamma):
    """T with P(seed) = T / 2^32."""
    return min(int(round(gamma * 2**32)), 2**32)


def uniform32(indices, key):
    """The 32-bit uniform u(g) whose top byte comes from stream 0 and low 24 bits from stream 1."""
    g = np.asarray(indices, dtype=np.uint64)
    words = philox4x32_10(g // np.uint64(16), 0, key)
    lane = (g % np.uint64(16)).astype(np.int64)
    stacked = np.stack(words)  # (4, n)
    word = stacked[lane // 4, np.arange(lane.size)]
    top = (word >> (np.uint64(8) * (lane % 4).astype(np.uint64))) & np.uint64(0xFF)
    low = philox4x32_10(g, 1, key)[0] & np.uint64(0xFFFFFF)
    return (top << np.uint64(24)) | low


def keep_mask(shape, block_size, p, key, shared_channels=False):
    """Boolean keep mask of the planes of an input of `shape` (N, C, *spatial).

    Returns an array of shape (planes, *spatial), planes = N*C, or N when shared.
    """
    n, c, *spatial = shape
    planes = n if shared_channels else n * c
    blocks = [min(b, s) if s > 0 else 1 for b, s in zip(block_size, spatial)]
    gamma = seed_probability(spatial, blocks, p)
    t = threshold(gamma)
    plane_numel = int(np.prod(spatial))
    g = np.arange(planes * plane_numel, dtype=np.uint64)
    seeds = (uniform32(g, key) < np.uint64(t)) if g.size else np.zeros(0, dtype=bool)
    seeds = seeds.reshape(planes, *spatial)
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
    """Exact P(position dropped) under the seed law, as an array of shape `spatial`."""
    blocks = [min(b, s) for b, s in zip(block_size, spatial)]
    gamma = threshold(seed_probability(spatial, blocks, p)) / 2**32
    covering = np.ones(spatial, dtype=np.int64)
    for axis, (s, b) in enumerate(zip(spatial, blocks)):
        i = np.arange(s)
        count = np.minimum(i, s - b) - np.maximum(0, i - b + 1) + 1
        shape = [1] * len(spatial)
        shape[axis] = s
        covering = covering * count.reshape(shape)
    return 1.0 - (1.0 - gamma) ** covering
