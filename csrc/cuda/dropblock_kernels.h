#pragma once
// Raw-pointer launchers of the DropBlock CUDA kernels. This header is shared by the ATen glue
// (dropblock_cuda.cpp, host compiler) and the kernels (mask_kernels.cu, apply_kernels.cu; nvcc), so it holds
// plain types only: no ATen, no c10 tensors. Every launcher enqueues on `stream` and never
// synchronises with the host; the caller checks launch errors.
#include <cstdint>

#include <cuda_runtime.h>

#include "../cuda_mask_kernel.h"
#include "../mask_logic.h"

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

// Fills the packed KEEP mask (`mask_words` 64-bit words, bit-identical to the CPU kernel) for the
// key `seed` and drop probability `p`, then writes the float64 scale
// numel / (eps + kept) to `scale` (kept = popcount * `count_multiplier`; numel == 0 -> 1).
// `scratch` holds mask_count_scratch_elements(mask_words) int64. Requires mask_words > 0.
// Returns the error of the launch set-up (the kernels' own errors surface at the next check).
cudaError_t launch_mask(const MaskGeometry& geometry, ScalarArg<double> p, double gamma_factor, ScalarArg<int64_t> seed,
                        uint64_t* mask, int64_t mask_words, int64_t count_multiplier, int64_t numel, double eps,
                        double* scale, int64_t* scratch, CudaMaskKernel kernel, cudaStream_t stream);

}  // namespace cuda
}  // namespace dropblock
