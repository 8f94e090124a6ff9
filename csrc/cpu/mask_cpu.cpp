// CPU kernel of the mask op: the packed keep mask and its scale (no data touched).
#include <algorithm>
#include <cstring>
#include <tuple>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../mask_logic.h"
#include "../op_args.h"
#include "cpu_parallel.h"

namespace dropblock {
namespace {

// Logical indices per unit of parallel work in the mask (a multiple of 64): small enough to balance
// two to a few dozen threads, large enough that per-range set-up and edge atomics stay negligible.
constexpr int64_t kRangeElements = int64_t(1) << 15;
static_assert(kRangeElements % kChunk == 0, "mask ranges hold whole chunks (and so whole words)");

// Chunks drawn per batch: independent Philox calls the compiler can vectorise.
constexpr int kChunkBatch = 128;

// Philox4x32-10 of the counters (c0[i], c1[i], c2[i], c3[i]), i < m, in place: the batched twin
// of philox4x32_10, in a form the compiler vectorises.
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

// The seeds of chunks first .. first + n - 1 (n <= kChunkBatch) into seeds[0 .. n): the batched
// twin of seeds_of_chunk. Every chunk's first call at once; then, round after round, the further
// calls of the chunks whose positions are not all drawn yet (none at DropBlock's usual rates, about
// ten rounds at gamma = 1/2).
DROPBLOCK_VECTOR_CLONES
void seeds_of_chunks(uint64_t first, int n, PhiloxKey key, const uint64_t* bounds, CountTable table, ChunkBits* seeds) {
  uint32_t c0[kChunkBatch], c1[kChunkBatch], c2[kChunkBatch], c3[kChunkBatch];
  for (int i = 0; i < n; ++i) {
    const uint64_t chunk = first + static_cast<uint64_t>(i);
    c0[i] = static_cast<uint32_t>(chunk);
    c1[i] = static_cast<uint32_t>(chunk >> 32);
    c2[i] = 0;  // call 0
    c3[i] = 0;
  }
  philox_batch(c0, c1, c2, c3, n, key);
  int counts[kChunkBatch];
  PositionDraw draws[kChunkBatch];
  int pending[kChunkBatch];
  int waiting = 0;
  for (int i = 0; i < n; ++i) {
    draws[i] = start_position_draw(Philox4{{c0[i], c1[i], c2[i], c3[i]}}, bounds, table, counts[i]);
    if (!draws[i].done()) {
      pending[waiting++] = i;
    }
  }
  if (waiting == 0) {  // DropBlock's rates: every chunk's positions came from its first call
    for (int i = 0; i < n; ++i) {
      seeds[i] = finish_position_draw(draws[i], counts[i]);
    }
    return;
  }
  // Chunks that need many more candidates (dense seeds, e.g. block size 1 at p = 1/2: about 180
  // bytes each) go on with a byte per position, which costs a couple of cycles a candidate where
  // the bit set's read-modify-write chain costs tens; filling and folding the bytes costs about
  // as much as 30 candidates, so the others stay with the bit set.
  constexpr int kDenseNeed = 48;
  static thread_local uint8_t seen[kChunkBatch][kChunk];
  for (int j = 0; j < waiting; ++j) {
    if (draws[pending[j]].need <= kDenseNeed) {
      continue;
    }
    const ChunkBits& s = draws[pending[j]].chosen;
    const uint64_t words[4] = {s.w0, s.w1, s.w2, s.w3};
    for (int b = 0; b < kChunk; ++b) {
      seen[j][b] = static_cast<uint8_t>((words[b >> 6] >> (b & 63)) & 1u);
    }
  }
  int slot[kChunkBatch];  // seen[] row of each pending chunk
  for (int j = 0; j < waiting; ++j) {
    slot[j] = j;
  }
  for (uint32_t call = 1; waiting > 0; ++call) {
    for (int j = 0; j < waiting; ++j) {
      const uint64_t chunk = first + static_cast<uint64_t>(pending[j]);
      c0[j] = static_cast<uint32_t>(chunk);
      c1[j] = static_cast<uint32_t>(chunk >> 32);
      c2[j] = call;
      c3[j] = 0;
    }
    philox_batch(c0, c1, c2, c3, waiting, key);
    int still = 0;
    for (int j = 0; j < waiting; ++j) {
      PositionDraw& d = draws[pending[j]];
      if (d.need <= kDenseNeed) {
        d.take(c0[j]);
        d.take(c1[j]);
        d.take(c2[j]);
        d.take(c3[j]);
        if (!d.done()) {
          pending[still] = pending[j];
          slot[still] = slot[j];
          ++still;
        }
        continue;
      }
      uint8_t* flags = seen[slot[j]];
      const uint32_t words[4] = {c0[j], c1[j], c2[j], c3[j]};
      int have = d.have;
      for (int b = 0; b < 16 && have < d.need; ++b) {
        const uint32_t position = (words[b >> 2] >> (8 * (b & 3))) & 0xFFu;
        have += 1 - flags[position];
        flags[position] = 1;
      }
      d.have = have;
      if (!d.done()) {
        pending[still] = pending[j];
        slot[still] = slot[j];
        ++still;
      } else {
        uint64_t w[4] = {0, 0, 0, 0};
        for (int b = 0; b < kChunk; ++b) {
          w[b >> 6] |= static_cast<uint64_t>(flags[b]) << (b & 63);
        }
        d.chosen = {w[0], w[1], w[2], w[3]};
      }
    }
    waiting = still;
  }
  for (int i = 0; i < n; ++i) {
    seeds[i] = finish_position_draw(draws[i], counts[i]);
  }
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

// Clears bits with plain writes: for the chunks whose blocks stay inside the words a range owns.
// Like the other clears it touches no word for empty bits: a row pattern's second word may lie
// past the mask's last word when none of its bits do (AddressSanitizer caught the write).
struct PlainClear {
  uint64_t* words;
  void operator()(int64_t w, uint64_t bits) const {
    if (bits != 0) {
      words[w] &= ~bits;
    }
  }
};

// Where a block fits, for planes of at most kMaxPatternPlane positions: bit k says whether
// position k % P of a plane (P positions) is one, for k < P + kChunk, so that a chunk starting at
// plane offset o finds the positions where its seeds count in bits [o, o + 256) at once. Small
// maps gain most: a 7x7 plane with a 7x7 block has one such position, and a chunk spans 37 rows.
class ValidPattern {
 public:
  static constexpr int64_t kMaxPatternPlane = int64_t(1) << 16;

  explicit ValidPattern(const SeedGrid& s) : plane_(s.plane_numel) {
    if (plane_ > kMaxPatternPlane || s.total == 0) {
      return;
    }
    words_.assign(static_cast<size_t>((plane_ + kChunk) / 64 + 2), 0);
    for (int64_t z = 0; z < s.extent[0]; ++z) {
      for (int64_t y = 0; y < s.extent[1]; ++y) {
        const int64_t start = (z * s.size[1] + y) * s.size[2];
        for (int64_t x = 0; x < s.extent[2]; ++x) {
          set(start + x);
        }
      }
    }
    for (int64_t k = plane_; k < plane_ + kChunk; ++k) {  // the next plane's start, repeated
      if (get(k - plane_)) {
        set(k);
      }
    }
  }

  bool enabled() const { return !words_.empty(); }

  // Bits [offset, offset + 256): offset < P.
  ChunkBits at(int64_t offset) const {
    return {bits64(offset), bits64(offset + 64), bits64(offset + 128), bits64(offset + 192)};
  }

 private:
  void set(int64_t k) { words_[k >> 6] |= uint64_t(1) << (k & 63); }
  bool get(int64_t k) const { return (words_[k >> 6] >> (k & 63)) & 1u; }
  uint64_t bits64(int64_t b) const {
    const int64_t w = b >> 6;
    const int shift = static_cast<int>(b & 63);
    return shift == 0 ? words_[w] : (words_[w] >> shift) | (words_[w + 1] << (64 - shift));
  }

  int64_t plane_;
  std::vector<uint64_t> words_;
};

// Draws and paints the seeds of one contiguous range [first, last) of logical indices (first a
// multiple of kRangeElements, last too unless it ends the mask, so chunks and mask words never
// straddle two ranges) on a mask of all ones. Blocks reach past their range by up to
// block_reach() indices: the words within that reach of the range's start may also be painted by
// the range before, and are cleared atomically.
class RangePainter {
 public:
  RangePainter(const SeedGrid& grid, PhiloxKey key, const uint64_t* bounds, CountTable table, const ValidPattern& valid,
               uint64_t* words)
      : grid_(grid), key_(key), bounds_(bounds), table_(table), valid_(valid), words_(words) {}

  void paint(int64_t first, int64_t last) {
    const int64_t reach = block_reach(grid_);
    const OwnedClear clear{words_, reach > 0 ? (first + reach - 1) >> 6 : (first >> 6) - 1, last >> 6};
    const PlainClear plain{words_};
    const int64_t end_chunk = (last + kChunk - 1) / kChunk;
    for (int64_t chunk = first / kChunk; chunk < end_chunk; chunk += kChunkBatch) {
      const int n = static_cast<int>(std::min<int64_t>(kChunkBatch, end_chunk - chunk));
      seeds_of_chunks(static_cast<uint64_t>(chunk), n, key_, bounds_, table_, seeds_);
      for (int i = 0; i < n; ++i) {
        if (!any(seeds_[i])) {
          continue;
        }
        // The chunk's blocks cover at most its indices and `reach` more: owned words only, or not.
        const int64_t g0 = (chunk + i) * kChunk;
        if ((g0 >> 6) > clear.shared_lo && ((g0 + kChunk - 1 + reach) >> 6) < clear.shared_hi) {
          paint_chunk(chunk + i, seeds_[i], plain);
        } else {
          paint_chunk(chunk + i, seeds_[i], clear);
        }
      }
    }
  }

 private:
  // The blocks of one chunk's seeds: those where a block fits picked by the plane's pattern and
  // cleared one by one when few, else clear_chunk_blocks (which finds them itself).
  template <typename Clear>
  void paint_chunk(int64_t chunk, ChunkBits seeds, const Clear& clear) {
    const int64_t g0 = chunk * kChunk;
    if (!valid_.enabled()) {
      clear_chunk_blocks(grid_, static_cast<uint64_t>(chunk), seeds, clear);
      return;
    }
    const int64_t offset =
        grid_.small ? g0 - static_cast<int64_t>(divide(grid_.by_plane, static_cast<uint64_t>(g0))) * grid_.plane_numel
                    : g0 % grid_.plane_numel;
    const ChunkBits fits = valid_.at(offset);
    const int64_t n = std::min<int64_t>(kChunk, grid_.total - g0);  // positions past the end never count
    uint64_t words[4] = {seeds.w0 & fits.w0, seeds.w1 & fits.w1, seeds.w2 & fits.w2, seeds.w3 & fits.w3};
    for (int q = 0; q < 4; ++q) {
      words[q] &= low_bits(std::max<int64_t>(0, std::min<int64_t>(64, n - 64 * q)));
    }
    const int count = popcount64(words[0]) + popcount64(words[1]) + popcount64(words[2]) + popcount64(words[3]);
    if (count > 8) {
      clear_chunk_blocks(grid_, static_cast<uint64_t>(chunk), ChunkBits{words[0], words[1], words[2], words[3]}, clear);
      return;
    }
    for (int q = 0; q < 4; ++q) {
      for (uint64_t v = words[q]; v != 0; v &= v - 1) {
        clear_one_block(grid_, g0 + 64 * q + lowest_bit64(v), clear);
      }
    }
  }

  SeedGrid grid_;
  PhiloxKey key_;
  const uint64_t* bounds_;
  CountTable table_;
  const ValidPattern& valid_;
  uint64_t* words_;
  ChunkBits seeds_[kChunkBatch];
};

std::tuple<at::Tensor, at::Tensor> drop_block_mask_cpu(const at::Tensor& input, const at::Tensor& seed,
                                                       const at::Tensor& p, c10::IntArrayRef block_size, double eps,
                                                       bool shared_channels) {
  const MaskGeometry g = make_mask_geometry(input, block_size, shared_channels);
  const double drop_probability = *check_mask_args(input, seed, p, eps);  // the input's device is the CPU
  const PhiloxKey key = make_key(static_cast<uint64_t>(seed.item<int64_t>()));
  uint64_t bounds[kChunk];
  const CountTable table = make_count_table(seed_rate(drop_probability, gamma_factor(g)), bounds);

  at::Tensor mask = at::empty({packed_mask_bytes(g.planes * g.plane_numel())}, input.options().dtype(at::kByte));
  uint64_t* words = reinterpret_cast<uint64_t*>(mask.data_ptr<uint8_t>());
  const int64_t nwords = mask.numel() / 8;
  const SeedGrid grid = make_seed_grid(g);
  // All ones first (but the padding past the last element), then every range clears its blocks.
  std::fill(words, words + nwords, ~uint64_t(0));
  if (nwords > 0 && grid.total % 64 != 0) {
    words[nwords - 1] = low_bits(grid.total % 64);
  }
  if (!never_seeds(table) && grid.total > 0) {
    const int64_t ranges = grid.total / kRangeElements + (grid.total % kRangeElements != 0 ? 1 : 0);
    const ValidPattern valid(grid);
    parallel_over(ranges, grid.total, [&](int64_t begin, int64_t end) {
      RangePainter painter(grid, key, bounds, table, valid, words);
      for (int64_t r = begin; r < end; ++r) {
        painter.paint(r * kRangeElements, std::min((r + 1) * kRangeElements, grid.total));
      }
    });
  }

  static_assert((int64_t(1) << 14) * 64 >= kGrainElements, "the count goes parallel later than torch");
  const int64_t kept_bits = at::parallel_reduce(
      0, nwords, 1 << 14, int64_t(0),
      [&](int64_t begin, int64_t end, int64_t acc) { return acc + count_bits(words + begin, end - begin); },
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
