// CPU kernel of the mask op: the packed keep mask and its scale (no data touched).
#include <algorithm>
#include <cstring>
#include <tuple>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../mask_logic.h"
#include "../mask_params.h"
#include "cpu_parallel.h"

namespace dropblock {
namespace {

// Logical indices per unit of parallel work in the mask (a multiple of 64): small enough to balance
// two to a few dozen threads, large enough that per-range set-up and edge atomics stay negligible.
constexpr int64_t kChunkElements = int64_t(1) << 15;
static_assert(kChunkElements % 64 == 0, "mask ranges hold whole words");

// Philox groups drawn per batch: independent iterations the compiler can vectorise.
constexpr int kPhiloxBatch = 128;

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

}  // namespace

TORCH_LIBRARY_IMPL(dropblock_cuda, CPU, m) {
  m.impl("drop_block_mask", &drop_block_mask_cpu);
}

}  // namespace dropblock
