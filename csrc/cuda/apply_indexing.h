#pragma once
// Index arithmetic of the CUDA apply kernels, kept free of CUDA so that it runs on the host too:
// tests/cpp/apply_indexing_test.cpp checks it against plain stride arithmetic on every CI run.
#include <cstdint>

#include <c10/macros/Macros.h>

#include "../mask_logic.h"
#include "../memory_layout.h"

namespace dropblock {
namespace cuda {

constexpr int kMaxApplyDims = 5;

// Mask bit of element e of a contiguous tensor whose channels share the mask (CS = C * S).
C10_HOST_DEVICE inline int64_t shared_mask_bit(int64_t e, int64_t S, int64_t CS) {
  const int64_t sample = e / CS;
  return sample * S + (e - sample * CS) % S;
}

// The same with multiply-high dividers when every element index is below 2^32 (the contiguous
// kernel computes it once per vector: 64-bit divides are emulated on GPUs).
struct SharedMaskBits {
  int64_t S;
  int64_t CS;
  bool small;
  SmallDivider by_sample;  // CS
  SmallDivider by_plane;   // S
};

inline SharedMaskBits make_shared_mask_bits(int64_t S, int64_t CS, int64_t numel) {
  SharedMaskBits b{};
  b.S = S;
  b.CS = CS;
  b.small = numel > 0 && numel < (int64_t(1) << 32);
  if (b.small) {
    b.by_sample = make_small_divider(static_cast<uint64_t>(CS));
    b.by_plane = make_small_divider(static_cast<uint64_t>(S));
  }
  return b;
}

// Where element e lies: its sample, its offset in the sample (< CS) and in its plane (< S).
struct SharedPosition {
  int64_t sample;
  int64_t in_sample;
  int64_t in_plane;
};

C10_HOST_DEVICE inline SharedPosition shared_position(const SharedMaskBits& b, int64_t e) {
  SharedPosition p{};
  if (!b.small) {
    p.sample = e / b.CS;
    p.in_sample = e - p.sample * b.CS;
    p.in_plane = p.in_sample % b.S;
    return p;
  }
  p.sample = static_cast<int64_t>(divide(b.by_sample, static_cast<uint64_t>(e)));
  p.in_sample = e - p.sample * b.CS;
  p.in_plane = p.in_sample - static_cast<int64_t>(divide(b.by_plane, static_cast<uint64_t>(p.in_sample))) * b.S;
  return p;
}

C10_HOST_DEVICE inline int64_t shared_mask_bit(const SharedMaskBits& b, int64_t e) {
  const SharedPosition p = shared_position(b, e);
  return p.sample * b.S + p.in_plane;
}

// Keep bits of the n elements e .. e + n - 1 (1 <= n <= min(S, 32)) as bits 0 .. n - 1. They
// run on from e's bit, except where e's plane ends among them: the next plane is the next channel
// of the same sample (its bits start again at sample * S) or the first of the next sample (its
// bits run on). So a vector of any width up to S needs at most two reads, whatever S % n.
C10_HOST_DEVICE inline uint32_t shared_keep_bits(const uint64_t* mask, const SharedMaskBits& b, int64_t e, int n) {
  const SharedPosition p = shared_position(b, e);
  const int64_t bit = p.sample * b.S + p.in_plane;
  const int64_t run = b.S - p.in_plane < n ? b.S - p.in_plane : n;
  uint64_t bits = keep_bits(mask, bit, run);
  if (run < n) {
    const int64_t next = p.in_sample + run == b.CS ? bit + run : p.sample * b.S;
    bits |= keep_bits(mask, next, n - run) << run;
  }
  return static_cast<uint32_t>(bits);
}

// Any strides: one thread per element, visiting the dims in `order` (outermost first, the
// output's memory order), so that writes (and reads of alike-strided inputs) coalesce.
template <typename index_t>
struct StridedParams {
  int dims;
  index_t size[kMaxApplyDims];  // in visiting order
  index_t in_stride[kMaxApplyDims];
  index_t out_stride[kMaxApplyDims];
  index_t bit_stride[kMaxApplyDims];
  int64_t numel;
};

// Offsets of element e (in visiting order) in the input, the output and the mask.
template <typename index_t>
C10_HOST_DEVICE inline void strided_offsets(const StridedParams<index_t>& p, int64_t e, index_t& in_offset,
                                            index_t& out_offset, index_t& bit) {
  index_t rest = static_cast<index_t>(e);
  in_offset = 0;
  out_offset = 0;
  bit = 0;
DROPBLOCK_UNROLL
  for (int d = kMaxApplyDims - 1; d >= 0; --d) {
    if (d < p.dims) {
      const index_t coordinate = rest % p.size[d];
      rest /= p.size[d];
      in_offset += coordinate * p.in_stride[d];
      out_offset += coordinate * p.out_stride[d];
      bit += coordinate * p.bit_stride[d];
    }
  }
}

// The strided kernel's parameters: dims visited by decreasing output stride (stable, so ties
// keep the logical order); mask bits at the logical row-major index, channel stride 0 when shared.
template <typename index_t>
StridedParams<index_t> make_strided_params(int dim, const int64_t* sizes, const int64_t* in_strides,
                                           const int64_t* out_strides, bool shared) {
  int64_t bit_strides[kMaxApplyDims];
  int64_t running = 1;
  for (int d = dim - 1; d >= 0; --d) {
    bit_strides[d] = running;
    running *= sizes[d];
  }
  if (shared) {
    bit_strides[0] = bit_strides[1];  // S
    bit_strides[1] = 0;
  }
  int order[kMaxApplyDims];
  for (int d = 0; d < dim; ++d) {
    order[d] = d;
  }
  for (int i = 1; i < dim; ++i) {
    for (int j = i; j > 0 && out_strides[order[j - 1]] < out_strides[order[j]]; --j) {
      const int t = order[j];
      order[j] = order[j - 1];
      order[j - 1] = t;
    }
  }
  StridedParams<index_t> p{};
  p.dims = dim;
  p.numel = running;
  for (int d = 0; d < dim; ++d) {
    p.size[d] = static_cast<index_t>(sizes[order[d]]);
    p.in_stride[d] = static_cast<index_t>(in_strides[order[d]]);
    p.out_stride[d] = static_cast<index_t>(out_strides[order[d]]);
    p.bit_stride[d] = static_cast<index_t>(bit_strides[order[d]]);
  }
  return p;
}

// Whether every index of the strided kernel fits 32 bits (cheaper divisions).
inline bool strided_fits_32bit(int dim, const int64_t* sizes, const int64_t* in_strides, const int64_t* out_strides) {
  int64_t numel = 1, max_in = 0, max_out = 0;
  for (int d = 0; d < dim; ++d) {
    numel *= sizes[d];
    max_in += (sizes[d] - 1) * in_strides[d];
    max_out += (sizes[d] - 1) * out_strides[d];
  }
  const int64_t limit = int64_t(1) << 31;
  return numel < limit && max_in < limit && max_out < limit;
}

// Channels-innermost memory ((N, *spatial, C): torch.channels_last and channels_last_3d): a run
// of C channels is contiguous but their keep bits lie S apart in the mask. A block takes a tile
// of up to kTilePositions positions of one sample and up to kTileChannels of its channels, loads
// one word of keep bits per channel into shared memory, then writes the tile in memory order.
constexpr int kTilePositions = 64;
constexpr int kTileChannels = 256;  // 2 KB of keep words; late ResNet stages still get 1000+ blocks
// Below this many channels a tile is too small to pay for its set-up: the strided kernel is used.
constexpr int64_t kTileMinChannels = 16;

struct ChannelsLastGrid {
  int64_t C;
  int64_t S;
  int64_t tiles_per_sample;
  int64_t position_tiles;  // grid x: N * tiles_per_sample
  int64_t channel_tiles;   // grid y
};

inline ChannelsLastGrid make_channels_last_grid(int64_t N, int64_t C, int64_t S) {
  ChannelsLastGrid g{};
  g.C = C;
  g.S = S;
  g.tiles_per_sample = (S + kTilePositions - 1) / kTilePositions;
  g.position_tiles = N * g.tiles_per_sample;
  g.channel_tiles = (C + kTileChannels - 1) / kTileChannels;
  return g;
}

// Whether the grid fits CUDA's limits (x < 2^31, y < 2^16).
inline bool channels_last_grid_fits(const ChannelsLastGrid& g) {
  return g.position_tiles < (int64_t(1) << 31) && g.channel_tiles < (int64_t(1) << 16);
}

// Whether apply takes the channels-last tiles: both tensors dense with the channels innermost
// (and not also row-major, which the contiguous kernel serves), enough channels, a grid that fits.
inline bool use_channels_last_tiles(int dim, const int64_t* sizes, const int64_t* in_strides,
                                    const int64_t* out_strides) {
  int64_t numel = 1;
  for (int d = 0; d < dim; ++d) {
    numel *= sizes[d];
  }
  if (numel == 0 || sizes[1] < kTileMinChannels || !is_channels_innermost(dim, sizes, in_strides) ||
      !is_channels_innermost(dim, sizes, out_strides) ||
      (is_row_major(dim, sizes, in_strides) && is_row_major(dim, sizes, out_strides))) {
    return false;
  }
  return channels_last_grid_fits(make_channels_last_grid(sizes[0], sizes[1], numel / (sizes[0] * sizes[1])));
}

struct ChannelsLastBlock {
  int64_t n;
  int64_t first;     // first position of the tile
  int64_t count;     // positions in the tile (1 .. kTilePositions)
  int64_t c0;        // first channel of the tile
  int64_t channels;  // channels in the tile (1 .. kTileChannels)
  SmallDivider by_channels;
};

C10_HOST_DEVICE inline ChannelsLastBlock channels_last_block(const ChannelsLastGrid& g, int64_t x, int64_t y) {
  ChannelsLastBlock b{};
  b.n = x / g.tiles_per_sample;
  b.first = (x - b.n * g.tiles_per_sample) * kTilePositions;
  b.count = g.S - b.first < kTilePositions ? g.S - b.first : kTilePositions;
  b.c0 = y * kTileChannels;
  b.channels = g.C - b.c0 < kTileChannels ? g.C - b.c0 : kTileChannels;
  b.by_channels = make_small_divider(static_cast<uint64_t>(b.channels));
  return b;
}

// First mask bit of channel c0 + c of the tile (the shared mask has one row per sample).
C10_HOST_DEVICE inline int64_t channels_last_keep_row(const ChannelsLastGrid& g, const ChannelsLastBlock& b,
                                                      int64_t c, bool shared) {
  return shared ? b.n * g.S + b.first : (b.n * g.C + b.c0 + c) * g.S + b.first;
}

// Element i (< count * channels) of the tile, in memory order: its offset, position k in the
// tile and channel c in the tile.
C10_HOST_DEVICE inline int64_t channels_last_element(const ChannelsLastGrid& g, const ChannelsLastBlock& b, int64_t i,
                                                     int& k, int& c) {
  const int64_t position = static_cast<int64_t>(divide(b.by_channels, static_cast<uint64_t>(i)));
  k = static_cast<int>(position);
  c = static_cast<int>(i - position * b.channels);
  return (b.n * g.S + b.first + position) * g.C + b.c0 + c;
}

}  // namespace cuda
}  // namespace dropblock
