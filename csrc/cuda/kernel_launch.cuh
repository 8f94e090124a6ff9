#pragma once
// What the CUDA kernel files share: the CTA size and the launch (a real one, or its host
// emulation in tests: tests/cpp/cuda_emulation.h, which runs these very kernels without a GPU).
#include <cstdint>

#include <cuda_runtime.h>

#include <c10/macros/Macros.h>

namespace dropblock {
namespace cuda {

// Threads per CTA (CUDA thread block) of every kernel.
constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

C10_HOST_DEVICE inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// kernel<<<grid, threads, 0, stream>>>(args...), or its host emulation in tests
// (tests/cpp/cuda_emulation.h), which runs these very kernels without a GPU.
template <typename... Params, typename... Args>
inline void launch(void (*kernel)(Params...), dim3 grid, unsigned threads, cudaStream_t stream, Args... args) {
#ifdef DROPBLOCK_CUDA_EMULATION
  (void)stream;
  emulate_launch(kernel, grid, dim3(threads), args...);
#else
  // clang-format off: a .cuh is formatted as C++, which splits the launch's >>>
  kernel<<<grid, threads, 0, stream>>>(args...);
  // clang-format on
#endif
}

inline unsigned grid_for(int64_t work, int64_t per_block) {
  const int64_t blocks = ceil_div(work, per_block);
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

}  // namespace cuda
}  // namespace dropblock
