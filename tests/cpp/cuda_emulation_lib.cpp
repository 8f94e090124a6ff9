// csrc/cuda/mask_kernels.cu and apply_kernels.cu compiled for the host with its kernels emulated
// (cuda_emulation.h), behind a C interface that tests/test_cuda_emulated.py calls through ctypes
// with CPU tensors' memory. No GPU and no CUDA runtime library are involved.
#define DROPBLOCK_CUDA_EMULATION
// Few window blocks, so that small masks already take windows in turns.
#define DROPBLOCK_WINDOW_BLOCKS 3
// Small windows (8 chunks drawn each), so that masks of a few thousand bits span many windows.
#define DROPBLOCK_WINDOW_DRAWS 8
#include "cuda_emulation.h"

#include "cuda/mask_kernels.cu"
#include "cuda/apply_kernels.cu"

#include <type_traits>

using dropblock::MaskGeometry;
using dropblock::cuda::ScalarArg;

namespace {

// geometry: planes, then size[3], then block[3] (already clamped, as make_mask_geometry does).
MaskGeometry geometry_from(const int64_t* geometry) {
  MaskGeometry g{};
  g.planes = geometry[0];
  for (int d = 0; d < 3; ++d) {
    g.size[d] = geometry[1 + d];
    g.block[d] = geometry[4 + d];
  }
  return g;
}

// V when `kernel` is apply_contiguous_kernel<T, V, shared or not>, else 0.
template <typename T>
int contiguous_apply_width(const void* kernel) {
  int width = 0;
  auto check = [&](auto v) {
    constexpr int V = decltype(v)::value;
    if constexpr (V * sizeof(T) <= 16) {  // the widths the launcher can pick: at most 16 bytes
      using dropblock::cuda::apply_contiguous_kernel;
      for (const void* candidate : {reinterpret_cast<const void*>(&apply_contiguous_kernel<T, V, false>),
                                    reinterpret_cast<const void*>(&apply_contiguous_kernel<T, V, true>)}) {
        width = candidate == kernel ? V : width;
      }
    }
  };
  check(std::integral_constant<int, 1>{});
  check(std::integral_constant<int, 2>{});
  check(std::integral_constant<int, 4>{});
  check(std::integral_constant<int, 8>{});
  return width;
}

}  // namespace

extern "C" {

int64_t emulated_scratch_elements(int64_t mask_words) {
  return dropblock::cuda::mask_count_scratch_elements(mask_words);
}

// geometry: see geometry_from. seed_on_device / p_on_device: pass the value through memory (as a
// device tensor would) instead of by value.
int emulated_mask(const int64_t* geometry, double p, int p_on_device, double gamma_factor, int64_t seed,
                  int seed_on_device, uint64_t* mask, int64_t mask_words, int64_t count_multiplier, int64_t numel,
                  double eps, double* scale, int64_t* scratch, int kernel) {
  const MaskGeometry g = geometry_from(geometry);
  const ScalarArg<double> p_arg = p_on_device ? ScalarArg<double>{&p, 0.0} : ScalarArg<double>{nullptr, p};
  const ScalarArg<int64_t> key_arg = seed_on_device ? ScalarArg<int64_t>{&seed, 0} : ScalarArg<int64_t>{nullptr, seed};
  dropblock::cuda::MaskParams params{g,    p_arg, gamma_factor, key_arg, mask,    mask_words,
                                     count_multiplier, numel, eps,     scale, scratch,
                                     static_cast<dropblock::CudaMaskKernel>(kernel)};
  return static_cast<int>(dropblock::cuda::launch_mask(params, nullptr));
}

// The path kAuto takes (dropblock::CudaMaskKernel) for this geometry.
int emulated_auto_mask_kernel(const int64_t* geometry) {
  return static_cast<int>(dropblock::cuda::choose_mask_kernel(geometry_from(geometry), dropblock::CudaMaskKernel::kAuto));
}

// kind: 0 float, 1 double, 2 half, 3 bfloat16 (dropblock::cuda::ScalarKind).
void emulated_apply(int kind, const void* in, void* out, int dim, const int64_t* sizes, const int64_t* in_strides,
                    const int64_t* out_strides, const uint64_t* mask, const double* scale, int shared_channels) {
  dropblock::cuda::launch_apply(static_cast<dropblock::cuda::ScalarKind>(kind), in, out, dim, sizes, in_strides,
                                out_strides, mask, scale, shared_channels != 0, nullptr);
}

// The vector width (elements) of the contiguous apply kernel that the latest emulated launch ran,
// for elements of `kind`; 0 when that launch was another kernel (tiles, strided, a mask kernel).
int emulated_last_apply_vector_width(int kind) {
  const void* kernel = dropblock_emulation::last_kernel.load();
  switch (static_cast<dropblock::cuda::ScalarKind>(kind)) {
    case dropblock::cuda::ScalarKind::kFloat:
      return contiguous_apply_width<float>(kernel);
    case dropblock::cuda::ScalarKind::kDouble:
      return contiguous_apply_width<double>(kernel);
    case dropblock::cuda::ScalarKind::kHalf:
      return contiguous_apply_width<__half>(kernel);
    case dropblock::cuda::ScalarKind::kBFloat16:
      return contiguous_apply_width<__nv_bfloat16>(kernel);
  }
  return 0;
}

}  // extern "C"
