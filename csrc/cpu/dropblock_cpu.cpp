// CPU kernels of the DropBlock ops: the packed keep mask (no data touched) and the data pass.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../mask_logic.h"
#include "../mask_params.h"
#include "../memory_layout.h"

namespace dropblock {
namespace {

// The CPU kernels go parallel only where torch's element-wise ops do: past at::internal::GRAIN_SIZE
// elements. Below that a region is not worth its threads, and a child forked after the parent used
// the OpenMP pool hangs in its first parallel region (libgomp is not fork-safe): a DataLoader worker
// started with fork then runs small tensors on its own thread, as torch's own ops do.
constexpr int64_t kGrainElements = at::internal::GRAIN_SIZE;

// at::parallel_for over `units` units of work that hold `elements` elements in all: serial up to
// kGrainElements elements, else in ranges of about kGrainElements elements or more.
template <typename F>
void parallel_over(int64_t units, int64_t elements, const F& f) {
  if (units <= 0) {
    return;
  }
  const int64_t per_unit = std::max<int64_t>(1, elements / units);
  const int64_t grain = elements <= kGrainElements ? units : std::max<int64_t>(1, kGrainElements / per_unit);
  at::parallel_for(0, units, grain, f);
}

// Logical indices per unit of parallel work in the mask (a multiple of 64): small enough to balance
// two to a few dozen threads, large enough that per-range set-up and edge atomics stay negligible.
constexpr int64_t kChunkElements = int64_t(1) << 15;
static_assert(kChunkElements % 64 == 0, "mask ranges hold whole words");

// Philox groups drawn per batch: independent iterations the compiler can vectorise.
constexpr int kPhiloxBatch = 128;

// Philox is most of the mask's cost: give the vectoriser wider registers where the CPU has them
// (x86-64-v4: AVX-512 F/BW/DQ/VL; v3: AVX2).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DROPBLOCK_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DROPBLOCK_VECTOR_CLONES
#endif

// Philox4x32-10 of the counters (lo[i], hi[i], stream, 0), i < m, in place: the batched twin of
// philox4x32_10, in a form the compiler vectorises.
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
inline void philox_batch(uint32_t* c0, uint32_t* c1, uint32_t* c2, uint32_t* c3, int m, PhiloxKey key) {
  for (int round = 0; round < 10; ++round) {
    const uint32_t k0 = philox_round_key_lo(key, round), k1 = philox_round_key_hi(key, round);
    for (int i = 0; i < m; ++i) {
      philox_round(c0[i], c1[i], c2[i], c3[i], k0, k1);
    }
  }
}

// Seed bits of the Philox groups groups[0 .. n-1] into bits[0 .. n-1]: the batched twin of
// seed_bits_of_group (stream-0 draws, then the ties' stream-1 draws, each batch at once).
DROPBLOCK_VECTOR_CLONES
void seed_bits_of_groups(const uint64_t* groups, int64_t n, PhiloxKey key, SeedThreshold t, uint32_t* bits) {
  constexpr int kMaxTies = 256;
  uint32_t t0[kMaxTies], t1[kMaxTies], t2[kMaxTies], t3[kMaxTies];
  int64_t tie_group[kMaxTies];
  int tie_lane[kMaxTies];
  int ties = 0;
  const auto resolve_ties = [&]() {
    philox_batch(t0, t1, t2, t3, ties, key);
    for (int j = 0; j < ties; ++j) {
      if (tie_is_seed(t0[j], t)) {
        bits[tie_group[j]] |= 1u << tie_lane[j];
      }
    }
    ties = 0;
  };
  for (int64_t base = 0; base < n; base += kPhiloxBatch) {
    const int m = static_cast<int>(std::min<int64_t>(kPhiloxBatch, n - base));
    uint32_t c0[kPhiloxBatch], c1[kPhiloxBatch], c2[kPhiloxBatch], c3[kPhiloxBatch];
    for (int i = 0; i < m; ++i) {
      const uint64_t k = groups[base + i];
      c0[i] = static_cast<uint32_t>(k);
      c1[i] = static_cast<uint32_t>(k >> 32);
      c2[i] = 0;  // stream 0
      c3[i] = 0;
    }
    philox_batch(c0, c1, c2, c3, m, key);
    // Classify every draw without branching (the common gamma < 1/2 path is pure SWAR and
    // vectorises); only the rare ties need more work.
    uint32_t seeds[kPhiloxBatch], tie_lanes[kPhiloxBatch];
    if (t.top <= 127) {
      for (int i = 0; i < m; ++i) {
        const DrawClasses c = classify_draw_small_top(Philox4{{c0[i], c1[i], c2[i], c3[i]}}, t.top);
        seeds[i] = c.seeds;
        tie_lanes[i] = c.ties;
      }
    } else {
      for (int i = 0; i < m; ++i) {
        const DrawClasses c = classify_draw(Philox4{{c0[i], c1[i], c2[i], c3[i]}}, t);
        seeds[i] = c.seeds;
        tie_lanes[i] = c.ties;
      }
    }
    for (int i = 0; i < m; ++i) {
      bits[base + i] = seeds[i];
      if (tie_lanes[i] == 0) {
        continue;
      }
      if (ties + 16 > kMaxTies) {
        resolve_ties();
      }
      for (uint32_t v = tie_lanes[i]; v != 0; v &= v - 1) {
        const int lane = __builtin_ctz(v);
        const uint64_t g = 16 * groups[base + i] + static_cast<uint64_t>(lane);
        t0[ties] = static_cast<uint32_t>(g);
        t1[ties] = static_cast<uint32_t>(g >> 32);
        t2[ties] = 1;  // stream 1
        t3[ties] = 0;
        tie_group[ties] = base + i;
        tie_lane[ties] = lane;
        ++ties;
      }
    }
  }
  resolve_ties();
}

// The clones give the popcount instruction (baseline x86-64 calls a libgcc routine per word).
DROPBLOCK_VECTOR_CLONES
int64_t count_bits(const uint64_t* words, int64_t n) {
  int64_t count = 0;
  for (int64_t w = 0; w < n; ++w) {
    count += __builtin_popcountll(words[w]);
  }
  return count;
}

constexpr int kGroupsPerDraw = 1024;

// Draws and paints the seeds of one contiguous range [first, last) of logical indices (first a
// multiple of 64, last too unless it ends the mask, so Philox groups and mask words never
// straddle two ranges) on a mask of all ones. Only the Philox groups holding a position where a
// block fits are drawn (a third of them on 7x7 maps with 7x7 blocks). Blocks reach past their
// range by up to block_reach() indices: the words within that reach of the range's start may
// also be painted by the range before, and are cleared atomically.
class RangePainter {
 public:
  RangePainter(const SeedGrid& grid, PhiloxKey key, SeedThreshold threshold, uint64_t* words)
      : grid_(grid), key_(key), threshold_(threshold), words_(words) {}

  void paint(int64_t first, int64_t last) {
    const int64_t reach = block_reach(grid_);
    clear_ = OwnedClear{words_, reach > 0 ? (first + reach - 1) >> 6 : (first >> 6) - 1, last >> 6};
    const int64_t H = grid_.size[1], W = grid_.size[2];
    // Rows (q, z, y) of the range whose seeds can fit: their first extent[2] positions.
    const int64_t first_row = first / W;
    int64_t y = first_row % H, z = (first_row / H) % grid_.size[0];
    int64_t last_listed = -1;  // rows narrower than a group share groups: list each once
    for (int64_t row = first_row; row * W < last; ++row) {
      const bool seeds_fit = y < grid_.extent[1] && z < grid_.extent[0];
      if (++y == H) {
        y = 0;
        if (++z == grid_.size[0]) {
          z = 0;
        }
      }
      if (!seeds_fit) {
        continue;
      }
      const int64_t a = std::max(first, row * W), b = std::min(last, row * W + grid_.extent[2]) - 1;
      for (int64_t k = std::max(a / 16, last_listed + 1); a <= b && k <= b / 16; ++k) {
        groups_[pending_++] = static_cast<uint64_t>(k);
        last_listed = k;
        if (pending_ == kGroupsPerDraw) {
          draw_pending();
        }
      }
    }
    draw_pending();
  }

 private:
  void draw_pending() {
    seed_bits_of_groups(groups_, pending_, key_, threshold_, bits_);
    for (int i = 0; i < pending_; ++i) {
      if (bits_[i] != 0) {
        clear_blocks(grid_, groups_[i], seeds_where_blocks_fit(grid_, groups_[i], bits_[i]), clear_);
      }
    }
    pending_ = 0;
  }

  SeedGrid grid_;
  PhiloxKey key_;
  SeedThreshold threshold_;
  uint64_t* words_;
  OwnedClear clear_{};
  int pending_ = 0;
  uint64_t groups_[kGroupsPerDraw];
  uint32_t bits_[kGroupsPerDraw];
};

std::tuple<at::Tensor, at::Tensor> drop_block_mask_cpu(const at::Tensor& input, const at::Tensor& seed, const at::Tensor& p,
                                                       c10::IntArrayRef block_size, double eps,
                                                       bool shared_channels) {
  const MaskGeometry g = make_mask_geometry(input, block_size, shared_channels);
  const double drop_probability = *check_mask_args(input, seed, p, eps);  // the input's device is the CPU
  const PhiloxKey key = make_key(static_cast<uint64_t>(seed.item<int64_t>()));
  const SeedThreshold threshold = make_seed_threshold(drop_probability, gamma_factor(g));

  at::Tensor mask = at::empty({packed_mask_bytes(g.planes * g.plane_numel())}, input.options().dtype(at::kByte));
  uint64_t* words = reinterpret_cast<uint64_t*>(mask.data_ptr<uint8_t>());
  const int64_t nwords = mask.numel() / 8;
  const SeedGrid grid = make_seed_grid(g);
  // All ones first (but the padding past the last element), then every range clears its blocks.
  std::fill(words, words + nwords, ~uint64_t(0));
  if (nwords > 0 && grid.total % 64 != 0) {
    words[nwords - 1] = low_bits(grid.total % 64);
  }
  if (!never_seeds(threshold) && grid.total > 0) {
    const int64_t chunks = grid.total / kChunkElements + (grid.total % kChunkElements != 0 ? 1 : 0);
    parallel_over(chunks, grid.total, [&](int64_t begin, int64_t end) {
      RangePainter painter(grid, key, threshold, words);
      for (int64_t c = begin; c < end; ++c) {
        painter.paint(c * kChunkElements, std::min((c + 1) * kChunkElements, grid.total));
      }
    });
  }

  static_assert((int64_t(1) << 14) * 64 >= kGrainElements, "the count goes parallel later than torch");
  const int64_t kept_bits = at::parallel_reduce(
      0, nwords, 1 << 14, int64_t(0),
      [&](int64_t begin, int64_t end, int64_t acc) {
        return acc + count_bits(words + begin, end - begin);
      },
      std::plus<int64_t>());
  const int64_t kept = shared_channels ? kept_bits * input.size(1) : kept_bits;
  at::Tensor scale = at::empty({}, input.options().dtype(at::kDouble));
  scale.fill_(keep_scale(input.numel(), kept, eps));
  return {mask, scale};
}

// Keep bits expanded to all-ones / all-zeros lanes of the scalar's width, a byte at a time,
// so that a word of mixed bits is applied with a vectorisable AND instead of a branch per element.
template <typename lane_t>
struct LaneMasks {
  lane_t lanes[256][8];
  LaneMasks() {
    for (int byte = 0; byte < 256; ++byte) {
      for (int j = 0; j < 8; ++j) {
        lanes[byte][j] = ((byte >> j) & 1) ? static_cast<lane_t>(~lane_t(0)) : lane_t(0);
      }
    }
  }
};

template <size_t bytes> struct LaneType;
template <> struct LaneType<2> { using type = uint16_t; };
template <> struct LaneType<4> { using type = uint32_t; };
template <> struct LaneType<8> { using type = uint64_t; };

// 16-bit floats: the conversions to and from float are most of the apply's cost (c10::Half
// converts in software unless F16C is on at compile time), so runs of up to kNarrowBatch elements
// go through functions the compiler vectorises for the CPU at hand. The arithmetic is the
// element-wise one: float(x) * scale, rounded to nearest even; dropped lanes become +0.
constexpr int kNarrowBatch = 64;

// dst[j] = src[j] * scale for j < n contiguous 16-bit elements, then ANDed with lanes[j] (all ones
// keeps, zero drops) when kMasked. dst may be src.
template <bool kMasked, typename half_t>
inline void scale_narrow_loop(const half_t* src, half_t* dst, int64_t n, float scale, const uint32_t* lanes) {
  for (int64_t j = 0; j < n; ++j) {
    float v = static_cast<float>(src[j]) * scale;
    if constexpr (kMasked) {
      uint32_t v_bits;
      std::memcpy(&v_bits, &v, sizeof(v_bits));
      v_bits &= lanes[j];
      std::memcpy(&v, &v_bits, sizeof(v_bits));
    }
    dst[j] = half_t(v);
  }
}

// The same, masked where lanes is given; one loop each way, so both vectorise.
template <typename half_t>
inline void scale_narrow(const half_t* src, half_t* dst, int64_t n, float scale, const uint32_t* lanes) {
  if (lanes == nullptr) {
    scale_narrow_loop<false>(src, dst, n, scale, lanes);
  } else {
    scale_narrow_loop<true>(src, dst, n, scale, lanes);
  }
}

// The vectorised clones (target_clones takes functions, not templates).
DROPBLOCK_VECTOR_CLONES
void scale_narrow_run(const c10::Half* src, c10::Half* dst, int64_t n, float scale, const uint32_t* lanes) {
  scale_narrow(src, dst, n, scale, lanes);
}

DROPBLOCK_VECTOR_CLONES
void scale_narrow_run(const c10::BFloat16* src, c10::BFloat16* dst, int64_t n, float scale, const uint32_t* lanes) {
  scale_narrow(src, dst, n, scale, lanes);
}

// dst[j] = src[j] * scale for a contiguous run of n elements, all kept.
template <typename scalar_t, typename acc_t>
void scale_run(const scalar_t* src, scalar_t* dst, int64_t n, acc_t scale) {
  if constexpr (sizeof(scalar_t) == 2) {
    scale_narrow_run(src, dst, n, static_cast<float>(scale), nullptr);
  } else {
    for (int64_t j = 0; j < n; ++j) {
      dst[j] = static_cast<scalar_t>(static_cast<acc_t>(src[j]) * scale);
    }
  }
}

// out[i] = keep(bit0 + i) ? in[i] * scale : 0 for a run of n elements with the given strides.
// Dropped elements are exactly zero whatever the input holds there (inf and NaN included).
template <typename scalar_t, typename acc_t>
void apply_run(const scalar_t* in, int64_t in_stride, scalar_t* out, int64_t out_stride, int64_t n,
               const uint64_t* mask, int64_t bit0, acc_t scale) {
  using lane_t = typename LaneType<sizeof(scalar_t)>::type;
  static const LaneMasks<lane_t> table;
  const bool unit = in_stride == 1 && out_stride == 1;
  int64_t i = 0;
  while (i < n) {
    const int64_t bit = bit0 + i;
    const int offset = static_cast<int>(bit & 63);
    const int64_t len = std::min<int64_t>(64 - offset, n - i);
    const uint64_t all = low_bits(len);
    const uint64_t word = (mask[bit >> 6] >> offset) & all;
    const scalar_t* src = in + i * in_stride;
    scalar_t* dst = out + i * out_stride;
    if (!unit) {
      for (int64_t j = 0; j < len; ++j) {
        const bool keep = (word >> j) & 1u;
        dst[j * out_stride] =
            keep ? static_cast<scalar_t>(static_cast<acc_t>(src[j * in_stride]) * scale) : scalar_t(0);
      }
    } else if (word == 0) {
      std::fill(dst, dst + len, scalar_t(0));
    } else if (word == all) {
      scale_run(src, dst, len, scale);
    } else if constexpr (sizeof(scalar_t) == 2) {
      static const LaneMasks<uint32_t> float_lanes;
      alignas(64) uint32_t lanes[64];
      for (int b = 0; b < 8; ++b) {
        std::memcpy(lanes + 8 * b, float_lanes.lanes[(word >> (8 * b)) & 0xFF], sizeof(float_lanes.lanes[0]));
      }
      scale_narrow_run(src, dst, len, static_cast<float>(scale), lanes);
    } else {
      alignas(64) lane_t lanes[64];
      for (int b = 0; b < 8; ++b) {
        std::memcpy(lanes + 8 * b, table.lanes[(word >> (8 * b)) & 0xFF], sizeof(table.lanes[0]));
      }
      for (int64_t j = 0; j < len; ++j) {
        const scalar_t v = static_cast<scalar_t>(static_cast<acc_t>(src[j]) * scale);
        lane_t v_bits;
        std::memcpy(&v_bits, &v, sizeof(v));
        v_bits &= lanes[j];
        std::memcpy(dst + j, &v_bits, sizeof(v));
      }
    }
    i += len;
  }
}

// Strides of the (padded) spatial dimensions, and whether they lay the plane out row-major.
struct PlaneLayout {
  int64_t stride[kMaxSpatialDims];
  bool row_major;
};

// All ones where bit `shift` of `keep` is set, else zero: the bit moved to the sign, then spread.
inline int32_t keep_lane(uint32_t keep, int shift) {
  return static_cast<int32_t>(keep << (31 - shift)) >> 31;
}

// A channels-last tile of `positions` (<= kTilePositions) positions of C contiguous channels each:
// dst[k * C + c] = bit k % 32 of keep[(k / 32) * C + c] ? src[k * C + c] * scale : 0. Typed stores
// and no captured references, so that the channel loop vectorises (4- and 8-byte elements).
template <typename scalar_t>
inline void keep_tile_loop(const scalar_t* src, scalar_t* dst, int64_t positions, int64_t C, const uint32_t* keep,
                           scalar_t scale) {
  using lane_t = typename LaneType<sizeof(scalar_t)>::type;
  using signed_lane_t = std::make_signed_t<lane_t>;
  for (int64_t k = 0; k < positions; ++k) {
    const uint32_t* bits = keep + (k >> 5) * C;
    const int shift = static_cast<int>(k & 31);
    const scalar_t* in = src + k * C;
    scalar_t* out = dst + k * C;
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t v = in[c] * scale;
      lane_t v_bits;
      std::memcpy(&v_bits, &v, sizeof(v));
      v_bits &= static_cast<lane_t>(static_cast<signed_lane_t>(keep_lane(bits[c], shift)));
      scalar_t result;
      std::memcpy(&result, &v_bits, sizeof(result));
      out[c] = result;
    }
  }
}

// The vectorised clones (target_clones takes functions, not templates): the channel loop is most
// of a channels-last apply, and wider vectors keep it as fast as the contiguous pass.
DROPBLOCK_VECTOR_CLONES
void keep_tile_run(const float* src, float* dst, int64_t positions, int64_t C, const uint32_t* keep, float scale) {
  keep_tile_loop(src, dst, positions, C, keep, scale);
}

DROPBLOCK_VECTOR_CLONES
void keep_tile_run(const double* src, double* dst, int64_t positions, int64_t C, const uint32_t* keep,
                   double scale) {
  keep_tile_loop(src, dst, positions, C, keep, scale);
}

// 16-bit elements: the keep lanes of a position, then the vectorised float conversion.
template <typename half_t>
void keep_tile_run(const half_t* src, half_t* dst, int64_t positions, int64_t C, const uint32_t* keep, float scale) {
  uint32_t lanes[kNarrowBatch];
  for (int64_t k = 0; k < positions; ++k) {
    const uint32_t* bits = keep + (k >> 5) * C;
    const int shift = static_cast<int>(k & 31);
    for (int64_t c0 = 0; c0 < C; c0 += kNarrowBatch) {
      const int64_t m = std::min<int64_t>(kNarrowBatch, C - c0);
      for (int64_t j = 0; j < m; ++j) {
        lanes[j] = static_cast<uint32_t>(keep_lane(bits[c0 + j], shift));
      }
      scale_narrow_run(src + k * C + c0, dst + k * C + c0, m, scale, lanes);
    }
  }
}

// Positions per channels-last tile at most: 8 mask words of each channel, so that a tile reads one
// cache line of every channel's mask row at once (64-position tiles revisited each line 8 times, after
// the tile's data had pushed it out of L1: the gather cost as much as the element loop).
constexpr int64_t kTilePositions = 512;

// Channels-last data: a run of C channels is contiguous in memory but its keep bits lie S apart
// in the mask. A tile of up to kTilePositions positions of one sample first gathers each channel's
// keep bits for those positions (as 32-bit halves, [k / 32][c], so that the element loop over the
// channels vectorises), then walks the tile in memory order.
template <typename scalar_t, typename acc_t>
void apply_channels_last(const scalar_t* in, scalar_t* out, int64_t N, int64_t C, int64_t S, const uint64_t* mask,
                         bool shared_channels, acc_t scale) {
  // Shorter tiles (down to one mask word per channel) where long ones would leave threads idle.
  int64_t positions = kTilePositions;
  while (positions > 64 && N * ((S + positions - 1) / positions) < 4 * at::get_num_threads()) {
    positions /= 2;
  }
  const int64_t tiles_per_sample = (S + positions - 1) / positions;
  const int64_t mask_rows = shared_channels ? 1 : C;
  parallel_over(N * tiles_per_sample, N * C * S, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> halves(static_cast<size_t>(positions / 32 * mask_rows));
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t n = tile / tiles_per_sample, s0 = (tile - n * tiles_per_sample) * positions;
      const int64_t len = std::min<int64_t>(positions, S - s0);
      for (int64_t c = 0; c < mask_rows; ++c) {
        const int64_t first_bit = (n * mask_rows + c) * S + s0;
        for (int64_t k = 0; k < len; k += 64) {
          const uint64_t row = keep_bits(mask, first_bit + k, std::min<int64_t>(64, len - k));
          halves[(k >> 5) * mask_rows + c] = static_cast<uint32_t>(row);
          halves[((k >> 5) + 1) * mask_rows + c] = static_cast<uint32_t>(row >> 32);
        }
      }
      const int64_t first = (n * S + s0) * C;
      if (!shared_channels) {
        keep_tile_run(in + first, out + first, len, C, halves.data(), scale);
        continue;
      }
      for (int64_t k = 0; k < len; ++k) {
        const int64_t offset = first + k * C;
        if ((halves[k >> 5] >> (k & 31)) & 1u) {
          scale_run(in + offset, out + offset, C, scale);
        } else {
          std::fill(out + offset, out + offset + C, scalar_t(0));
        }
      }
    }
  });
}

PlaneLayout plane_layout(const at::Tensor& t) {
  PlaneLayout layout{};
  const int64_t pad = kMaxSpatialDims - (t.dim() - 2);
  for (int d = 0; d < kMaxSpatialDims; ++d) {
    layout.stride[d] = d < pad ? 0 : t.stride(2 + d - pad);
  }
  int64_t expected = 1;
  layout.row_major = true;
  for (int d = kMaxSpatialDims - 1; d >= 0; --d) {
    const int64_t size = d < pad ? 1 : t.size(2 + d - pad);
    if (size != 1 && layout.stride[d] != expected) {
      layout.row_major = false;
    }
    expected *= size;
  }
  return layout;
}

void apply_into(const at::Tensor& input, at::Tensor& output, const at::Tensor& mask, const at::Tensor& scale_tensor,
                bool shared_channels) {
  if (input.numel() == 0) {
    return;
  }
  const at::Tensor words = word_aligned(mask);
  const uint64_t* bits = reinterpret_cast<const uint64_t*>(words.const_data_ptr<uint8_t>());
  const double scale = scale_tensor.item<double>();
  const int64_t N = input.size(0), C = input.size(1);
  const int64_t S = input.numel() / (N * C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "drop_block_apply_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t s = static_cast<acc_t>(scale);
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    if (!shared_channels && input.is_contiguous() && output.is_contiguous()) {
      // Logical order is memory order: one run over the whole tensor, split at word edges.
      const int64_t numel = input.numel();
      parallel_over(numel / 64 + (numel % 64 != 0 ? 1 : 0), numel, [&](int64_t begin, int64_t end) {
        const int64_t first = begin * 64, last = std::min(end * 64, numel);
        apply_run<scalar_t, acc_t>(in + first, 1, out + first, 1, last - first, bits, first, s);
      });
      return;
    }
    if (is_channels_innermost(static_cast<int>(input.dim()), input.sizes().data(), input.strides().data()) &&
        is_channels_innermost(static_cast<int>(output.dim()), output.sizes().data(), output.strides().data())) {
      apply_channels_last<scalar_t, acc_t>(in, out, N, C, S, bits, shared_channels, s);
      return;
    }
    const PlaneLayout in_layout = plane_layout(input), out_layout = plane_layout(output);
    const int64_t pad = kMaxSpatialDims - (input.dim() - 2);
    int64_t size[kMaxSpatialDims];
    for (int d = 0; d < kMaxSpatialDims; ++d) {
      size[d] = d < pad ? 1 : input.size(2 + d - pad);
    }
    const bool plane_is_one_run = in_layout.row_major && out_layout.row_major;
    parallel_over(N * C, N * C * S, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t n = plane / C, c = plane % C;
        const scalar_t* in_plane = in + n * input.stride(0) + c * input.stride(1);
        scalar_t* out_plane = out + n * output.stride(0) + c * output.stride(1);
        const int64_t bit_plane = (shared_channels ? n : plane) * S;
        if (plane_is_one_run) {
          apply_run<scalar_t, acc_t>(in_plane, 1, out_plane, 1, S, bits, bit_plane, s);
          continue;
        }
        for (int64_t z = 0; z < size[0]; ++z) {
          for (int64_t y = 0; y < size[1]; ++y) {
            apply_run<scalar_t, acc_t>(in_plane + z * in_layout.stride[0] + y * in_layout.stride[1],
                                       in_layout.stride[2],
                                       out_plane + z * out_layout.stride[0] + y * out_layout.stride[1],
                                       out_layout.stride[2], size[2], bits,
                                       bit_plane + (z * size[1] + y) * size[2], s);
          }
        }
      }
    });
  });
}

at::Tensor drop_block_apply_cpu(const at::Tensor& input, const at::Tensor& mask, const at::Tensor& scale,
                                bool shared_channels) {
  check_apply_args(input, mask, scale, shared_channels);
  at::Tensor output = at::empty_like(input);
  apply_into(input, output, mask, scale, shared_channels);
  return output;
}

void drop_block_apply_inplace_cpu(at::Tensor& input, const at::Tensor& mask, const at::Tensor& scale,
                                  bool shared_channels) {
  check_apply_args(input, mask, scale, shared_channels);
  check_inplace_args(input, mask, scale);
  apply_into(input, input, mask, scale, shared_channels);
}

}  // namespace

TORCH_LIBRARY_IMPL(dropblock_cuda, CPU, m) {
  m.impl("drop_block_mask", &drop_block_mask_cpu);
  m.impl("drop_block_apply", &drop_block_apply_cpu);
  m.impl("drop_block_apply_", &drop_block_apply_inplace_cpu);
}

}  // namespace dropblock
