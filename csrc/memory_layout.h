#pragma once
// Dense memory layouts the kernels of every backend recognise, from plain sizes and strides (no
// ATen, so that the CUDA index header and its host-side tests use them too).
#include <cstdint>

namespace dropblock {

// Whether `strides` lay a tensor of `sizes` out row-major (size-1 dims may have any stride).
inline bool is_row_major(int dim, const int64_t* sizes, const int64_t* strides) {
  int64_t expected = 1;
  for (int d = dim - 1; d >= 0; --d) {
    if (sizes[d] != 1 && strides[d] != expected) {
      return false;
    }
    expected *= sizes[d];
  }
  return true;
}

// Whether a tensor (N, C, *spatial) of `sizes` with `strides` is dense with the channels innermost:
// (N, *spatial, C) in memory, as torch.channels_last and channels_last_3d lay tensors out.
inline bool is_channels_innermost(int dim, const int64_t* sizes, const int64_t* strides) {
  if (sizes[1] != 1 && strides[1] != 1) {
    return false;
  }
  int64_t expected = sizes[1];
  for (int d = dim - 1; d >= 2; --d) {
    if (sizes[d] != 1 && strides[d] != expected) {
      return false;
    }
    expected *= sizes[d];
  }
  return sizes[0] == 1 || strides[0] == expected;
}

}  // namespace dropblock
