#pragma once
// Division by a divisor fixed in advance, by a multiply-high, host and device.
#include <cstdint>

#include "host_device.h"

namespace dropblock {

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

}  // namespace dropblock
