#pragma once
// Index arithmetic of the CUDA apply kernels, kept free of CUDA so that it runs on the host too:
// tests/cpp/apply_indexing_test.cpp checks it against plain stride arithmetic on every CI run.
#include <cstdint>

#include <c10/macros/Macros.h>

#include "../mask_logic.h"

namespace dropblock {
namespace cuda {

constexpr int kMaxApplyDims = 5;

// Mask bit of element e of a contiguous tensor whose channels share the mask (CS = C * S).
C10_HOST_DEVICE inline int64_t shared_mask_bit(int64_t e, int64_t S, int64_t CS) {
  const int64_t sample = e / CS;
  return sample * S + (e - sample * CS) % S;
}

// Any strides: one thread per element, visiting the dims in `order` (outermost first, the
// output's memory order), so that writes (and reads of alike-strided inputs) coalesce.
template <typename index_t>
struct StridedParams {
  int dims;
  index_t size[kMaxApplyDims];  // in visiting order
  index_t in_stride[kMaxApplyDims];
  index_t out_stride[kMaxApplyDims];
  index_t bit_stride[kMaxApplyDims];
  int64_t numel;
};

// Offsets of element e (in visiting order) in the input, the output and the mask.
template <typename index_t>
C10_HOST_DEVICE inline void strided_offsets(const StridedParams<index_t>& p, int64_t e, index_t& in_offset,
                                            index_t& out_offset, index_t& bit) {
  index_t rest = static_cast<index_t>(e);
  in_offset = 0;
  out_offset = 0;
  bit = 0;
DROPBLOCK_UNROLL
  for (int d = kMaxApplyDims - 1; d >= 0; --d) {
    if (d < p.dims) {
      const index_t coordinate = rest % p.size[d];
      rest /= p.size[d];
      in_offset += coordinate * p.in_stride[d];
      out_offset += coordinate * p.out_stride[d];
      bit += coordinate * p.bit_stride[d];
    }
  }
}

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

// The strided kernel's parameters: dims visited by decreasing output stride (stable, so ties
// keep the logical order); mask bits at the logical row-major index, channel stride 0 when shared.
template <typename index_t>
StridedParams<index_t> make_strided_params(int dim, const int64_t* sizes, const int64_t* in_strides,
                                           const int64_t* out_strides, bool shared) {
  int64_t bit_strides[kMaxApplyDims];
  int64_t running = 1;
  for (int d = dim - 1; d >= 0; --d) {
    bit_strides[d] = running;
    running *= sizes[d];
  }
  if (shared) {
    bit_strides[0] = bit_strides[1];  // S
    bit_strides[1] = 0;
  }
  int order[kMaxApplyDims];
  for (int d = 0; d < dim; ++d) {
    order[d] = d;
  }
  for (int i = 1; i < dim; ++i) {
    for (int j = i; j > 0 && out_strides[order[j - 1]] < out_strides[order[j]]; --j) {
      const int t = order[j];
      order[j] = order[j - 1];
      order[j - 1] = t;
    }
  }
  StridedParams<index_t> p{};
  p.dims = dim;
  p.numel = running;
  for (int d = 0; d < dim; ++d) {
    p.size[d] = static_cast<index_t>(sizes[order[d]]);
    p.in_stride[d] = static_cast<index_t>(in_strides[order[d]]);
    p.out_stride[d] = static_cast<index_t>(out_strides[order[d]]);
    p.bit_stride[d] = static_cast<index_t>(bit_strides[order[d]]);
  }
  return p;
}

// Whether every index of the strided kernel fits 32 bits (cheaper divisions).
inline bool strided_fits_32bit(int dim, const int64_t* sizes, const int64_t* in_strides, const int64_t* out_strides) {
  int64_t numel = 1, max_in = 0, max_out = 0;
  for (int d = 0; d < dim; ++d) {
    numel *= sizes[d];
    max_in += (sizes[d] - 1) * in_strides[d];
    max_out += (sizes[d] - 1) * out_strides[d];
  }
  const int64_t limit = int64_t(1) << 31;
  return numel < limit && max_in < limit && max_out < limit;
}

}  // namespace cuda
}  // namespace dropblock
