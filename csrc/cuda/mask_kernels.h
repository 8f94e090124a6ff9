#pragma once
// The raw-pointer launcher of the CUDA mask kernels (apply_kernels.h has the apply's). Shared by
// the ATen glue (dropblock_cuda.cpp, host compiler) and the kernels (mask_kernels.cu, nvcc), so it
// holds plain types only: no ATen, no c10 tensors. The launcher enqueues on `stream` and never
// synchronises with the host; the caller checks launch errors.
#include <cstdint>

#include <cuda_runtime.h>

#include "../cuda_mask_kernel.h"
#include "../seed_grid.h"

namespace dropblock {
namespace cuda {

// A scalar argument of the mask kernels: read from device memory at run time when `device` is
// set (so a CUDA graph replays with the tensor's current value), else passed by `value` (an
// argument that lives on the host: no copy to the device, no extra kernel).
template <typename T>
struct ScalarArg {
  const T* device;
  T value;
};

// Scratch of the mask kernels' count (a finished-block counter and one partial sum per block), in
// int64: the caller provides it.
int64_t mask_count_scratch_elements(int64_t mask_words);

// The path that runs for this geometry: `requested`, or for kAuto the window kernel unless blocks
// reach back too far for a window (see ../cuda_mask_kernel.h).
CudaMaskKernel choose_mask_kernel(const MaskGeometry& geometry, CudaMaskKernel requested);

// Everything the mask kernels need, one documented field each (after flash-attention's params
// structs): the launcher's only argument besides the stream.
struct MaskParams {
  MaskGeometry geometry;     // planes of D x H x W, clamped block sizes
  ScalarArg<double> p;       // drop probability (a device p is not range-checked: NaN / <= 0 seed nowhere)
  double gamma_factor;       // seed rate per unit of p: gamma = min(p * gamma_factor, 1) (op_args.h)
  ScalarArg<int64_t> key;    // the Philox key (the ops' `seed` argument)
  uint64_t* mask;            // out: the packed KEEP mask, `mask_words` 64-bit words, bit-identical to the CPU's
  int64_t mask_words;        // > 0
  int64_t count_multiplier;  // kept = popcount * count_multiplier (C for a mask shared by the channels)
  int64_t numel;             // elements of the input: scale = numel / (eps + kept), 1 when numel == 0
  double eps;
  double* scale;          // out: one float64 on the device
  int64_t* scratch;       // mask_count_scratch_elements(mask_words) int64 on the device
  CudaMaskKernel kernel;  // the path asked for (kAuto: the geometry decides)
};

// Fills the mask and writes the scale by the law of ../mask_logic.h. Returns the error of the
// launch set-up (the kernels' own errors surface at the next check).
cudaError_t launch_mask(const MaskParams& params, cudaStream_t stream);

}  // namespace cuda
}  // namespace dropblock
