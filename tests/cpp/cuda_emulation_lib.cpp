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

// Which apply kernel `kernel` is, for elements of type T: its path (ApplyPath) and vector width.
enum ApplyPath : int { kOther = 0, kContiguous = 1, kSingleValue = 2, kChannelsLast = 3, kStrided = 4, kStrided64 = 5 };

struct ApplyKernelInfo {
  int path;
  int width;
};

template <typename T>
ApplyKernelInfo apply_kernel_info(const void* kernel) {
  using namespace dropblock::cuda;
  ApplyKernelInfo info{kOther, 0};
  auto match = [&](auto* candidate, int path, int width) {
    if (reinterpret_cast<const void*>(candidate) == kernel) {
      info = {path, width};
    }
  };
  auto widths = [&](auto v) {
    constexpr int V = decltype(v)::value;
    if constexpr (V * sizeof(T) <= 16) {  // the widths the launchers can pick: at most 16 bytes
      match(&apply_contiguous_kernel<T, V, false>, kContiguous, V);
      match(&apply_contiguous_kernel<T, V, true>, kContiguous, V);
      match(&apply_single_value_kernel<T, V, false>, kSingleValue, V);
      match(&apply_single_value_kernel<T, V, true>, kSingleValue, V);
      match(&apply_channels_last_kernel<T, V, false>, kChannelsLast, V);
      match(&apply_channels_last_kernel<T, V, true>, kChannelsLast, V);
      match(&apply_strided_kernel<T, uint32_t, V, true, true>, kStrided, V);
      match(&apply_strided_kernel<T, uint32_t, V, true, false>, kStrided, V);
    }
  };
  widths(std::integral_constant<int, 1>{});
  widths(std::integral_constant<int, 2>{});
  widths(std::integral_constant<int, 4>{});
  widths(std::integral_constant<int, 8>{});
  match(&apply_strided_kernel<T, uint32_t, 1, false, true>, kStrided, 1);
  match(&apply_strided_kernel<T, uint32_t, 1, false, false>, kStrided, 1);
  match(&apply_strided_kernel<T, uint64_t, 1, false, false>, kStrided64, 1);
  return info;
}

ApplyKernelInfo last_apply_kernel(int kind) {
  const void* kernel = dropblock_emulation::last_kernel.load();
  switch (static_cast<dropblock::cuda::ScalarKind>(kind)) {
    case dropblock::cuda::ScalarKind::kFloat:
      return apply_kernel_info<float>(kernel);
    case dropblock::cuda::ScalarKind::kDouble:
      return apply_kernel_info<double>(kernel);
    case dropblock::cuda::ScalarKind::kHalf:
      return apply_kernel_info<__half>(kernel);
    case dropblock::cuda::ScalarKind::kBFloat16:
      return apply_kernel_info<__nv_bfloat16>(kernel);
  }
  return {kOther, 0};
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
  dropblock::cuda::MaskParams params{
      g,    p_arg,      gamma_factor,     key_arg,
      mask, mask_words, count_multiplier, numel,
      eps,  scale,      scratch,          static_cast<dropblock::CudaMaskKernel>(kernel)};
  return static_cast<int>(dropblock::cuda::launch_mask(params, nullptr));
}

// The path kAuto takes (dropblock::CudaMaskKernel) for this geometry.
int emulated_auto_mask_kernel(const int64_t* geometry) {
  return static_cast<int>(
      dropblock::cuda::choose_mask_kernel(geometry_from(geometry), dropblock::CudaMaskKernel::kAuto));
}

// kind: 0 float, 1 double, 2 half, 3 bfloat16 (dropblock::cuda::ScalarKind); params: an
// ApplyParams that the caller (ctypes) lays out as the struct is.
void emulated_apply(int kind, const dropblock::cuda::ApplyParams* params) {
  dropblock::cuda::launch_apply(static_cast<dropblock::cuda::ScalarKind>(kind), *params, nullptr);
}

// sizeof(ApplyParams), for the ctypes mirror to check its layout against.
int64_t emulated_apply_params_size() {
  return static_cast<int64_t>(sizeof(dropblock::cuda::ApplyParams));
}

// The path (ApplyPath) of the apply kernel that the latest emulated launch ran, for elements of
// `kind`; 0 when that launch was not an apply kernel (a mask kernel).
int emulated_last_apply_path(int kind) {
  return last_apply_kernel(kind).path;
}

// The vector width (elements) of the apply kernel that the latest emulated launch ran (contiguous,
// channels-last or strided), for elements of `kind`; 0 when that launch was not an apply kernel.
int emulated_last_apply_vector_width(int kind) {
  return last_apply_kernel(kind).width;
}

}  // extern "C"
