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
//   * position g is a seed with probability T / 2^32, T = round(gamma * 2^32) capped at 2^32,
//     decided by a 32-bit uniform u(g) < T whose top 8 bits come from stream 0 (byte g % 16 of
//     Philox(counter = (g / 16, stream 0), key)) and whose low 24 bits come from stream 1
//     (low 24 bits of word 0 of Philox(counter = (g, stream 1), key)). Stream 1 is only drawn
//     when the top byte ties with T's, so most positions cost 1/16 of a Philox call;
//   * a seed at (z, y, x) drops the block [z, z+bd) x [y, y+bh) x [x, x+bw);
//   * the packed mask holds one KEEP bit per logical element: bit g % 64 of 64-bit word g / 64;
//     kernels set it to all ones and clear the blocks of the seeds (clear_blocks).
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

// Seed probability T / 2^32 split at the byte drawn first: `top` is T >> 24 (0..256, where 256
// means every valid position is a seed) and `low` is T's low 24 bits.
struct SeedThreshold {
  uint32_t top;
  uint32_t low;
};

// T = round(gamma * 2^32) with gamma = min(p * gamma_factor, 1), where gamma_factor =
// prod(S / (b * (S - b + 1))) comes from the geometry (see mask_params.h). Computed on the host
// for CPU tensors and in the mask kernels for CUDA tensors (which may read p from device memory,
// so that a scheduled p neither syncs nor recompiles). IEEE double arithmetic makes both the same.
C10_HOST_DEVICE inline SeedThreshold make_seed_threshold(double p, double gamma_factor) {
  double gamma = p * gamma_factor;
  if (!(gamma > 0.0)) {  // also NaN
    return {0, 0};
  }
  if (gamma >= 1.0) {
    return {256, 0};
  }
  const uint64_t t = static_cast<uint64_t>(rint(gamma * 4294967296.0));
  if (t >= (uint64_t(1) << 32)) {
    return {256, 0};
  }
  return {static_cast<uint32_t>(t >> 24), static_cast<uint32_t>(t & 0xFFFFFFu)};
}

C10_HOST_DEVICE inline bool never_seeds(SeedThreshold t) {
  return t.top == 0 && t.low == 0;
}

// The bytes of `word` below n (n <= 128), flagged by 0x80 in their byte: exact and branch-free
// ((b | 0x80) - n never borrows from the next byte, and its top bit says b's low 7 bits >= n).
C10_HOST_DEVICE inline uint32_t bytes_below(uint32_t word, uint32_t n) {
  const uint32_t low7_at_least_n = ((word | 0x80808080u) - 0x01010101u * n) & 0x80808080u;
  return ~word & ~low7_at_least_n & 0x80808080u;
}

// Byte flags (0x80 per byte) to lane bits (bit j for byte j).
C10_HOST_DEVICE inline uint32_t byte_flags_to_lanes(uint32_t flags) {
  return ((flags >> 7) & 1u) | ((flags >> 14) & 2u) | ((flags >> 21) & 4u) | ((flags >> 28) & 8u);
}

// The 16 positions of a stream-0 draw (bit j <-> logical index 16*k + j) whose top byte is
// below T's (seeds) or equal to it (ties, decided by the position's stream-1 draw).
struct DrawClasses {
  uint32_t seeds;
  uint32_t ties;
};

// classify_draw for top <= 127 (gamma < 1/2, the usual case): branch-free, so that batched host
// loops vectorise it.
C10_HOST_DEVICE inline DrawClasses classify_draw_small_top(const Philox4& r, uint32_t top) {
  DrawClasses c{0, 0};
DROPBLOCK_UNROLL
  for (int w = 0; w < 4; ++w) {
    const uint32_t below = bytes_below(r.word[w], top);
    const uint32_t below_or_equal = bytes_below(r.word[w], top + 1);
    c.seeds |= byte_flags_to_lanes(below) << (4 * w);
    c.ties |= byte_flags_to_lanes(below_or_equal & ~below) << (4 * w);
  }
  return c;
}

C10_HOST_DEVICE inline DrawClasses classify_draw(const Philox4& r, SeedThreshold t) {
  if (t.top <= 127) {
    return classify_draw_small_top(r, t.top);
  }
  DrawClasses c{0, 0};
  if (t.top >= 256) {
    c.seeds = 0xFFFFu;
    return c;
  }
DROPBLOCK_UNROLL
  for (int w = 0; w < 4; ++w) {
DROPBLOCK_UNROLL
    for (int j = 0; j < 4; ++j) {
      const uint32_t byte = (r.word[w] >> (8 * j)) & 0xFFu;
      const uint32_t lane = 1u << (4 * w + j);
      if (byte < t.top) {
        c.seeds |= lane;
      } else if (byte == t.top) {
        c.ties |= lane;
      }
    }
  }
  return c;
}

// A tie at logical index g is a seed when the low 24 bits of word 0 of its stream-1 draw,
// Philox(counter = (g, 1), key), are below T's low 24 bits.
C10_HOST_DEVICE inline bool tie_is_seed(uint32_t stream1_word0, SeedThreshold t) {
  return (stream1_word0 & 0xFFFFFFu) < t.low;
}

// Seed bits of the 16 logical indices 16*k .. 16*k+15 (bit j <-> index 16*k + j), before any
// validity test: callers keep only the bits of positions where a block fits.
C10_HOST_DEVICE inline uint32_t seed_bits_of_group(uint64_t k, PhiloxKey key, SeedThreshold t) {
  DrawClasses c = classify_draw(philox4x32_10(k, /*stream=*/0, key), t);
  for (uint32_t v = c.ties; v != 0; v &= v - 1) {
    int lane = 0;
    while (((v >> lane) & 1u) == 0) {
      ++lane;
    }
    if (tie_is_seed(philox4x32_10(16 * k + lane, /*stream=*/1, key).word[0], t)) {
      c.seeds |= 1u << lane;
    }
  }
  return c.seeds;
}

// Geometry of the mask: planes of D x H x W with clamped block sizes.
struct MaskGeometry {
  int64_t planes;
  int64_t size[kMaxSpatialDims];   // D, H, W
  int64_t block[kMaxSpatialDims];  // bd, bh, bw, each in [1, size]
  C10_HOST_DEVICE int64_t plane_numel() const {
    return size[0] * size[1] * size[2];
  }
  // Number of positions along dimension d where a block fits.
  C10_HOST_DEVICE int64_t seed_extent(int d) const {
    return size[d] - block[d] + 1;
  }
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

// The seeds among `bits` (bit i <-> logical index 16k + i) that sit where a whole block fits.
// Walks the group row by row (two rows at most once W >= 16), not position by position.
C10_HOST_DEVICE inline uint32_t seeds_where_blocks_fit(const SeedGrid& s, uint64_t k, uint32_t bits) {
  const int64_t g0 = static_cast<int64_t>(16 * k);
  if (bits == 0 || g0 >= s.total) {
    return 0;
  }
  const int64_t H = s.size[1], W = s.size[2];
  int64_t z, y, x;
  position_in_plane(s, g0, z, y, x);
  uint32_t valid = 0;
  for (int64_t lane = 0; lane < 16 && lane < s.total - g0;) {
    const int64_t in_row = W - x < 16 - lane ? W - x : 16 - lane;  // lanes [lane, lane + in_row) share a row
    if (y < s.extent[1] && z < s.extent[0] && x < s.extent[2]) {
      const int64_t fit = s.extent[2] - x < in_row ? s.extent[2] - x : in_row;
      valid |= static_cast<uint32_t>(low_bits(fit) << lane);
    }
    lane += in_row;
    x = 0;
    if (++y == H) {
      y = 0;
      if (++z == s.size[0]) {
        z = 0;
      }
    }
  }
  return bits & valid;
}

// Block expansion: clears the blocks of `seeds` (bit i <-> logical index 16k + i, each a seed
// where its block fits) through clear(word, bits). A seed at g drops g + (dz*H + dy)*W + dx for
// dz < bd, dy < bh, dx < bw; blocks never leave their rows, so the offsets are the same for
// every seed and the group's 16-bit pattern, widened by bw - 1, is cleared row by row.
template <typename Clear>
C10_HOST_DEVICE inline void clear_blocks(const SeedGrid& s, uint64_t k, uint32_t seeds, const Clear& clear) {
  if (seeds == 0) {
    return;
  }
  const int64_t g0 = static_cast<int64_t>(16 * k);
  const int64_t H = s.size[1], W = s.size[2];
  const int64_t bd = s.block[0], bh = s.block[1], bw = s.block[2];
  if (bw <= 48) {
    uint64_t pattern = seeds;  // at most 16 + 47 bits
    for (int64_t covered = 1; covered < bw;) {
      const int64_t step = covered < bw - covered ? covered : bw - covered;
      pattern |= pattern << step;
      covered += step;
    }
    for (int64_t dz = 0; dz < bd; ++dz) {
      for (int64_t dy = 0; dy < bh; ++dy) {
        const int64_t pos = g0 + (dz * H + dy) * W;
        const int shift = static_cast<int>(pos & 63);
        clear(pos >> 6, pattern << shift);
        if (shift != 0) {
          clear((pos >> 6) + 1, pattern >> (64 - shift));
        }
      }
    }
    return;
  }
  for (uint32_t v = seeds; v != 0; v &= v - 1) {
    int lane = 0;
    while (((v >> lane) & 1u) == 0) {
      ++lane;
    }
    for (int64_t dz = 0; dz < bd; ++dz) {
      for (int64_t dy = 0; dy < bh; ++dy) {
        clear_range(g0 + lane + (dz * H + dy) * W, bw, clear);
      }
    }
  }
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
