#pragma once
// Philox4x32-10, the random bits of the mask law (mask_logic.h), host and device.
#include <cstdint>

#include "host_device.h"

namespace dropblock {

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

}  // namespace dropblock
