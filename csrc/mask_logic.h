#pragma once
// The DropBlock mask law, written once for host and device.
//
// Everything that decides WHICH elements are dropped lives here, so the CPU kernels and the
// CUDA kernels cannot drift apart: the mask is a pure function of (key, logical index).
//
// The law, for an input (N, C, *spatial) viewed as planes of D x H x W (1d/2d inputs pad the
// leading spatial sizes with 1):
//   * plane q is (n, c) for per-channel masks, n for shared masks;
//   * b = min(block_size, size) per dimension; a seed may only sit at 0 <= i <= size - b;
//   * the logical index of element (q, z, y, x) is g = q * D*H*W + (z*H + y)*W + x;
//   * seeds are drawn per chunk of kChunk = 256 logical indices (chunk c: [256c, 256c + 256)),
//     each position a seed independently with probability gamma: chunk c draws its count
//     K ~ Binomial(256, gamma) by comparing word 0 of Philox(counter = (c, 0), key) with a table
//     of cumulative bounds rint(CDF(k) * 2^32) (make_count_table), then K distinct positions as
//     the first distinct bytes of the words that follow (words 1..3, then the words of
//     Philox((c, 1), key), (c, 2), ...), or, for K > 128, the 256 - K positions that are not seeds;
//   * only seeds where a whole block fits count (0 <= i <= size - b in every dimension);
//   * a seed at (z, y, x) drops the block [z, z+bd) x [y, y+bh) x [x, x+bw);
//   * the packed mask holds one KEEP bit per logical element: bit g % 64 of 64-bit word g / 64;
//     kernels set it to all ones and clear the blocks of the seeds (clear_chunk_blocks).
#include <cmath>
#include <cstdint>

#include <c10/macros/Macros.h>

// Unrolling hints for nvcc; host compilers unroll these short loops on their own.
#if defined(__CUDACC__)
#define DROPBLOCK_UNROLL _Pragma("unroll")
#else
#define DROPBLOCK_UNROLL
#endif

namespace dropblock {

constexpr int kMaxSpatialDims = 3;

struct PhiloxKey {
  uint32_t lo;
  uint32_t hi;
};

C10_HOST_DEVICE inline PhiloxKey make_key(uint64_t seed) {
  return {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
}

struct Philox4 {
  uint32_t word[4];
};

// One round of Philox4x32 (Salmon et al., SC'11). Exposed so that batched host loops can
// vectorise it while computing exactly what philox4x32_10 computes.
C10_HOST_DEVICE inline void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0,
                                         uint32_t k1) {
#ifdef __CUDA_ARCH__
  const uint32_t hi0 = __umulhi(0xD2511F53u, c0);
  const uint32_t lo0 = 0xD2511F53u * c0;
  const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2);
  const uint32_t lo1 = 0xCD9E8D57u * c2;
#else
  const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
  const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
  const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32);
  const uint32_t lo0 = static_cast<uint32_t>(p0);
  const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32);
  const uint32_t lo1 = static_cast<uint32_t>(p1);
#endif
  c0 = hi1 ^ c1 ^ k0;
  c1 = lo1;
  c2 = hi0 ^ c3 ^ k1;
  c3 = lo0;
}

// Key schedule: the key used by round r (0-based).
C10_HOST_DEVICE inline uint32_t philox_round_key_lo(PhiloxKey key, int round) {
  return key.lo + 0x9E3779B9u * static_cast<uint32_t>(round);
}
C10_HOST_DEVICE inline uint32_t philox_round_key_hi(PhiloxKey key, int round) {
  return key.hi + 0xBB67AE85u * static_cast<uint32_t>(round);
}

// Philox4x32-10 in stateless form: any element's random bits can be produced by any thread,
// in any order, on any device. Counter words: (counter_lo, counter_hi) as 2 x 64 bits.
C10_HOST_DEVICE inline Philox4 philox4x32_10(uint64_t counter_lo, uint64_t counter_hi, PhiloxKey key) {
  uint32_t c0 = static_cast<uint32_t>(counter_lo);
  uint32_t c1 = static_cast<uint32_t>(counter_lo >> 32);
  uint32_t c2 = static_cast<uint32_t>(counter_hi);
  uint32_t c3 = static_cast<uint32_t>(counter_hi >> 32);
  DROPBLOCK_UNROLL
  for (int round = 0; round < 10; ++round) {
    philox_round(c0, c1, c2, c3, philox_round_key_lo(key, round), philox_round_key_hi(key, round));
  }
  return {{c0, c1, c2, c3}};
}

// ---- the seed draw: one chunk of kChunk logical indices at a time ----
//
// i.i.d. Bernoulli(gamma) seeds over a chunk are exactly "a count K ~ Binomial(kChunk, gamma),
// then a uniform K-subset of the chunk's positions". Drawing them that way costs randomness in
// proportion to the seeds: one Philox call per chunk while K <= 12 (nearly always at DropBlock's
// rates, gamma ~ p / b^2), instead of bits for every position.

constexpr int kChunk = 256;  // one random byte is one uniform position of a chunk

// IEEE double operations each rounded once, never fused into an FMA: the count table must have
// the same bits on every device (host builds also pass -ffp-contract=off).
C10_HOST_DEVICE inline double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
C10_HOST_DEVICE inline double add_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
C10_HOST_DEVICE inline double div_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

// The factors (kChunk - k) / (k + 1) of the binomial recurrence P(k + 1) = P(k) * h / (1 - h) *
// (kChunk - k) / (k + 1), each the IEEE quotient of two exact integers, folded at compile time (on
// the device a division inside the table's loop is a subroutine call, which spills).
struct BinomialSteps {
  double v[kChunk];
  constexpr BinomialSteps() : v() {
    for (int k = 0; k < kChunk; ++k) {
      v[k] = static_cast<double>(kChunk - k) / static_cast<double>(k + 1);
    }
  }
};
#if defined(__CUDACC__)
static __constant__ BinomialSteps kDeviceBinomialSteps = BinomialSteps();
#endif
constexpr BinomialSteps kBinomialSteps{};

C10_HOST_DEVICE inline double binomial_step(int k) {
#ifdef __CUDA_ARCH__
  return kDeviceBinomialSteps.v[k];
#else
  return kBinomialSteps.v[k];
#endif
}

// The seed count's table: the count m drawn from a 32-bit uniform word u is the number of
// bounds[k] <= u, k < size, where bounds[k] = rint(CDF(k) * 2^32) of Binomial(kChunk, h), kept
// while below 2^32 (so size <= kChunk and m <= size). h = gamma, or, when `mirrored` (gamma > 1/2),
// h = 1 - gamma and m counts the non-seeds (K = kChunk - m): (1 - h)^kChunk then never underflows.
struct CountTable {
  int size;
  bool mirrored;
};

// gamma = min(p * gamma_factor, 1) (0 for NaN or p <= 0), where gamma_factor =
// prod(S / (b * (S - b + 1))) comes from the geometry (see op_args.h).
C10_HOST_DEVICE inline double seed_rate(double p, double gamma_factor) {
  const double gamma = mul_rn(p, gamma_factor);
  return gamma > 0.0 ? (gamma < 1.0 ? gamma : 1.0) : 0.0;
}

// Fills bounds[0 .. size) for seed rate gamma (in [0, 1]) by one fixed sequence of IEEE double
// operations: on the host for CPU tensors, inside the mask kernels (per CTA, in shared memory)
// for CUDA tensors, so that a p on the device neither syncs nor recompiles. Stops at the first
// bound of 2^32 (every later one is 2^32 too): a handful of steps at DropBlock's rates.
C10_HOST_DEVICE inline CountTable make_count_table(double gamma, uint64_t* bounds) {
  CountTable t{0, gamma > 0.5};
  if (!(gamma > 0.0)) {
    return t;  // no seeds: m = 0 = K
  }
  const double h = t.mirrored ? add_rn(1.0, -gamma) : gamma;  // exact for gamma > 1/2 (Sterbenz)
  const double q = add_rn(1.0, -h);
  double pmf = q;
  DROPBLOCK_UNROLL
  for (int i = 0; i < 8; ++i) {
    pmf = mul_rn(pmf, pmf);  // q^256
  }
  const double ratio = div_rn(h, q);
  double cdf = pmf;
  for (int k = 0; k < kChunk; ++k) {
    const double bound = rint(mul_rn(cdf, 4294967296.0));
    if (!(bound < 4294967296.0)) {
      break;
    }
    bounds[k] = static_cast<uint64_t>(bound);
    t.size = k + 1;
    pmf = mul_rn(mul_rn(pmf, ratio), binomial_step(k));
    cdf = add_rn(cdf, pmf);
  }
  return t;
}

C10_HOST_DEVICE inline bool never_seeds(CountTable t) {
  return t.size == 0 && !t.mirrored;
}

// The seed count K of a chunk whose first word is u: the number of bounds <= u, then the mirror.
// Short tables (DropBlock's rates: about 10 bounds at gamma = 0.0026) are scanned from the start,
// which stops after K + 1 steps (a warp after its largest K, about 3); long ones are searched in
// 9 halving steps. The table is the launch's, so every lane takes the same branch.
C10_HOST_DEVICE inline int seed_count(uint32_t u, const uint64_t* bounds, CountTable t) {
  int below = 0;  // bounds[0 .. below) <= u
  if (t.size <= 16) {
    while (below < t.size && bounds[below] <= u) {
      ++below;
    }
  } else {
    for (int step = 256; step > 0; step >>= 1) {
      if (below + step <= t.size && bounds[below + step - 1] <= u) {
        below += step;
      }
    }
  }
  return t.mirrored ? kChunk - below : below;
}

// A subset of the positions 0 .. 255 of a chunk: bit i % 64 of word i / 64. Named words, not an
// array, so that the device keeps them in registers (a dynamically indexed array goes to local
// memory).
struct ChunkBits {
  uint64_t w0, w1, w2, w3;
};

C10_HOST_DEVICE inline bool any(const ChunkBits& s) {
  return (s.w0 | s.w1 | s.w2 | s.w3) != 0;
}

// The chunk's positions are drawn as the first `need` distinct bytes of a stream of candidates:
// bytes 0..3 (low byte first) of words 1, 2, 3 of Philox(counter = (chunk, 0), key), then of
// words 0..3 of Philox(counter = (chunk, 1), key), (chunk, 2), ... The first distinct values of
// an i.i.d. uniform stream form a uniform subset. need = min(K, 256 - K): for K > 128 the drawn
// positions are the non-seeds.
struct PositionDraw {
  ChunkBits chosen;
  int have;
  int need;

  C10_HOST_DEVICE bool done() const { return have >= need; }
  // Takes the 4 candidate bytes of `word` in order.
  C10_HOST_DEVICE void take(uint32_t word) {
#if defined(__CUDA_ARCH__) || defined(DROPBLOCK_CUDA_EMULATION)  // the emulation runs the device's form
    // About 38 instructions a byte, so a word is skipped once the draw is done (after its first word
    // for K <= 4: nearly every chunk at DropBlock's rates).
    if (have >= need) {
      return;
    }
    take_all(word);
#else
    for (int j = 0; j < 4 && have < need; ++j) {
      const uint32_t b = (word >> (8 * j)) & 0xFFu;
      const uint64_t bit = uint64_t(1) << (b & 63);
      const uint32_t q = b >> 6;
      uint64_t& w = q == 0 ? chosen.w0 : q == 1 ? chosen.w1 : q == 2 ? chosen.w2 : chosen.w3;
      if ((w & bit) == 0) {
        w |= bit;
        ++have;
      }
    }
#endif
  }
  // take() without a branch: selects, not a reference to the chosen word, so that the four words
  // stay in registers (on the device) or in vector lanes (the CPU's batched draw); a byte taken
  // once the draw is done changes nothing.
  C10_HOST_DEVICE void take_all(uint32_t word) {
    DROPBLOCK_UNROLL
    for (int j = 0; j < 4; ++j) {
      const uint32_t b = (word >> (8 * j)) & 0xFFu;
      const uint64_t bit = uint64_t(1) << (b & 63);
      const uint32_t q = b >> 6;
      const uint64_t old = q == 0 ? chosen.w0 : q == 1 ? chosen.w1 : q == 2 ? chosen.w2 : chosen.w3;
      const uint64_t add = (have < need && (old & bit) == 0) ? bit : 0;
      chosen.w0 |= q == 0 ? add : 0;
      chosen.w1 |= q == 1 ? add : 0;
      chosen.w2 |= q == 2 ? add : 0;
      chosen.w3 |= q == 3 ? add : 0;
      have += add != 0;
    }
  }
};

// The draw of a chunk from its first Philox call (counter (chunk, 0)): the count, then the
// candidates of words 1..3. Callers continue with further calls while !done().
C10_HOST_DEVICE inline PositionDraw start_position_draw(const Philox4& first, const uint64_t* bounds, CountTable t,
                                                        int& count) {
  count = seed_count(first.word[0], bounds, t);
  PositionDraw d{{0, 0, 0, 0}, 0, count <= kChunk / 2 ? count : kChunk - count};
  if (d.need > 0) {
    d.take(first.word[1]);
    d.take(first.word[2]);
    d.take(first.word[3]);
  }
  return d;
}

// The seeds of the chunk once its draw is done.
C10_HOST_DEVICE inline ChunkBits finish_position_draw(const PositionDraw& d, int count) {
  if (count <= kChunk / 2) {
    return d.chosen;
  }
  return {~d.chosen.w0, ~d.chosen.w1, ~d.chosen.w2, ~d.chosen.w3};
}

// The seeds of chunk `chunk` (bit i <-> logical index kChunk * chunk + i), before any validity
// test: the scalar statement of the draw, which the CPU's batched draw must equal.
C10_HOST_DEVICE inline ChunkBits seeds_of_chunk(uint64_t chunk, PhiloxKey key, const uint64_t* bounds, CountTable t) {
  int count = 0;
  PositionDraw d = start_position_draw(philox4x32_10(chunk, 0, key), bounds, t, count);
  for (uint64_t call = 1; !d.done(); ++call) {
    const Philox4 r = philox4x32_10(chunk, call, key);
    DROPBLOCK_UNROLL
    for (int w = 0; w < 4; ++w) {
      d.take(r.word[w]);
    }
  }
  return finish_position_draw(d, count);
}

// Geometry of the mask: planes of D x H x W with clamped block sizes.
struct MaskGeometry {
  int64_t planes;
  int64_t size[kMaxSpatialDims];   // D, H, W
  int64_t block[kMaxSpatialDims];  // bd, bh, bw, each in [1, size]
  C10_HOST_DEVICE int64_t plane_numel() const { return size[0] * size[1] * size[2]; }
  // Number of positions along dimension d where a block fits.
  C10_HOST_DEVICE int64_t seed_extent(int d) const { return size[d] - block[d] + 1; }
};

// ---- the packed mask: bit g % 64 of 64-bit word g / 64 is the KEEP bit of logical index g ----

C10_HOST_DEVICE inline uint64_t low_bits(int64_t n) {
  return n >= 64 ? ~uint64_t(0) : ((uint64_t(1) << n) - 1);
}

C10_HOST_DEVICE inline void atomic_and_word(uint64_t* word, uint64_t bits) {
#ifdef __CUDA_ARCH__
  atomicAnd(reinterpret_cast<unsigned long long*>(word), static_cast<unsigned long long>(bits));
#else
  __atomic_fetch_and(word, bits, __ATOMIC_RELAXED);
#endif
}

// Clears bits through 64-bit atomicAnd / __atomic_fetch_and: for workers whose blocks may
// overlap anywhere (the CUDA scatter seed kernel; the window kernel clears its shared-memory copy).
struct AtomicClear {
  uint64_t* words;
  C10_HOST_DEVICE void operator()(int64_t w, uint64_t bits) const {
    if (bits != 0) {
      atomic_and_word(words + w, ~bits);
    }
  }
};

// Clears bits of the packed mask for a worker that owns the words strictly inside
// (shared_lo, shared_hi): plain writes there, atomic ones on the words other workers may touch.
struct OwnedClear {
  uint64_t* words;
  int64_t shared_lo;
  int64_t shared_hi;
  C10_HOST_DEVICE void operator()(int64_t w, uint64_t bits) const {
    if (bits == 0) {
      return;
    }
    if (w <= shared_lo || w >= shared_hi) {
      atomic_and_word(words + w, ~bits);
    } else {
      words[w] &= ~bits;
    }
  }
};

// Clears bits [first, first + n) through `clear`.
template <typename Clear>
C10_HOST_DEVICE inline void clear_range(int64_t first, int64_t n, const Clear& clear) {
  const int64_t last = first + n;
  for (int64_t w = first >> 6; w <= (last - 1) >> 6 && n > 0; ++w) {
    const int64_t lo = w * 64 > first ? w * 64 : first;
    const int64_t hi = w * 64 + 64 < last ? w * 64 + 64 : last;
    clear(w, low_bits(hi - lo) << (lo - w * 64));
  }
}

// High 64 bits of a 64 x 64-bit product.
C10_HOST_DEVICE inline uint64_t mul_high(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) >> 64);
#endif
}

// Division by a divisor fixed in advance, without a divide instruction (a 64-bit divide costs
// tens of cycles on CPUs and is emulated on GPUs): for 1 <= d < 2^32 and n < 2^32,
// n / d = mul_high(ceil(2^64 / d), n) exactly (Lemire, Kaser & Kurz, "Faster remainder by direct
// computation", 2019, theorem 1 with F = 64, N = 32). d = 1 would need 2^64: magic 0 marks it.
struct SmallDivider {
  uint64_t magic;
};

C10_HOST_DEVICE inline SmallDivider make_small_divider(uint64_t d) {
  return {d == 1 ? 0 : ~uint64_t(0) / d + 1};
}

C10_HOST_DEVICE inline uint64_t divide(SmallDivider d, uint64_t n) {
  return d.magic == 0 ? n : mul_high(d.magic, n);
}

// Where seeds may sit and what their blocks cover, in logical indices.
struct SeedGrid {
  int64_t total;        // planes * D * H * W
  int64_t plane_numel;  // D * H * W
  int64_t size[kMaxSpatialDims];
  int64_t extent[kMaxSpatialDims];  // positions where a block fits: size - block + 1
  int64_t block[kMaxSpatialDims];
  // Below 2^32 logical indices (nearly always), positions are found with these dividers.
  bool small;
  SmallDivider by_plane, by_width, by_height;
};

C10_HOST_DEVICE inline SeedGrid make_seed_grid(const MaskGeometry& g) {
  SeedGrid s{};
  s.plane_numel = g.plane_numel();
  s.total = g.planes * s.plane_numel;
  for (int d = 0; d < kMaxSpatialDims; ++d) {
    s.size[d] = g.size[d];
    s.extent[d] = g.seed_extent(d);
    s.block[d] = g.block[d];
  }
  s.small = s.total > 0 && s.total < (int64_t(1) << 32);
  if (s.small) {
    s.by_plane = make_small_divider(static_cast<uint64_t>(s.plane_numel));
    s.by_width = make_small_divider(static_cast<uint64_t>(s.size[2]));
    s.by_height = make_small_divider(static_cast<uint64_t>(s.size[1]));
  }
  return s;
}

// Position (z, y, x) of logical index g in its plane.
C10_HOST_DEVICE inline void position_in_plane(const SeedGrid& s, int64_t g, int64_t& z, int64_t& y, int64_t& x) {
  const int64_t H = s.size[1], W = s.size[2];
  if (s.small) {
    const int64_t r = g - static_cast<int64_t>(divide(s.by_plane, static_cast<uint64_t>(g))) * s.plane_numel;
    const int64_t line = static_cast<int64_t>(divide(s.by_width, static_cast<uint64_t>(r)));
    x = r - line * W;
    z = static_cast<int64_t>(divide(s.by_height, static_cast<uint64_t>(line)));
    y = line - z * H;
    return;
  }
  const int64_t r = g % s.plane_numel;
  const int64_t line = r / W;
  x = r - line * W;
  z = line / H;
  y = line - z * H;
}

C10_HOST_DEVICE inline int popcount64(uint64_t v) {
#if defined(__CUDA_ARCH__)
  return __popcll(v);
#elif defined(__POPCNT__) || !defined(__x86_64__)
  return __builtin_popcountll(v);
#else
  // Baseline x86-64 has no popcount instruction and the builtin becomes a libgcc call (5% of a
  // mask's time once): the same count in a dozen inline operations.
  v = v - ((v >> 1) & 0x5555555555555555ull);
  v = (v & 0x3333333333333333ull) + ((v >> 2) & 0x3333333333333333ull);
  v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0Full;
  return static_cast<int>((v * 0x0101010101010101ull) >> 56);
#endif
}

// The number of positions in a chunk's set.
C10_HOST_DEVICE inline int bit_count(const ChunkBits& s) {
  return popcount64(s.w0) + popcount64(s.w1) + popcount64(s.w2) + popcount64(s.w3);
}

C10_HOST_DEVICE inline int lowest_bit64(uint64_t v) {
#ifdef __CUDA_ARCH__
  return __ffsll(static_cast<long long>(v)) - 1;
#else
  return __builtin_ctzll(v);
#endif
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

// Clears the block of one seed row by row: clear_one_block as the functor the chunk walks take (the
// CPU passes one that clears a precomputed stamp of the block's words instead).
struct BlockByRows {
  const SeedGrid* grid;
  template <typename Clear>
  C10_HOST_DEVICE void operator()(int64_t g, const Clear& clear) const {
    clear_one_block(*grid, g, clear);
  }
};

// Clears, through clear_block, the block of the seed at logical index g if a whole block fits there.
template <typename Clear, typename ClearBlock>
C10_HOST_DEVICE inline void clear_block_if_it_fits(const SeedGrid& s, int64_t g, const Clear& clear,
                                                   const ClearBlock& clear_block) {
  int64_t z, y, x;
  position_in_plane(s, g, z, y, x);
  if (z < s.extent[0] && y < s.extent[1] && x < s.extent[2]) {
    clear_block(g, clear);
  }
}

template <typename Clear>
C10_HOST_DEVICE inline void clear_block_if_it_fits(const SeedGrid& s, int64_t g, const Clear& clear) {
  clear_block_if_it_fits(s, g, clear, BlockByRows{&s});
}

// A chunk with at most this many seeds has them placed one by one (a division to find each one's
// position); more, and the chunk is walked row by row (its seeds of a row at once).
constexpr int kSparseChunkSeeds = 4;

// Block expansion of a chunk: clears through clear(word, bits) the blocks of its seeds (bit i <->
// logical index kChunk * chunk + i) that sit where a whole block fits, walking the chunk row by row
// (a row's seeds at once, in pieces of up to 65 - bw positions): no per-position work.
// A sparse chunk's blocks go through clear_block (BlockByRows, or the CPU's stamp).
template <typename Clear, typename ClearBlock>
C10_HOST_DEVICE inline void clear_chunk_blocks(const SeedGrid& s, uint64_t chunk, const ChunkBits& seeds,
                                               const Clear& clear, const ClearBlock& clear_block) {
  const int64_t g0 = static_cast<int64_t>(chunk) * kChunk;
  if (g0 >= s.total) {
    return;
  }
  const int64_t H = s.size[1], W = s.size[2];
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
        clear_block_if_it_fits(s, g0 + i, clear, clear_block);
      }
    }
    return;
  }
  const int64_t piece = s.block[2] <= 48 ? 65 - s.block[2] : 64;
  int64_t z, y, x;
  position_in_plane(s, g0, z, y, x);
  for (int64_t i = 0; i < n;) {
    const int64_t in_row = W - x < n - i ? W - x : n - i;  // chunk positions [i, i + in_row) share a row
    if (y < s.extent[1] && z < s.extent[0] && x < s.extent[2]) {
      const int64_t fit = s.extent[2] - x < in_row ? s.extent[2] - x : in_row;
      for (int64_t j = 0; j < fit; j += piece) {
        const int64_t len = fit - j < piece ? fit - j : piece;
        const uint64_t bits = chunk_bits(seeds, i + j, len);
        if (bits != 0) {
          clear_row_blocks(s, g0 + i + j, bits, clear);
        }
      }
    }
    i += in_row;
    x = 0;
    if (++y == H) {
      y = 0;
      if (++z == s.size[0]) {
        z = 0;
      }
    }
  }
}

template <typename Clear>
C10_HOST_DEVICE inline void clear_chunk_blocks(const SeedGrid& s, uint64_t chunk, const ChunkBits& seeds,
                                               const Clear& clear) {
  clear_chunk_blocks(s, chunk, seeds, clear, BlockByRows{&s});
}

// How far past its seed a block reaches, in logical indices: the words a worker shares with
// the workers before it.
C10_HOST_DEVICE inline int64_t block_reach(const SeedGrid& s) {
  return ((s.block[0] - 1) * s.size[1] + (s.block[1] - 1)) * s.size[2] + (s.block[2] - 1);
}

// scale = numel / (eps + kept), with the kept count over the whole tensor (1 for an empty one):
// computed on the host for CPU tensors and by the CUDA mask kernels, the same IEEE double steps.
C10_HOST_DEVICE inline double keep_scale(int64_t numel, int64_t kept, double eps) {
  return numel == 0 ? 1.0 : static_cast<double>(numel) / (eps + static_cast<double>(kept));
}

C10_HOST_DEVICE inline bool keep_bit(const uint64_t* mask, int64_t index) {
  return (mask[index >> 6] >> (index & 63)) & 1u;
}

// Keep bits [first, first + n) of the packed mask (1 <= n <= 64) as bits 0 .. n-1 of a word.
C10_HOST_DEVICE inline uint64_t keep_bits(const uint64_t* mask, int64_t first, int64_t n) {
  const int64_t word = first >> 6;
  const int offset = static_cast<int>(first & 63);
  uint64_t bits = mask[word] >> offset;
  if (offset + n > 64) {
    bits |= mask[word + 1] << (64 - offset);
  }
  return bits & low_bits(n);
}

}  // namespace dropblock
