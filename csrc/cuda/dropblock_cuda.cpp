// CUDA backend of the DropBlock ops: argument checks and tensors here, kernels in
// mask_kernels.cu and apply_kernels.cu. Nothing here waits for the device: a seed or p on the device is read by
// the kernels (one on the host is passed by value) and the scale is written by them, so the ops
// can be captured in a CUDA graph.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../op_args.h"
#include "../packed_mask.h"
#include "apply_kernels.h"
#include "mask_kernels.h"

namespace dropblock {
namespace {

std::tuple<at::Tensor, at::Tensor> drop_block_mask_cuda(const at::Tensor& input, const at::Tensor& seed,
                                                        const at::Tensor& p, c10::IntArrayRef block_size, double eps,
                                                        bool shared_channels) {
  const MaskGeometry g = make_mask_geometry(input, block_size, shared_channels);
  const CudaMaskKernel kernel = requested_cuda_mask_kernel();
  // A p on the device stays there (no sync, no range check): the kernels turn it into the seed
  // count table; p < 0 or NaN seeds nowhere, and gamma = min(p * gamma_factor, 1) caps the rest. A
  // seed or p on the host is read here and passed by value.
  const std::optional<double> host_p = check_mask_args(input, seed, p, eps);
  const cuda::ScalarArg<double> p_arg =
      host_p ? cuda::ScalarArg<double>{nullptr, *host_p} : cuda::ScalarArg<double>{p.const_data_ptr<double>(), 0.0};
  const cuda::ScalarArg<int64_t> key_arg = seed.is_cpu() ? cuda::ScalarArg<int64_t>{nullptr, seed.item<int64_t>()}
                                                         : cuda::ScalarArg<int64_t>{seed.const_data_ptr<int64_t>(), 0};
  const c10::cuda::CUDAGuard guard(input.device());
  if (seed.is_cpu() && c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) {
    TORCH_WARN(
        "drop_block_mask: a seed on the host is captured by value, so every replay of this CUDA graph "
        "drops the same blocks; draw it with the input device's generator for fresh masks per replay");
  }

  const int64_t bytes = packed_mask_bytes(g.planes * g.plane_numel());
  at::Tensor mask = at::empty({bytes}, input.options().dtype(at::kByte));
  if (bytes == 0) {
    at::Tensor scale = at::empty({}, input.options().dtype(at::kDouble));
    scale.fill_(keep_scale(input.numel(), 0, eps));
    return {mask, scale};
  }
  const int64_t words = bytes / 8;
  // The scale and the count's scratch (int64s, 8 bytes as a double) in one allocation, one allocator call
  // less per forward: the scale is a 0-dim tensor on its first element (not a view: nothing else refers to
  // the storage), the scratch follows. While the scale is saved for backward it keeps the scratch too, a few
  // KB at most ((CTAs + 1) * 8 bytes). The mask stays a storage of its own: the op returns two tensors that
  // callers (autograd, torch.compile, saved-tensor hooks) may treat as independent.
  at::Tensor scale = at::empty({1 + cuda::mask_count_scratch_elements(words)}, input.options().dtype(at::kDouble));
  scale.unsafeGetTensorImpl()->set_sizes_contiguous({});
  static_assert(sizeof(double) == sizeof(int64_t), "the scratch's int64s sit in double-sized slots");
  cuda::MaskParams params{};
  params.geometry = g;
  params.p = p_arg;
  params.gamma_factor = gamma_factor(g);
  params.key = key_arg;
  params.mask = reinterpret_cast<uint64_t*>(mask.data_ptr<uint8_t>());
  params.mask_words = words;
  params.count_multiplier = shared_channels ? input.size(1) : 1;
  params.numel = input.numel();
  params.eps = eps;
  params.scale = scale.data_ptr<double>();
  params.scratch = reinterpret_cast<int64_t*>(scale.data_ptr<double>() + 1);
  params.kernel = kernel;
  C10_CUDA_CHECK(cuda::launch_mask(params, c10::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {mask, scale};
}

cuda::ScalarKind scalar_kind(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return cuda::ScalarKind::kFloat;
    case at::kDouble:
      return cuda::ScalarKind::kDouble;
    case at::kHalf:
      return cuda::ScalarKind::kHalf;
    case at::kBFloat16:
      return cuda::ScalarKind::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, "drop_block_apply: unsupported dtype ", type, " on CUDA");
  }
}

void apply_into(const at::Tensor& input, at::Tensor& output, const at::Tensor& mask, const at::Tensor& scale,
                bool shared_channels) {
  if (input.numel() == 0) {
    return;
  }
  const cuda::ScalarKind kind = scalar_kind(input.scalar_type());
  const at::Tensor words = word_aligned(mask);
  // The strides as they are: an expanded input (stride 0, e.g. the gradient of y.sum()) is read
  // where it lies, never materialised; launch_apply picks the path for the layout.
  cuda::ApplyParams params{};
  params.in = input.const_data_ptr();
  params.out = output.data_ptr();
  params.mask = reinterpret_cast<const uint64_t*>(words.const_data_ptr());
  params.scale = scale.const_data_ptr<double>();
  params.dim = static_cast<int>(input.dim());
  for (int d = 0; d < params.dim; ++d) {
    params.sizes[d] = input.size(d);
    params.in_strides[d] = input.stride(d);
    params.out_strides[d] = output.stride(d);
  }
  params.shared_channels = shared_channels;
  cuda::launch_apply(kind, params, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor drop_block_apply_cuda(const at::Tensor& input, const at::Tensor& mask, const at::Tensor& scale,
                                 bool shared_channels) {
  check_apply_args(input, mask, scale, shared_channels);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor output = at::empty_like(input);
  apply_into(input, output, mask, scale, shared_channels);
  return output;
}

void drop_block_apply_inplace_cuda(at::Tensor& input, const at::Tensor& mask, const at::Tensor& scale,
                                   bool shared_channels) {
  check_apply_args(input, mask, scale, shared_channels);
  check_inplace_args(input, mask, scale);
  const c10::cuda::CUDAGuard guard(input.device());
  apply_into(input, input, mask, scale, shared_channels);
}

}  // namespace

TORCH_LIBRARY_IMPL(dropblock_cuda, CUDA, m) {
  m.impl("drop_block_mask", &drop_block_mask_cuda);
  m.impl("drop_block_apply", &drop_block_apply_cuda);
  m.impl("drop_block_apply_", &drop_block_apply_inplace_cuda);
}

}  // namespace dropblock
