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
// two to a few dozen threads, large enough that per-range set-up and the chunks drawn again stay
// negligible (range_elements grows it with the block reach).
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

// The seed counts K of n chunks whose first words are u[0 .. n): seed_count for a batch. Short
// tables (DropBlock's rates: about 10 bounds at gamma = 0.0026, 60 at 0.1) are compared whole,
// which vectorises across the chunks; long ones are searched without branches in bounds padded
// with 2^32 to kChunk entries. Either way no branch depends on the random words (the scalar
// search mispredicted about once a chunk).
inline void seed_counts(const uint32_t* u, int n, const uint64_t* padded_bounds, CountTable t, int* count) {
  for (int i = 0; i < n; ++i) {
    count[i] = 0;
  }
  if (t.size <= 64) {
    for (int k = 0; k < t.size; ++k) {
      const uint32_t bound = static_cast<uint32_t>(padded_bounds[k]);  // below 2^32 while k < size
      for (int i = 0; i < n; ++i) {
        count[i] += u[i] >= bound ? 1 : 0;
      }
    }
  } else {
    for (int i = 0; i < n; ++i) {
      int below = 0;  // bounds[0 .. below) <= u: 8 halving steps reach 255, the last compare 256
      for (int step = kChunk / 2; step > 0; step >>= 1) {
        below += padded_bounds[below + step - 1] <= u[i] ? step : 0;
      }
      count[i] = below + (padded_bounds[below] <= u[i] ? 1 : 0);
    }
  }
  if (t.mirrored) {
    for (int i = 0; i < n; ++i) {
      count[i] = kChunk - count[i];
    }
  }
}

// Candidate j of a chunk's call: byte j % 4 (low byte first) of words[j / 4].
inline uint32_t candidate(const uint32_t* words, int j) {
  return (words[j >> 2] >> (8 * (j & 3))) & 0xFFu;
}

// Position b into the set `chosen`, counted in `have` if new. A repeat costs no branch.
inline void take_candidate(uint32_t b, uint64_t* chosen, int& have) {
  const uint64_t bit = uint64_t(1) << (b & 63);
  uint64_t& w = chosen[b >> 6];
  have += (w & bit) == 0 ? 1 : 0;
  w |= bit;
}

// The host form of PositionDraw::take for a draw kept in arrays: the candidates words[from .. to)
// in order into `chosen` until `have` reaches `need`.
inline void take_candidates(const uint32_t* words, int from, int to, uint64_t* chosen, int& have, int need) {
  for (int j = from; j < to && have < need; ++j) {
    take_candidate(candidate(words, j), chosen, have);
  }
}

// The same for the four candidates of one word, by constant shifts: in the further calls' loop,
// indexing the words instead made the mask of 2x2048x7x7 block 7 (25 positions a chunk) 10% slower.
inline void take_word(uint32_t word, uint64_t* chosen, int& have, int need) {
  for (int j = 0; j < 4 && have < need; ++j) {
    take_candidate((word >> (8 * j)) & 0xFFu, chosen, have);
  }
}

// The 256 bits of a chunk's set as 256 bytes of 0 or 1, and back, eight at a time: a byte's bits
// spread by a table, eight bytes gathered by one multiply (byte k's low bit lands on bit 56 + k).
struct ByteSpread {
  uint64_t of[256];
  constexpr ByteSpread() : of() {
    for (int x = 0; x < 256; ++x) {
      for (int k = 0; k < 8; ++k) {
        of[x] |= static_cast<uint64_t>((x >> k) & 1) << (8 * k);
      }
    }
  }
};
constexpr ByteSpread kByteSpread{};

inline void bits_to_bytes(const uint64_t* bits, uint8_t* bytes) {
  for (int k = 0; k < kChunk / 8; ++k) {
    const uint64_t spread = kByteSpread.of[(bits[k >> 3] >> (8 * (k & 7))) & 0xFFu];
    std::memcpy(bytes + 8 * k, &spread, 8);
  }
}

inline void bytes_to_bits(const uint8_t* bytes, uint64_t* bits) {
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "byte k of a loaded word is flag k");
  for (int q = 0; q < 4; ++q) {
    uint64_t w = 0;
    for (int k = 0; k < 8; ++k) {
      uint64_t flags;
      std::memcpy(&flags, bytes + 64 * q + 8 * k, 8);
      w |= ((flags * 0x0102040810204080ull) >> 56) << (8 * k);
    }
    bits[q] = w;
  }
}

// The further calls (chunk, 1), (chunk, 2), ... of the chunks pending[0 .. waiting) that their first
// call left short of candidates, batched round by round; c0..c3 are scratch. Chunks that need many
// more (dense seeds, e.g. block size 1 at p = 1/2: about 180 candidates each) go on with a byte per
// position, which costs a couple of cycles a candidate where the bit set's read-modify-write chain
// costs tens; filling and folding the bytes costs about as much as 30 candidates, so the others stay
// with the bit set.
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
inline void draw_further_positions(uint64_t first, PhiloxKey key, int* pending, int waiting, uint64_t (*chosen)[4],
                                   int* have, const int* need, uint32_t* c0, uint32_t* c1, uint32_t* c2, uint32_t* c3) {
  constexpr int kDenseNeed = 48;
  static thread_local uint8_t seen[kChunkBatch][kChunk];
  int slot[kChunkBatch];  // seen[] row of each pending chunk
  for (int j = 0; j < waiting; ++j) {
    slot[j] = j;
    if (need[pending[j]] > kDenseNeed) {
      bits_to_bytes(chosen[pending[j]], seen[j]);
    }
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
      const int i = pending[j];
      const int m = need[i];
      int h = have[i];
      const uint32_t words[4] = {c0[j], c1[j], c2[j], c3[j]};
      if (m <= kDenseNeed) {
        for (const uint32_t word : words) {
          take_word(word, chosen[i], h, m);
        }
      } else {
        uint8_t* flags = seen[slot[j]];
        for (int b = 0; b < 16 && h < m; ++b) {
          const uint32_t position = candidate(words, b);
          h += 1 - flags[position];
          flags[position] = 1;
        }
        if (h >= m) {
          bytes_to_bits(flags, chosen[i]);
        }
      }
      have[i] = h;
      if (h < m) {
        pending[still] = i;
        slot[still] = slot[j];
        ++still;
      }
    }
    waiting = still;
  }
}

// The seeds of chunks first .. first + n - 1 (n <= kChunkBatch), the batched twin of
// seeds_of_chunk, for the chunks that hold any: returns how many do, their offsets from `first` in
// which[0 ..) (ascending) and their seeds in seeds[0 ..). Every chunk's first call at once; then,
// round after round, the further calls of the chunks whose positions are not all drawn yet (none at
// DropBlock's usual rates, about ten rounds at gamma = 1/2). Chunks without seeds (about half of
// them at DropBlock's rates) cost their first call and count only. The draws live in arrays, never
// in structs copied whole: a struct written field by field and read back as one vector stalled on
// store forwarding (a third of the draw's time once).
DROPBLOCK_VECTOR_CLONES
int seeds_of_chunks(uint64_t first, int n, PhiloxKey key, const uint64_t* padded_bounds, CountTable table, int* which,
                    ChunkBits* seeds) {
  alignas(64) uint32_t c0[kChunkBatch], c1[kChunkBatch], c2[kChunkBatch], c3[kChunkBatch];
  for (int i = 0; i < n; ++i) {
    const uint64_t chunk = first + static_cast<uint64_t>(i);
    c0[i] = static_cast<uint32_t>(chunk);
    c1[i] = static_cast<uint32_t>(chunk >> 32);
    c2[i] = 0;  // call 0
    c3[i] = 0;
  }
  philox_batch(c0, c1, c2, c3, n, key);
  int counts[kChunkBatch];
  seed_counts(c0, n, padded_bounds, table, counts);
  // The chunks that need positions, in two lists: those that need one (most of them at DropBlock's
  // rates: K = 1, or 255) take their first candidate without a test, the others their first
  // min(need, 12) candidates, then look for repeats. The lists are gathered without a branch:
  // branching on each chunk's count mispredicted about once a chunk, where half the chunks need no
  // position and most others one; a counting sort's counters chained through memory and cost more.
  constexpr int kFirstCandidates = 12;  // bytes of words 1..3 of the first call
  int need[kChunkBatch];
  int ones[kChunkBatch], more[kChunkBatch];
  for (int i = 0; i < n; ++i) {
    need[i] = counts[i] <= kChunk / 2 ? counts[i] : kChunk - counts[i];
  }
  int with_seeds = 0;  // chunks with K > 0: those that need positions, and K = 256 (need 0)
  for (int i = 0; i < n; ++i) {
    which[with_seeds] = i;
    with_seeds += counts[i] > 0 ? 1 : 0;
  }
  int one = 0, many = 0;  // from the chunks with seeds: K = 256 needs no position and joins neither
  for (int t = 0; t < with_seeds; ++t) {
    ones[one] = which[t];
    one += need[which[t]] == 1 ? 1 : 0;
  }
  for (int t = 0; t < with_seeds; ++t) {
    more[many] = which[t];
    many += need[which[t]] > 1 ? 1 : 0;
  }
  uint64_t chosen[kChunkBatch][4];  // of the chunks with seeds only
  int have[kChunkBatch];
  for (int t = 0; t < with_seeds; ++t) {
    const int i = which[t];
    chosen[i][0] = chosen[i][1] = chosen[i][2] = chosen[i][3] = 0;
    have[i] = 0;
  }
  for (int k = 0; k < one; ++k) {
    const int i = ones[k];
    const uint32_t b = c1[i] & 0xFFu;
    chosen[i][b >> 6] = uint64_t(1) << (b & 63);
  }
  int pending[kChunkBatch];
  int waiting = 0;
  for (int k = 0; k < many; ++k) {
    const int i = more[k];
    const int taken = std::min(need[i], kFirstCandidates);  // candidates set before looking for repeats
    const uint32_t words[3] = {c1[i], c2[i], c3[i]};
    uint64_t* w = chosen[i];
    for (int j = 0; j < taken; ++j) {
      const uint32_t b = candidate(words, j);
      w[b >> 6] |= uint64_t(1) << (b & 63);
    }
    int h = popcount64(w[0]) + popcount64(w[1]) + popcount64(w[2]) + popcount64(w[3]);
    if (h < need[i]) {  // a repeat among the candidates set (rare), or more needed than the call holds
      take_candidates(words, taken, kFirstCandidates, w, h, need[i]);
      have[i] = h;
      if (h < need[i]) {
        pending[waiting++] = i;
      }
    }
  }
  if (waiting > 0) {
    draw_further_positions(first, key, pending, waiting, chosen, have, need, c0, c1, c2, c3);
  }
  for (int t = 0; t < with_seeds; ++t) {
    const int i = which[t];
    const uint64_t flip = counts[i] <= kChunk / 2 ? 0 : ~uint64_t(0);
    seeds[t].w0 = chosen[i][0] ^ flip;
    seeds[t].w1 = chosen[i][1] ^ flip;
    seeds[t].w2 = chosen[i][2] ^ flip;
    seeds[t].w3 = chosen[i][3] ^ flip;
  }
  return with_seeds;
}

// Sets the bits it is given: clear_range's word walk, used to build bit sets.
struct OrInto {
  uint64_t* words;
  void operator()(int64_t w, uint64_t bits) const { words[w] |= bits; }
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
    const OrInto set{words_.data()};
    for (int64_t z = 0; z < s.extent[0]; ++z) {
      for (int64_t y = 0; y < s.extent[1]; ++y) {
        clear_range((z * s.size[1] + y) * s.size[2], s.extent[2], set);  // "clear" = set, here
      }
    }
    for (int64_t k = plane_; k < plane_ + kChunk; ++k) {  // the next plane's start, repeated
      if (get(k - plane_)) {
        words_[k >> 6] |= uint64_t(1) << (k & 63);
      }
    }
  }

  bool enabled() const { return !words_.empty(); }

  // Bits [offset, offset + 256): offset < P.
  ChunkBits at(int64_t offset) const {
    return {bits64(offset), bits64(offset + 64), bits64(offset + 128), bits64(offset + 192)};
  }

 private:
  bool get(int64_t k) const { return (words_[k >> 6] >> (k & 63)) & 1u; }
  uint64_t bits64(int64_t b) const {
    const int64_t w = b >> 6;
    const int shift = static_cast<int>(b & 63);
    return (words_[w] >> shift) | ((words_[w + 1] << 1) << (63 - shift));  // no branch for shift 0
  }

  int64_t plane_;
  std::vector<uint64_t> words_;
};

// The shifts whose union turns a bit map of seeds into the union of their blocks: M |= M << s for
// each s in order. A block is its seed translated by dx < bw, dy * W (dy < bh) and dz * H * W
// (dz < bd); each dimension's translates come in doubling steps ([0, 7) is [0, 1) + 1 = [0, 2),
// + 2 = [0, 4), + 3 = [0, 7)). Exact because blocks never leave their rows, rows their planes.
struct Dilation {
  // Blocks up to kFusedRowSteps doubling steps wide (8 positions) are widened along their rows in
  // one pass (dilate_rows), the other steps one pass each (or_shifted).
  static constexpr int kFusedRowSteps = 3;
  int64_t row_shift[kFusedRowSteps];
  int row_steps = 0;
  int64_t shift[3 * 64];
  int steps = 0;

  explicit Dilation(const SeedGrid& s) {
    const int64_t unit[3] = {s.size[1] * s.size[2], s.size[2], 1};
    const bool fuse_rows = s.block[2] <= (int64_t(1) << kFusedRowSteps);
    for (int d = 0; d < kMaxSpatialDims; ++d) {
      for (int64_t covered = 1; covered < s.block[d];) {
        const int64_t step = std::min(covered, s.block[d] - covered);
        if (d == 2 && fuse_rows) {
          row_shift[row_steps++] = step;
        } else {
          shift[steps++] = step * unit[d];
        }
        covered += step;
      }
    }
  }
};

// One doubling step of a word hi (and lo, the word below it) widened along rows by k < 64 bits.
inline void widen(uint64_t& hi, uint64_t& lo, int64_t k) {
  hi |= (hi << k) | (lo >> (64 - k));
  lo |= lo << k;
}

// dst[w] = src[w] with the steps row_shift[0 .. steps) of Dilation (1 <= steps <= 3, each below
// 64) applied, for w in [from, to); src holds a zero word below `from`. Each word needs only the one
// below it: a block row reaches back at most 7 < 64 positions, and zeros shifted into the lower word
// instead of its own lower neighbour's bits never reach the upper one.
DROPBLOCK_VECTOR_CLONES
void dilate_rows(const uint64_t* __restrict src, uint64_t* __restrict dst, int64_t from, int64_t to,
                 const int64_t* row_shift, int steps) {
  const int64_t k0 = row_shift[0], k1 = steps > 1 ? row_shift[1] : 1, k2 = steps > 2 ? row_shift[2] : 1;
  if (steps == 1) {
    for (int64_t w = from; w < to; ++w) {
      uint64_t hi = src[w], lo = src[w - 1];
      widen(hi, lo, k0);
      dst[w] = hi;
    }
  } else if (steps == 2) {
    for (int64_t w = from; w < to; ++w) {
      uint64_t hi = src[w], lo = src[w - 1];
      widen(hi, lo, k0);
      widen(hi, lo, k1);
      dst[w] = hi;
    }
  } else {
    for (int64_t w = from; w < to; ++w) {
      uint64_t hi = src[w], lo = src[w - 1];
      widen(hi, lo, k0);
      widen(hi, lo, k1);
      widen(hi, lo, k2);
      dst[w] = hi;
    }
  }
}

// dst[w] = src[w] | (src shifted up by `shift` bits)[w] for w in [from, to); src holds zeros for
// at least shift / 64 + 1 words below `from`.
DROPBLOCK_VECTOR_CLONES
void or_shifted(const uint64_t* __restrict src, uint64_t* __restrict dst, int64_t from, int64_t to, int64_t shift) {
  const int64_t a = shift >> 6;
  const int k = static_cast<int>(shift & 63);
  if (k == 0) {
    for (int64_t w = from; w < to; ++w) {
      dst[w] = src[w] | src[w - a];
    }
    return;
  }
  for (int64_t w = from; w < to; ++w) {
    dst[w] = src[w] | (src[w - a] << k) | (src[w - a - 1] >> (64 - k));
  }
}

// words[i] = ~blocks[i] for i < n; returns the number of bits set (the kept elements).
DROPBLOCK_VECTOR_CLONES
int64_t write_keep_words(const uint64_t* __restrict blocks, uint64_t* __restrict words, int64_t n) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    words[i] = ~blocks[i];
    count += __builtin_popcountll(words[i]);
  }
  return count;
}

// The mask of one contiguous range of logical indices [first, last) (first a multiple of the
// range size, last too unless it ends the mask, so chunks and mask words never straddle two
// ranges): its words written once, with no atomics. The seeds whose blocks reach into the range
// sit in [first - block_reach, last), so the range draws the chunks within reach before it again
// (the range before draws them too: the mask is a pure function of the chunk). It sets their
// seeds where a block fits in a bit map, dilates the map into the blocks, and writes the keep
// bits, the complement.
class RangeMasker {
 public:
  RangeMasker(const SeedGrid& grid, PhiloxKey key, const uint64_t* padded_bounds, CountTable table,
              const ValidPattern& valid, const Dilation& dilation, uint64_t* words)
      : grid_(grid),
        key_(key),
        bounds_(padded_bounds),
        table_(table),
        valid_(valid),
        dilation_(dilation),
        reach_(block_reach(grid)),
        pad_(block_reach(grid) / 64 + 2),
        words_(words) {}

  // Writes the range's words and returns how many of its bits are set.
  int64_t mask(int64_t first, int64_t last) {
    const int64_t first_chunk = std::max<int64_t>(0, first - reach_) / kChunk;
    const int64_t end_chunk = (last + kChunk - 1) / kChunk;
    const int64_t base = first_chunk * (kChunk / 64);  // mask word of map word pad_
    const int64_t size = pad_ + (end_chunk - first_chunk) * (kChunk / 64);
    // Zeros, then the seeds of the chunks that have some.
    map_.resize(std::max(map_.size(), static_cast<size_t>(size)));
    std::fill(map_.begin(), map_.begin() + size, 0);
    uint64_t seeded = 0;
    for (int64_t chunk = first_chunk; chunk < end_chunk; chunk += kChunkBatch) {
      const int n = static_cast<int>(std::min<int64_t>(kChunkBatch, end_chunk - chunk));
      const int with_seeds = seeds_of_chunks(static_cast<uint64_t>(chunk), n, key_, bounds_, table_, which_, seeds_);
      for (int t = 0; t < with_seeds; ++t) {
        const int64_t c = chunk + which_[t];
        const ChunkBits v = valid_seeds(c, plane_offset(grid_, c * kChunk), seeds_[t]);
        uint64_t* m = map_.data() + pad_ + (c - first_chunk) * (kChunk / 64);
        m[0] = v.w0;
        m[1] = v.w1;
        m[2] = v.w2;
        m[3] = v.w3;
        seeded |= v.w0 | v.w1 | v.w2 | v.w3;
      }
    }
    const uint64_t* blocks = map_.data();
    if (seeded != 0 && dilation_.steps + dilation_.row_steps > 0) {
      other_.resize(std::max(other_.size(), static_cast<size_t>(size)));  // the passes write [pad_, size)
      std::fill(other_.begin(), other_.begin() + pad_, 0);
      uint64_t* src = map_.data();
      uint64_t* dst = other_.data();
      if (dilation_.row_steps > 0) {
        dilate_rows(src, dst, pad_, size, dilation_.row_shift, dilation_.row_steps);
        std::swap(src, dst);
      }
      for (int k = 0; k < dilation_.steps; ++k) {
        or_shifted(src, dst, pad_, size, dilation_.shift[k]);
        std::swap(src, dst);
      }
      blocks = src;
    }
    const int64_t first_word = first >> 6, end_word = (last + 63) >> 6;
    int64_t kept = write_keep_words(blocks + pad_ + (first_word - base), words_ + first_word, end_word - first_word);
    if (last % 64 != 0) {  // the mask's end: no keep bits past the last element
      const uint64_t tail = words_[end_word - 1];
      words_[end_word - 1] = tail & low_bits(last % 64);
      kept -= popcount64(tail & ~low_bits(last % 64));
    }
    return kept;
  }

 private:
  // The seeds of a chunk where a whole block fits (none past the last element); `offset` is the
  // plane offset of its first index.
  ChunkBits valid_seeds(int64_t chunk, int64_t offset, const ChunkBits& seeds) const {
    const int64_t g0 = chunk * kChunk;
    const int64_t n = std::min<int64_t>(kChunk, grid_.total - g0);
    ChunkBits fits{0, 0, 0, 0};
    if (valid_.enabled()) {
      fits = valid_.at(offset);
    } else if (any(seeds)) {
      fits = fitting_positions(g0, n);
    }
    uint64_t w[4] = {seeds.w0 & fits.w0, seeds.w1 & fits.w1, seeds.w2 & fits.w2, seeds.w3 & fits.w3};
    if (n < kChunk) {  // the mask's last chunk
      for (int q = 0; q < 4; ++q) {
        w[q] &= low_bits(std::max<int64_t>(0, std::min<int64_t>(64, n - 64 * q)));
      }
    }
    return {w[0], w[1], w[2], w[3]};
  }

  // Where a block fits among the chunk's n positions from logical index g0, row by row (planes
  // too large for a ValidPattern have rows of tens of positions or more: a few rows a chunk).
  ChunkBits fitting_positions(int64_t g0, int64_t n) const {
    uint64_t w[4] = {0, 0, 0, 0};
    const OrInto set{w};
    for_each_fitting_run(grid_, g0, n, [&](int64_t i, int64_t fit) { clear_range(i, fit, set); });  // "clear" = set
    return {w[0], w[1], w[2], w[3]};
  }

  SeedGrid grid_;
  PhiloxKey key_;
  const uint64_t* bounds_;
  CountTable table_;
  const ValidPattern& valid_;
  const Dilation& dilation_;
  int64_t reach_;
  int64_t pad_;  // zero words before the map, so that every shift reads zeros below it
  uint64_t* words_;
  std::vector<uint64_t> map_, other_;
  int which_[kChunkBatch];
  ChunkBits seeds_[kChunkBatch];
};

// Logical indices per range: a multiple of kRangeElements, at least 8 block reaches, so that the
// chunks drawn twice (within a block's reach before the range) stay an eighth of the draw or less.
int64_t range_elements(const SeedGrid& grid) {
  const int64_t reaches = 8 * block_reach(grid);
  return std::max<int64_t>(1, (reaches + kRangeElements - 1) / kRangeElements) * kRangeElements;
}

std::tuple<at::Tensor, at::Tensor> drop_block_mask_cpu(const at::Tensor& input, const at::Tensor& seed,
                                                       const at::Tensor& p, c10::IntArrayRef block_size, double eps,
                                                       bool shared_channels) {
  const MaskGeometry g = make_mask_geometry(input, block_size, shared_channels);
  const double drop_probability = *check_mask_args(input, seed, p, eps);  // the input's device is the CPU
  const PhiloxKey key = make_key(static_cast<uint64_t>(seed.item<int64_t>()));
  uint64_t bounds[kChunk];
  const CountTable table = make_count_table(seed_rate(drop_probability, gamma_factor(g)), bounds);
  std::fill(bounds + table.size, bounds + kChunk, uint64_t(1) << 32);  // for seed_counts' search

  at::Tensor mask = at::empty({packed_mask_bytes(g.planes * g.plane_numel())}, input.options().dtype(at::kByte));
  uint64_t* words = reinterpret_cast<uint64_t*>(mask.data_ptr<uint8_t>());
  const int64_t nwords = mask.numel() / 8;
  const SeedGrid grid = make_seed_grid(g);
  int64_t kept_bits = grid.total;
  if (never_seeds(table) || grid.total == 0) {
    std::fill(words, words + nwords, ~uint64_t(0));
    if (grid.total % 64 != 0) {
      words[nwords - 1] = low_bits(grid.total % 64);
    }
  } else {
    const int64_t per_range = range_elements(grid);
    const int64_t ranges = (grid.total + per_range - 1) / per_range;
    const ValidPattern valid(grid);
    const Dilation dilation(grid);
    kept_bits = at::parallel_reduce(
        0, ranges, parallel_grain(ranges, grid.total), int64_t(0),
        [&](int64_t begin, int64_t end, int64_t acc) {
          RangeMasker masker(grid, key, bounds, table, valid, dilation, words);
          for (int64_t r = begin; r < end; ++r) {
            acc += masker.mask(r * per_range, std::min((r + 1) * per_range, grid.total));
          }
          return acc;
        },
        std::plus<int64_t>());
  }
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
