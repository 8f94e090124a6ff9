#pragma once
// Strides for the host-side C++ tests of the CUDA code.
#include <cstdint>
#include <vector>

// Strides of a dense tensor of `sizes` whose dims lie in memory in `order` (outermost first),
// times `step` (every step-th element).
inline std::vector<int64_t> dense_strides(const std::vector<int64_t>& sizes, const std::vector<int>& order,
                                          int64_t step = 1) {
  std::vector<int64_t> strides(sizes.size());
  int64_t running = step;
  for (int i = static_cast<int>(order.size()) - 1; i >= 0; --i) {
    strides[order[i]] = running;
    running *= sizes[order[i]];
  }
  return strides;
}
