#pragma once
// Index arithmetic of the CUDA apply kernels, kept free of CUDA so that it runs on the host too:
// tests/cpp/apply_indexing_test.cpp checks it against plain stride arithmetic on every CI run.
// Words: a CTA is a CUDA thread block; a "block" is a dropped DropBlock block (not used here).
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <c10/macros/Macros.h>

#include "../host_device.h"
#include "../memory_layout.h"
#include "../packed_mask.h"
#include "../small_divider.h"

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

// Keep bit `index` of the packed mask from its 32-bit half word: bit g % 64 of 64-bit word g / 64
// is bit g % 32 of 32-bit word g / 32 on little-endian machines (every CUDA device and the hosts
// that emulate it), and a 32-bit test is 2 instructions where a 64-bit one is 5.
C10_HOST_DEVICE inline bool keep_bit32(const uint64_t* mask, uint64_t index) {
#if defined(__CUDA_ARCH__)
  const uint32_t half = reinterpret_cast<const uint32_t*>(mask)[index >> 5];
#else
  uint32_t half;  // through memcpy: no type punning on the host
  std::memcpy(&half, reinterpret_cast<const char*>(mask) + (index >> 5) * 4, sizeof(half));
#endif
  return (half >> (index & 31)) & 1u;
}

// ------------------------------------------------------------------------------------------
// Division by a divisor fixed at launch
// ------------------------------------------------------------------------------------------

// n / d for 0 <= n < 2^31 and 2 <= d <= 2^31 by one 32-bit multiply-high and a shift:
//   s = ceil(log2 d) >= 1, m = ceil(2^(31 + s) / d), n / d = floor(n * m / 2^(31 + s))
//                                                        = umulhi(n, m) >> (s - 1).
// Why it is exact: write m * d = 2^(31+s) + e with 0 <= e < d <= 2^s, and n = q * d + r with
// 0 <= r < d. Then n * m / 2^(31+s) = q + (r + n * e / 2^(31+s)) / d, and n * e < 2^31 * 2^s,
// so the fraction (r + n * e / 2^(31+s)) / d lies in [0, (r + 1) / d), inside [0, 1): the floor
// is q. Why m fits 32 bits: d >= 2^(s-1) + 1, so 2^(31+s) / d <= 2^(31+s) / (2^(s-1) + 1)
// <= 2^32 - 1 (multiply out: 2^(s-1) + 1 <= 2^32), hence m <= 2^32 - 1. And
// umulhi(n, m) >> (s - 1) = floor(floor(n * m / 2^32) / 2^(s-1)) = floor(n * m / 2^(31+s)).
// d = 1 (s = 0) would need a shift of -1: the strided plan never divides by 1 (size-1 dims are
// dropped). tests/cpp/apply_indexing_test.cpp checks it at every s, around every power of two and
// at n = 2^31 - 1. A GPU divides 32-bit integers in software (about 20 instructions and a
// branch); this is 2 (IMAD.HI, SHF), and `negative` makes the remainder one IMAD.
struct FastDivider32 {
  uint32_t divisor;
  uint32_t negative;  // 2^32 - divisor: n - q * d = n + q * negative (mod 2^32)
  uint32_t magic;
  uint32_t shift;  // s - 1

  C10_HOST_DEVICE uint32_t divide(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    return __umulhi(n, magic) >> shift;
#else
    return static_cast<uint32_t>((static_cast<uint64_t>(n) * magic) >> 32) >> shift;
#endif
  }
  C10_HOST_DEVICE uint32_t remainder(uint32_t n, uint32_t q) const { return n + q * negative; }
};

// Requires 2 <= d <= 2^31.
inline FastDivider32 make_fast_divider32(uint64_t d) {
  uint32_t s = 1;
  while ((uint64_t(1) << s) < d) {
    ++s;
  }
  const uint64_t power = uint64_t(1) << (31 + s);
  return {static_cast<uint32_t>(d), static_cast<uint32_t>((uint64_t(1) << 32) - d),
          static_cast<uint32_t>((power + d - 1) / d), s - 1};
}

// The 64-bit index path (2^31 elements or offsets and more: rare) divides plainly.
struct PlainDivider64 {
  uint64_t divisor;
  C10_HOST_DEVICE uint64_t divide(uint64_t n) const { return n / divisor; }
  C10_HOST_DEVICE uint64_t remainder(uint64_t n, uint64_t q) const { return n - q * divisor; }
};

template <typename index_t>
using IndexDivider = std::conditional_t<std::is_same<index_t, uint32_t>::value, FastDivider32, PlainDivider64>;

// d >= 2 for the 32-bit path (a size-1 dim gets a divider that is never used).
template <typename index_t>
inline IndexDivider<index_t> make_index_divider(uint64_t d) {
  if (d < 2) {
    IndexDivider<index_t> unused{};
    unused.divisor = static_cast<index_t>(d);
    return unused;
  }
  if constexpr (std::is_same<index_t, uint32_t>::value) {
    return make_fast_divider32(d);
  } else {
    return PlainDivider64{d};
  }
}

// ------------------------------------------------------------------------------------------
// Any strides: the strided kernel
// ------------------------------------------------------------------------------------------

// The strided kernel walks the elements in the output's memory order (so that writes, and reads of
// an input laid out alike, coalesce). The host simplifies the layout first: size-1 dims dropped,
// dims sorted by decreasing output stride, then neighbours merged wherever the outer one's input,
// output and mask-bit strides are all the inner one's times its size (a dense pair of dims is one
// dim). A transposed (N, C, W, H) view of a contiguous map becomes 3 dims (N * C, W, H): 2 divisions
// per element, where a walk over the input's own 4 dims takes 3 (4 for the kernel this replaced).
template <typename index_t>
struct StridedPlan {
  int dims;                                      // 1 .. kMaxApplyDims; [0] outermost, [dims - 1] innermost
  IndexDivider<index_t> by_size[kMaxApplyDims];  // sizes (>= 2 but for a single element), in visiting
                                                 // order; [0] only bounds: the outermost coordinate is
                                                 // what the divisions leave
  index_t in_stride[kMaxApplyDims];              // elements; 0 along an expanded dim
  index_t out_stride[kMaxApplyDims];
  index_t bit_stride[kMaxApplyDims];  // mask bits (logical row-major; 0 along C when shared)
  int64_t numel;
  bool out_dense;     // out offset of visiting index e is e: the output needs no offset arithmetic
  bool same_strides;  // the input's offsets are the output's (in place, or a dense input and its empty_like)
};

// Offsets of the N elements e[0 .. N) (in visiting order) in the input, the output and the mask.
// kOutDense and kSameStrides (valid when the plan says so) skip the arithmetic the plan makes
// unnecessary. The N elements go through each dim together, so that the dim's test and its
// divider's constants are paid once per N elements; an element past numel gets harmless garbage
// (unsigned wrap-around, never out of bounds: the kernel only uses offsets of elements it has).
template <int N, bool kOutDense, bool kSameStrides, typename index_t>
C10_HOST_DEVICE inline void strided_offsets_n(const StridedPlan<index_t>& p, const index_t (&e)[N],
                                              index_t (&in_offset)[N], index_t (&out_offset)[N], index_t (&bit)[N]) {
  index_t rest[N];
  DROPBLOCK_UNROLL
  for (int u = 0; u < N; ++u) {
    rest[u] = e[u];
    in_offset[u] = 0;
    out_offset[u] = 0;
    bit[u] = 0;
  }
  DROPBLOCK_UNROLL
  for (int d = kMaxApplyDims - 1; d >= 1; --d) {
    if (d < p.dims) {
      DROPBLOCK_UNROLL
      for (int u = 0; u < N; ++u) {
        const index_t q = p.by_size[d].divide(rest[u]);
        const index_t coordinate = p.by_size[d].remainder(rest[u], q);
        rest[u] = q;
        bit[u] += coordinate * p.bit_stride[d];
        if (!kOutDense) {
          out_offset[u] += coordinate * p.out_stride[d];
        }
        if (!kSameStrides) {
          in_offset[u] += coordinate * p.in_stride[d];
        }
      }
    }
  }
  DROPBLOCK_UNROLL
  for (int u = 0; u < N; ++u) {
    bit[u] += rest[u] * p.bit_stride[0];
    out_offset[u] = kOutDense ? e[u] : out_offset[u] + rest[u] * p.out_stride[0];
    in_offset[u] = kSameStrides ? out_offset[u] : in_offset[u] + rest[u] * p.in_stride[0];
  }
}

// The same for one element.
template <bool kOutDense, bool kSameStrides, typename index_t>
C10_HOST_DEVICE inline void strided_offsets(const StridedPlan<index_t>& p, index_t e, index_t& in_offset,
                                            index_t& out_offset, index_t& bit) {
  const index_t es[1] = {e};
  index_t in[1], out[1], bits[1];
  strided_offsets_n<1, kOutDense, kSameStrides>(p, es, in, out, bits);
  in_offset = in[0];
  out_offset = out[0];
  bit = bits[0];
}

template <typename index_t>
StridedPlan<index_t> make_strided_plan(int dim, const int64_t* sizes, const int64_t* in_strides,
                                       const int64_t* out_strides, bool shared) {
  int64_t bit_strides[kMaxApplyDims];
  int64_t numel = 1;
  for (int d = dim - 1; d >= 0; --d) {
    bit_strides[d] = numel;
    numel *= sizes[d];
  }
  if (shared) {
    bit_strides[0] = bit_strides[1];  // S
    bit_strides[1] = 0;
  }
  // The dims that matter (size > 1), stably sorted by decreasing output stride (ties keep the
  // logical order).
  int order[kMaxApplyDims];
  int kept = 0;
  for (int d = 0; d < dim; ++d) {
    if (sizes[d] != 1) {
      order[kept++] = d;
    }
  }
  for (int i = 1; i < kept; ++i) {
    for (int j = i; j > 0 && out_strides[order[j - 1]] < out_strides[order[j]]; --j) {
      const int t = order[j];
      order[j] = order[j - 1];
      order[j - 1] = t;
    }
  }
  int64_t size[kMaxApplyDims], in[kMaxApplyDims], out[kMaxApplyDims], bits[kMaxApplyDims];
  int dims = 0;
  for (int i = 0; i < kept; ++i) {
    const int d = order[i];
    if (dims > 0 && in[dims - 1] == in_strides[d] * sizes[d] && out[dims - 1] == out_strides[d] * sizes[d] &&
        bits[dims - 1] == bit_strides[d] * sizes[d]) {
      size[dims - 1] *= sizes[d];  // merged: the outer dim's strides become the inner one's
    } else {
      size[dims] = sizes[d];
      ++dims;
    }
    in[dims - 1] = in_strides[d];
    out[dims - 1] = out_strides[d];
    bits[dims - 1] = bit_strides[d];
  }
  if (dims == 0) {  // a single element
    size[0] = 1;
    in[0] = out[0] = bits[0] = 0;
    dims = 1;
  }
  StridedPlan<index_t> p{};
  p.dims = dims;
  p.numel = numel;
  p.out_dense = true;
  p.same_strides = true;
  int64_t dense = 1;
  for (int d = dims - 1; d >= 0; --d) {
    p.by_size[d] = make_index_divider<index_t>(static_cast<uint64_t>(size[d]));
    p.in_stride[d] = static_cast<index_t>(in[d]);
    p.out_stride[d] = static_cast<index_t>(out[d]);
    p.bit_stride[d] = static_cast<index_t>(bits[d]);
    p.out_dense = p.out_dense && out[d] == dense;
    p.same_strides = p.same_strides && in[d] == out[d];
    dense *= size[d];
  }
  return p;
}

// Whether every index of the strided kernel fits 31 bits (FastDivider32's range, int-safe offsets).
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

// Whether the input is one value: every dim of size > 1 has input stride 0 (an expanded scalar,
// such as the gradient of y.sum()). The contiguous kernel then reads that value once per thread.
inline bool is_single_value(int dim, const int64_t* sizes, const int64_t* strides) {
  for (int d = 0; d < dim; ++d) {
    if (sizes[d] != 1 && strides[d] != 0) {
      return false;
    }
  }
  return true;
}

// ------------------------------------------------------------------------------------------
// Channels innermost: the channels-last kernel
// ------------------------------------------------------------------------------------------

// Channels-innermost memory ((N, *spatial, C): torch.channels_last and channels_last_3d): a run
// of C channels is contiguous but their keep bits lie S apart in the mask. A CTA takes a tile of
// up to kTilePositions positions of one sample and up to kThreads groups of V consecutive channels
// (one vector of V elements: 16 bytes where C and the alignment allow). Each thread keeps one
// group for the whole tile, so it reads its V keep words (64 positions each) once and then walks
// its positions r, r + R, ... (R = kThreads / G rows of the CTA's G groups) with one vector load
// and store per position and no division: consecutive threads take consecutive groups, so a
// warp's accesses are contiguous.
constexpr int kTilePositions = 64;
constexpr int kTileThreads = 256;  // threads per CTA of the channels-last kernel (kThreads)
// Below this many channels a tile is too small to pay for its set-up: the strided kernel is used.
constexpr int64_t kTileMinChannels = 16;

struct ChannelsLastPlan {
  int64_t C;                 // channels
  int64_t S;                 // positions per sample (product of the spatial sizes)
  int64_t tiles_per_sample;  // ceil(S / kTilePositions)
  int64_t position_tiles;    // grid x: N * tiles_per_sample
  int64_t channel_tiles;     // grid y: ceil(groups / groups_per_tile)
  int64_t groups;            // C / V channel groups per position
  int64_t step;              // R * groups: vectors from one of a thread's positions to its next
  int vector;                // V: channels per thread (V divides C)
  int groups_per_tile;       // G = min(groups, kThreads)
  int rows;                  // R = kThreads / G: positions a CTA works on side by side
};

inline ChannelsLastPlan make_channels_last_plan(int64_t N, int64_t C, int64_t S, int vector) {
  ChannelsLastPlan g{};
  g.C = C;
  g.S = S;
  g.tiles_per_sample = (S + kTilePositions - 1) / kTilePositions;
  g.position_tiles = N * g.tiles_per_sample;
  g.vector = vector;
  g.groups = C / vector;
  g.groups_per_tile = static_cast<int>(g.groups < kTileThreads ? g.groups : kTileThreads);
  g.rows = kTileThreads / g.groups_per_tile;
  g.channel_tiles = (g.groups + g.groups_per_tile - 1) / g.groups_per_tile;
  g.step = g.rows * g.groups;
  return g;
}

// Whether the grid fits CUDA's limits (x < 2^31, y < 2^16).
inline bool channels_last_grid_fits(const ChannelsLastPlan& g) {
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
  // The narrowest vector gives the largest grid.
  return channels_last_grid_fits(make_channels_last_plan(sizes[0], sizes[1], numel / (sizes[0] * sizes[1]), 1));
}

// One thread's share of a tile: channel group `group` at positions first + row, first + row + R, ...
// below first + count, of sample n. `active` is false for threads past the tile's groups.
struct ChannelsLastThread {
  bool active;
  int row;        // r < R
  int64_t group;  // channel group: channels group * V .. group * V + V - 1
  int64_t n;      // sample
  int64_t first;  // first position of the tile
  int64_t count;  // positions in the tile (1 .. kTilePositions)
};

C10_HOST_DEVICE inline ChannelsLastThread channels_last_thread(const ChannelsLastPlan& g, int64_t x, int64_t y,
                                                               int thread) {
  ChannelsLastThread t{};
  const int in_tile = thread % g.groups_per_tile;  // one division per thread, not per element
  t.row = thread / g.groups_per_tile;
  t.group = y * g.groups_per_tile + in_tile;
  t.n = x / g.tiles_per_sample;
  t.first = (x - t.n * g.tiles_per_sample) * kTilePositions;
  t.count = g.S - t.first < kTilePositions ? g.S - t.first : kTilePositions;
  t.active = t.row < g.rows && t.group < g.groups && t.row < t.count;
  return t;
}

// Element offset of the thread's first channel at position `first + k` of its tile.
C10_HOST_DEVICE inline int64_t channels_last_offset(const ChannelsLastPlan& g, const ChannelsLastThread& t, int64_t k) {
  return (t.n * g.S + t.first + k) * g.C + t.group * g.vector;
}

// First mask bit of the thread's channel j (< V) at the tile's first position (the shared mask has
// one row per sample).
C10_HOST_DEVICE inline int64_t channels_last_keep_row(const ChannelsLastPlan& g, const ChannelsLastThread& t, int j,
                                                      bool shared) {
  return shared ? t.n * g.S + t.first : (t.n * g.C + t.group * g.vector + j) * g.S + t.first;
}

}  // namespace cuda
}  // namespace dropblock
