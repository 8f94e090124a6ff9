#pragma once
// What the CPU kernels share: when to go parallel, and vector clones of hot loops.
#include <algorithm>
#include <cstdint>

#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>  // at::internal::GRAIN_SIZE

namespace dropblock {

// The CPU kernels go parallel only where torch's element-wise ops do: past at::internal::GRAIN_SIZE
// elements. Below that a region is not worth its threads, and a child forked after the parent used
// the OpenMP pool hangs in its first parallel region (libgomp is not fork-safe): a DataLoader worker
// started with fork then runs small tensors on its own thread, as torch's own ops do.
constexpr int64_t kGrainElements = at::internal::GRAIN_SIZE;

// The grain (units per task) for `units` units of work that hold `elements` elements in all:
// all of them up to kGrainElements elements (serial), else about kGrainElements elements or more.
inline int64_t parallel_grain(int64_t units, int64_t elements) {
  const int64_t per_unit = std::max<int64_t>(1, elements / std::max<int64_t>(1, units));
  return elements <= kGrainElements ? std::max<int64_t>(1, units) : std::max<int64_t>(1, kGrainElements / per_unit);
}

// at::parallel_for over `units` units of work that hold `elements` elements in all, in tasks of
// parallel_grain's size.
template <typename F>
void parallel_over(int64_t units, int64_t elements, const F& f) {
  if (units <= 0) {
    return;
  }
  at::parallel_for(0, units, parallel_grain(units, elements), f);
}

// Clones of a hot loop for wider vector registers where the CPU has them (x86-64-v4: AVX-512
// F/BW/DQ/VL; v3: AVX2): Philox in the mask, the element loops of the apply.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DROPBLOCK_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DROPBLOCK_VECTOR_CLONES
#endif

}  // namespace dropblock
