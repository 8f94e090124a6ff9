#pragma once
// The seed draw of the mask law (mask_logic.h), host and device: per chunk of 256 logical indices,
// the count from the count table, then the positions from the Philox stream.
#include <cmath>
#include <cstdint>

#include "host_device.h"
#include "philox.h"

namespace dropblock {

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

}  // namespace dropblock
