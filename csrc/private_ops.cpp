// The private ops of dropblock_cuda, for tests, benchmarks and build information:
//   _cuda_version          the CUDA version the kernels were compiled with (-1 without them);
//   _set_cuda_mask_kernel  picks one of the two CUDA mask paths (they give the same mask;
//                          benchmarks and tests compare them), and the runtime setting behind it,
//                          read by the CUDA glue through requested_cuda_mask_kernel().
#include <atomic>
#include <cstdlib>
#include <string>

#include <c10/util/Exception.h>
#include <torch/library.h>

#include "cuda_mask_kernel.h"

namespace dropblock {
#ifdef DROPBLOCK_WITH_CUDA
int64_t compiled_cuda_version();
#endif
}  // namespace dropblock

namespace {

using dropblock::CudaMaskKernel;

int64_t cuda_version() {
#ifdef DROPBLOCK_WITH_CUDA
  return dropblock::compiled_cuda_version();
#else
  return -1;
#endif
}

constexpr const char* kMaskKernelNames[] = {"auto", "scatter", "window"};  // CudaMaskKernel's order

CudaMaskKernel parse_mask_kernel(const std::string& name, const char* what) {
  for (int i = 0; i < 3; ++i) {
    if (name == kMaskKernelNames[i]) {
      return static_cast<CudaMaskKernel>(i);
    }
  }
  TORCH_CHECK_VALUE(false, what, ": expected 'auto', 'window' or 'scatter', got '", name, "'");
}

// Starts from DROPBLOCK_CUDA_MASK_KERNEL, read once (getenv is not safe against a concurrent
// setenv, so it is not read on every call).
std::atomic<int>& mask_kernel_setting() {
  static std::atomic<int> setting{[] {
    const char* env = std::getenv("DROPBLOCK_CUDA_MASK_KERNEL");
    return static_cast<int>(env == nullptr || *env == '\0' ? CudaMaskKernel::kAuto
                                                           : parse_mask_kernel(env, "DROPBLOCK_CUDA_MASK_KERNEL"));
  }()};
  return setting;
}

std::string set_cuda_mask_kernel(const std::string& kernel) {
  const CudaMaskKernel requested = parse_mask_kernel(kernel, "_set_cuda_mask_kernel: kernel");
  return kMaskKernelNames[mask_kernel_setting().exchange(static_cast<int>(requested))];
}

}  // namespace

namespace dropblock {
CudaMaskKernel requested_cuda_mask_kernel() {
  return static_cast<CudaMaskKernel>(mask_kernel_setting().load(std::memory_order_relaxed));
}
}  // namespace dropblock

TORCH_LIBRARY_FRAGMENT(dropblock_cuda, m) {
  m.def("_cuda_version() -> int", &cuda_version);
  // Returns the previous setting: "auto" (the geometry decides), "window" or "scatter".
  m.def("_set_cuda_mask_kernel(str kernel) -> str", &set_cuda_mask_kernel);
}
