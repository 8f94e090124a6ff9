#pragma once
// The packed mask of the mask law (mask_logic.h), host and device: its words, the clears of its
// bits, reading its keep bits, and the scale from the kept count.
#include <cstdint>

#include "host_device.h"

namespace dropblock {

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

C10_HOST_DEVICE inline int lowest_bit64(uint64_t v) {
#ifdef __CUDA_ARCH__
  return __ffsll(static_cast<long long>(v)) - 1;
#else
  return __builtin_ctzll(v);
#endif
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
