// AVX-512 kernels of the CPU apply: see apply_cpu_avx512.h for why they exist.
//
// Compiled with the project's flags for any x86-64 CPU: only the functions marked
// DROPBLOCK_AVX512 use AVX-512, and they are called only where usable() says the CPU has it.
#include "apply_cpu_avx512.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <c10/util/Exception.h>

#include "../packed_mask.h"

#if defined(__GNUC__) && defined(__x86_64__)
#define DROPBLOCK_HAVE_AVX512_KERNELS 1
// GCC 12 warns of "'__Y' may be used uninitialized" inside its own AVX-512 headers (its bug 105593:
// the _mm512_undefined_* placeholders of the masked intrinsics); nothing of ours is uninitialised.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

namespace dropblock {
namespace avx512 {

namespace {

// DROPBLOCK_CPU_APPLY: unset, empty or "auto" runs these kernels where the CPU has AVX-512,
// "generic" never runs them; anything else is refused rather than silently ignored.
bool wanted() {
  const char* choice = std::getenv("DROPBLOCK_CPU_APPLY");
  if (choice == nullptr || *choice == '\0' || std::strcmp(choice, "auto") == 0) {
    return true;
  }
  TORCH_CHECK_VALUE(std::strcmp(choice, "generic") == 0, "DROPBLOCK_CPU_APPLY: expected 'auto' or 'generic', got '",
                    choice, "'");
  return false;
}

}  // namespace

#ifdef DROPBLOCK_HAVE_AVX512_KERNELS

bool usable() {
  static const bool ok = [] {
    if (!wanted()) {
      return false;
    }
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
  }();
  return ok;
}

#define DROPBLOCK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

namespace {

// Keep bits b .. b + 63, where all 64 lie in the mask: one word where b is word-aligned (so the
// word after the mask's last is never read), else a funnel of two.
inline uint64_t keep_word(const uint64_t* mask, int64_t b) {
  const int64_t word = b >> 6;
  const int offset = static_cast<int>(b & 63);
  return offset == 0 ? mask[word] : (mask[word] >> offset) | (mask[word + 1] << (64 - offset));
}

// One kind of element: how kLanes of them are applied with a lane mask `keep`, where only the
// lanes of `valid` exist (full vectors pass all ones: the loads and stores are then plain).
// Dropped lanes are zeroed by the masks, so their input is never read nor multiplied.
//
// float takes 256-bit vectors: on Zen 4 (which splits a 512-bit store in two), out of place on a
// large tensor, the memory-bound case of a forward, 512-bit vectors were about 9% slower (apply /
// floor 0.93 against 0.85 on 32x64x56x56, one thread); in place in L2 they were faster (0.016 against
// 0.020 ms on 2x2048x7x7), out of place in L2 equal. double keeps 512-bit vectors (not measured).
struct Float32 {
  using scalar_t = float;
  using acc_t = float;
  static constexpr int kLanes = 8;
  DROPBLOCK_AVX512 static inline void apply(const float* in, float* out, uint32_t keep, uint32_t valid, float scale,
                                            bool full) {
    const __m256 x = _mm256_maskz_loadu_ps(static_cast<__mmask8>(keep), in);
    const __m256 y = _mm256_maskz_mul_ps(static_cast<__mmask8>(keep), x, _mm256_set1_ps(scale));
    if (full) {
      _mm256_storeu_ps(out, y);
    } else {
      _mm256_mask_storeu_ps(out, static_cast<__mmask8>(valid), y);
    }
  }
};

struct Float64 {
  using scalar_t = double;
  using acc_t = double;
  static constexpr int kLanes = 8;
  DROPBLOCK_AVX512 static inline void apply(const double* in, double* out, uint32_t keep, uint32_t valid, double scale,
                                            bool full) {
    const __m512d x = _mm512_maskz_loadu_pd(static_cast<__mmask8>(keep), in);
    const __m512d y = _mm512_maskz_mul_pd(static_cast<__mmask8>(keep), x, _mm512_set1_pd(scale));
    if (full) {
      _mm512_storeu_pd(out, y);
    } else {
      _mm512_mask_storeu_pd(out, static_cast<__mmask8>(valid), y);
    }
  }
};

// 16-bit elements: 16 of them widened to float (exact), multiplied with the keep lanes, narrowed.
DROPBLOCK_AVX512 inline __m512 times_kept(__m512 x, uint32_t keep, float scale) {
  return _mm512_maskz_mul_ps(static_cast<__mmask16>(keep), x, _mm512_set1_ps(scale));
}

DROPBLOCK_AVX512 inline void store16(void* out, __m256i y, uint32_t valid, bool full) {
  if (full) {
    _mm256_storeu_si256(static_cast<__m256i*>(out), y);
  } else {
    _mm256_mask_storeu_epi16(out, static_cast<__mmask16>(valid), y);
  }
}

struct BFloat16 {
  using scalar_t = c10::BFloat16;
  using acc_t = float;
  static constexpr int kLanes = 16;
  DROPBLOCK_AVX512 static inline void apply(const c10::BFloat16* in, c10::BFloat16* out, uint32_t keep, uint32_t valid,
                                            float scale, bool full) {
    const __m256i raw = _mm256_maskz_loadu_epi16(static_cast<__mmask16>(keep), in);
    const __m512 x = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
    const __m512 v = times_kept(x, keep, scale);
    // c10's round_to_nearest_even: (u + 0x7FFF + bit 16 of u) >> 16, and 0x7FC0 for any NaN.
    // Dropped lanes are +0.0f, which becomes bfloat16 +0.
    const __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i bits = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
    bits = _mm512_mask_mov_epi32(bits, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
    store16(out, _mm512_cvtepi32_epi16(bits), valid, full);
  }
};

struct Float16 {
  using scalar_t = c10::Half;
  using acc_t = float;
  static constexpr int kLanes = 16;
  DROPBLOCK_AVX512 static inline void apply(const c10::Half* in, c10::Half* out, uint32_t keep, uint32_t valid,
                                            float scale, bool full) {
    const __m256i raw = _mm256_maskz_loadu_epi16(static_cast<__mmask16>(keep), in);
    const __m512 v = times_kept(_mm512_cvtph_ps(raw), keep, scale);
    // The hardware rounds to nearest even as c10's software conversion does, but keeps a NaN's
    // payload where c10 gives sign | 0x7E00: NaN lanes take c10's value.
    __m256i bits = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    if (nan != 0) {
      const __m512i u = _mm512_castps_si512(v);
      const __m512i quiet = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x8000)),
                                            _mm512_set1_epi32(0x7E00));
      bits = _mm256_mask_mov_epi16(bits, nan, _mm512_cvtepi32_epi16(quiet));
    }
    store16(out, bits, valid, full);
  }
};

// Where a run's keep bits come from, 64 at a time from its start (word) and the last rest < 64.
// Linear: bits bit0, bit0 + 1, ... of the mask (one bit per element).
struct Linear {
  const uint64_t* mask;
  int64_t bit;
  inline uint64_t word() {
    const uint64_t w = keep_word(mask, bit);
    bit += 64;
    return w;
  }
  inline uint64_t last(int64_t rest) const { return keep_bits(mask, bit, rest); }
};

// Periodic: the bits of a pattern of `period` bits repeated (a sample's plane of keep bits for
// every channel in turn), read from `pattern`, which holds at least period + 127 bits of the
// repetition, so that any 64 bits from a phase < period are one funnel of two words.
struct Periodic {
  const uint64_t* pattern;
  int64_t period, step, phase;  // step = 64 % period
  inline uint64_t word() {
    const uint64_t w = keep_word(pattern, phase);
    phase += step;
    phase -= phase >= period ? period : 0;
    return w;
  }
  inline uint64_t last(int64_t rest) const { return keep_bits(pattern, phase, rest); }
};

// All: every bit set.
struct All {
  inline uint64_t word() const { return ~uint64_t(0); }
  inline uint64_t last(int64_t rest) const { return low_bits(rest); }
};

// One run of n elements: full words of 64 keep bits, then the rest with lane masks for the
// elements that exist (their loads and stores touch nothing past the run).
template <typename K, typename Bits>
DROPBLOCK_AVX512 inline void run(const typename K::scalar_t* in, typename K::scalar_t* out, int64_t n, Bits bits,
                                 typename K::acc_t scale) {
  constexpr int kLanes = K::kLanes;
  constexpr uint32_t kAll = (uint32_t(1) << kLanes) - 1;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const uint64_t word = bits.word();
#pragma GCC unroll 8
    for (int q = 0; q < 64 / kLanes; ++q) {
      K::apply(in + i + q * kLanes, out + i + q * kLanes, static_cast<uint32_t>(word >> (q * kLanes)) & kAll, kAll,
               scale, true);
    }
  }
  if (i < n) {
    const int64_t rest = n - i;
    const uint64_t word = bits.last(rest);
    for (int64_t j = 0; j < rest; j += kLanes) {
      const uint32_t valid = static_cast<uint32_t>(low_bits(std::min<int64_t>(kLanes, rest - j)));
      K::apply(in + i + j, out + i + j, static_cast<uint32_t>(word >> j) & valid, valid, scale, false);
    }
  }
}

// The keep bits bit0 .. bit0 + plane - 1 repeated, for bits [0, 64 * words) of the repetition.
void repeat_plane(const uint64_t* mask, int64_t bit0, int64_t plane, std::vector<uint64_t>& pattern) {
  const int64_t words = (plane + 127) / 64 + 1;
  pattern.resize(static_cast<size_t>(words));
  int64_t phase = 0;  // of bit 64 * w in the plane
  for (int64_t w = 0; w < words; ++w) {
    uint64_t bits = 0;
    for (int64_t got = 0, at = phase; got < 64; at = 0) {
      const int64_t take = std::min<int64_t>(64 - got, plane - at);
      bits |= keep_bits(mask, bit0 + at, take) << got;
      got += take;
    }
    pattern[static_cast<size_t>(w)] = bits;
    phase = (phase + 64) % plane;
  }
}

// `planes` planes of `plane` elements, contiguous one after the other, all with the keep bits
// bit0 on: one run over all of them with the plane's bits repeated, so that a small plane costs
// no more than a large one (no set-up, no partial vector per plane).
template <typename K>
DROPBLOCK_AVX512 inline void planes_run(const typename K::scalar_t* in, typename K::scalar_t* out, int64_t planes,
                                        int64_t plane, const uint64_t* mask, int64_t bit0, typename K::acc_t scale) {
  thread_local std::vector<uint64_t> pattern;
  repeat_plane(mask, bit0, plane, pattern);
  run<K>(in, out, planes * plane, Periodic{pattern.data(), plane, 64 % plane, 0}, scale);
}

}  // namespace

DROPBLOCK_AVX512 void apply_run(const float* in, float* out, int64_t n, const uint64_t* mask, int64_t bit0,
                                float scale) {
  run<Float32>(in, out, n, Linear{mask, bit0}, scale);
}
DROPBLOCK_AVX512 void apply_run(const double* in, double* out, int64_t n, const uint64_t* mask, int64_t bit0,
                                double scale) {
  run<Float64>(in, out, n, Linear{mask, bit0}, scale);
}
DROPBLOCK_AVX512 void apply_run(const c10::BFloat16* in, c10::BFloat16* out, int64_t n, const uint64_t* mask,
                                int64_t bit0, float scale) {
  run<BFloat16>(in, out, n, Linear{mask, bit0}, scale);
}
DROPBLOCK_AVX512 void apply_run(const c10::Half* in, c10::Half* out, int64_t n, const uint64_t* mask, int64_t bit0,
                                float scale) {
  run<Float16>(in, out, n, Linear{mask, bit0}, scale);
}

DROPBLOCK_AVX512 void apply_planes(const float* in, float* out, int64_t planes, int64_t plane, const uint64_t* mask,
                                   int64_t bit0, float scale) {
  planes_run<Float32>(in, out, planes, plane, mask, bit0, scale);
}
DROPBLOCK_AVX512 void apply_planes(const double* in, double* out, int64_t planes, int64_t plane, const uint64_t* mask,
                                   int64_t bit0, double scale) {
  planes_run<Float64>(in, out, planes, plane, mask, bit0, scale);
}
DROPBLOCK_AVX512 void apply_planes(const c10::BFloat16* in, c10::BFloat16* out, int64_t planes, int64_t plane,
                                   const uint64_t* mask, int64_t bit0, float scale) {
  planes_run<BFloat16>(in, out, planes, plane, mask, bit0, scale);
}
DROPBLOCK_AVX512 void apply_planes(const c10::Half* in, c10::Half* out, int64_t planes, int64_t plane,
                                   const uint64_t* mask, int64_t bit0, float scale) {
  planes_run<Float16>(in, out, planes, plane, mask, bit0, scale);
}

DROPBLOCK_AVX512 void scale_run(const float* in, float* out, int64_t n, float scale) {
  run<Float32>(in, out, n, All{}, scale);
}
DROPBLOCK_AVX512 void scale_run(const double* in, double* out, int64_t n, double scale) {
  run<Float64>(in, out, n, All{}, scale);
}
DROPBLOCK_AVX512 void scale_run(const c10::BFloat16* in, c10::BFloat16* out, int64_t n, float scale) {
  run<BFloat16>(in, out, n, All{}, scale);
}
DROPBLOCK_AVX512 void scale_run(const c10::Half* in, c10::Half* out, int64_t n, float scale) {
  run<Float16>(in, out, n, All{}, scale);
}

#pragma GCC diagnostic pop

#else  // no AVX-512 kernels on this platform: usable() is false and the generic kernels run

bool usable() {
  static const bool ok = wanted();  // the setting is checked on every platform
  return ok && false;
}
// Never called (usable() is false); defined so that the callers need no platform test.
void apply_run(const float*, float*, int64_t, const uint64_t*, int64_t, float) {}
void apply_run(const double*, double*, int64_t, const uint64_t*, int64_t, double) {}
void apply_run(const c10::BFloat16*, c10::BFloat16*, int64_t, const uint64_t*, int64_t, float) {}
void apply_run(const c10::Half*, c10::Half*, int64_t, const uint64_t*, int64_t, float) {}
void apply_planes(const float*, float*, int64_t, int64_t, const uint64_t*, int64_t, float) {}
void apply_planes(const double*, double*, int64_t, int64_t, const uint64_t*, int64_t, double) {}
void apply_planes(const c10::BFloat16*, c10::BFloat16*, int64_t, int64_t, const uint64_t*, int64_t, float) {}
void apply_planes(const c10::Half*, c10::Half*, int64_t, int64_t, const uint64_t*, int64_t, float) {}
void scale_run(const float*, float*, int64_t, float) {}
void scale_run(const double*, double*, int64_t, double) {}
void scale_run(const c10::BFloat16*, c10::BFloat16*, int64_t, float) {}
void scale_run(const c10::Half*, c10::Half*, int64_t, float) {}

#endif

}  // namespace avx512
}  // namespace dropblock
