#pragma once
// The raw-pointer launcher of the DropBlock apply kernels (apply_kernels.cu): out = keep ? in * scale : 0.
// Shared by the ATen glue (dropblock_cuda.cpp, host compiler), the kernels (nvcc) and the host
// emulation's tests, so it holds plain types only: no ATen, no c10 tensors. The launcher enqueues
// on `stream` and never synchronises with the host; the caller checks launch errors.
// Words: a CTA is a CUDA thread block; a "block" is a dropped DropBlock block.
#include <cstdint>

#include <cuda_runtime.h>

#include "apply_indexing.h"

namespace dropblock {
namespace cuda {

enum class ScalarKind : int { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3 };

// Everything one apply call needs (one struct, as flash-attention's Flash_fwd_params, instead of a
// list of positional arguments that every caller and the emulation's ctypes wrapper would mirror).
// Plain data: tests/test_cuda_emulated.py builds the same layout with ctypes.
struct ApplyParams {
  const void* in;        // input elements (the dtype of launch_apply's `kind`)
  void* out;             // output elements; may be `in` (in place) when the strides are equal
  const uint64_t* mask;  // packed KEEP bits, 8-byte aligned: bit g % 64 of word g / 64 for logical
                         // index g = plane * S + position (planes (n, c), or n when shared_channels)
  const double* scale;   // the float64 scale, in device memory: read by the kernels (capture-safe)
  int dim;               // 3 to kMaxApplyDims: (N, C, *spatial)
  int64_t sizes[kMaxApplyDims];
  int64_t in_strides[kMaxApplyDims];   // in elements; 0 along an expanded dim
  int64_t out_strides[kMaxApplyDims];  // in elements; the output must not overlap itself
  bool shared_channels;                // one mask plane per sample, shared by all its channels
};

// out = keep ? in * scale : 0 (in the op math type: float for half / bfloat16; a dropped element
// is +0 whatever the input holds). Picks the path by layout: vectors over contiguous memory (and
// over one expanded value), channels-last tiles, or the strided walk in the output's memory order.
void launch_apply(ScalarKind kind, const ApplyParams& params, cudaStream_t stream);

}  // namespace cuda
}  // namespace dropblock
