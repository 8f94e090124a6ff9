#pragma once
// Block expansion of the mask law (mask_logic.h), host and device: the blocks of a chunk's seeds
// that fit, cleared in the packed mask.
#include <cstdint>

#include "host_device.h"
#include "packed_mask.h"
#include "seed_draw.h"
#include "seed_grid.h"

namespace dropblock {

// The number of positions in a chunk's set.
C10_HOST_DEVICE inline int bit_count(const ChunkBits& s) {
  return popcount64(s.w0) + popcount64(s.w1) + popcount64(s.w2) + popcount64(s.w3);
}

// Bits [offset, offset + n) of a chunk's bits (1 <= n <= 64, offset + n <= 256) as bits 0 .. n-1.
C10_HOST_DEVICE inline uint64_t chunk_bits(const ChunkBits& s, int64_t offset, int64_t n) {
  const int q = static_cast<int>(offset >> 6), shift = static_cast<int>(offset & 63);
  const uint64_t lo = q == 0 ? s.w0 : q == 1 ? s.w1 : q == 2 ? s.w2 : s.w3;
  const uint64_t hi = q == 0 ? s.w1 : q == 1 ? s.w2 : q == 2 ? s.w3 : 0;
  const uint64_t bits = shift == 0 ? lo : (lo >> shift) | (hi << (64 - shift));
  return bits & low_bits(n);
}

// Clears the blocks of the seeds `bits` (bit i <-> logical index g + i, each where its block fits,
// all in one row). A seed at g drops g + (dz*H + dy)*W + dx for dz < bd, dy < bh, dx < bw: blocks
// never leave their rows, so the same offsets serve every seed and the pattern of seeds, widened by
// bw - 1 (at most 64 bits: callers pass at most 65 - bw positions when bw <= 48), is cleared row
// by row; wider blocks are cleared seed by seed.
template <typename Clear>
C10_HOST_DEVICE inline void clear_row_blocks(const SeedGrid& s, int64_t g, uint64_t bits, const Clear& clear) {
  const int64_t H = s.size[1], W = s.size[2];
  const int64_t bd = s.block[0], bh = s.block[1], bw = s.block[2];
  if (bw <= 48) {
    uint64_t pattern = bits;
    for (int64_t covered = 1; covered < bw;) {
      const int64_t step = covered < bw - covered ? covered : bw - covered;
      pattern |= pattern << step;
      covered += step;
    }
    for (int64_t dz = 0; dz < bd; ++dz) {
      for (int64_t dy = 0; dy < bh; ++dy) {
        const int64_t pos = g + (dz * H + dy) * W;
        const int shift = static_cast<int>(pos & 63);
        clear(pos >> 6, pattern << shift);
        if (shift != 0) {
          clear((pos >> 6) + 1, pattern >> (64 - shift));
        }
      }
    }
    return;
  }
  for (uint64_t v = bits; v != 0; v &= v - 1) {
    const int lane = lowest_bit64(v);
    for (int64_t dz = 0; dz < bd; ++dz) {
      for (int64_t dy = 0; dy < bh; ++dy) {
        clear_range(g + lane + (dz * H + dy) * W, bw, clear);
      }
    }
  }
}

// Clears the block of one seed at logical index g (where its block fits): bd * bh rows of bw bits,
// walked by adding the row and plane strides (no multiply per row).
template <typename Clear>
C10_HOST_DEVICE inline void clear_one_block(const SeedGrid& s, int64_t g, const Clear& clear) {
  const int64_t H = s.size[1], W = s.size[2];
  const int64_t bd = s.block[0], bh = s.block[1], bw = s.block[2];
  int64_t plane_row = g;
  for (int64_t dz = 0; dz < bd; ++dz, plane_row += H * W) {
    int64_t pos = plane_row;
    for (int64_t dy = 0; dy < bh; ++dy, pos += W) {
      if (bw <= 48) {
        const uint64_t pattern = low_bits(bw);
        const int shift = static_cast<int>(pos & 63);
        clear(pos >> 6, pattern << shift);
        if (shift + bw > 64) {
          clear((pos >> 6) + 1, pattern >> (64 - shift));
        }
      } else {
        clear_range(pos, bw, clear);
      }
    }
  }
}

// Clears the block of the seed at logical index g if a whole block fits there.
template <typename Clear>
C10_HOST_DEVICE inline void clear_block_if_it_fits(const SeedGrid& s, int64_t g, const Clear& clear) {
  int64_t z, y, x;
  position_in_plane(s, g, z, y, x);
  if (z < s.extent[0] && y < s.extent[1] && x < s.extent[2]) {
    clear_one_block(s, g, clear);
  }
}

// A chunk with at most this many seeds has them placed one by one (a division to find each one's
// position); more, and the chunk is walked row by row (its seeds of a row at once).
constexpr int kSparseChunkSeeds = 4;

// Block expansion of a chunk: clears through clear(word, bits) the blocks of its seeds (bit i <->
// logical index kChunk * chunk + i) that sit where a whole block fits, walking the chunk row by row
// (a row's seeds at once, in pieces of up to 65 - bw positions): no per-position work.
template <typename Clear>
C10_HOST_DEVICE inline void clear_chunk_blocks(const SeedGrid& s, uint64_t chunk, const ChunkBits& seeds,
                                               const Clear& clear) {
  const int64_t g0 = static_cast<int64_t>(chunk) * kChunk;
  if (g0 >= s.total) {
    return;
  }
  const int64_t n = s.total - g0 < kChunk ? s.total - g0 : kChunk;
  if (bit_count(seeds) <= kSparseChunkSeeds) {
    const uint64_t words[4] = {seeds.w0, seeds.w1, seeds.w2, seeds.w3};
    DROPBLOCK_UNROLL
    for (int q = 0; q < 4; ++q) {
      for (uint64_t v = words[q]; v != 0; v &= v - 1) {
        const int64_t i = 64 * q + lowest_bit64(v);
        if (i >= n) {
          return;
        }
        clear_block_if_it_fits(s, g0 + i, clear);
      }
    }
    return;
  }
  const int64_t piece = s.block[2] <= 48 ? 65 - s.block[2] : 64;
  for_each_fitting_run(s, g0, n, [&](int64_t i, int64_t fit) {
    for (int64_t j = 0; j < fit; j += piece) {
      const int64_t len = fit - j < piece ? fit - j : piece;
      const uint64_t bits = chunk_bits(seeds, i + j, len);
      if (bits != 0) {
        clear_row_blocks(s, g0 + i + j, bits, clear);
      }
    }
  });
}

}  // namespace dropblock
