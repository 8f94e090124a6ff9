#include "mask_params.h"

#include <cmath>

#include <c10/util/Exception.h>

namespace dropblock {

int64_t mask_planes(const at::Tensor& input, bool shared_channels) {
  return shared_channels ? input.size(0) : input.size(0) * input.size(1);
}

MaskGeometry make_mask_geometry(const at::Tensor& input, c10::IntArrayRef block_size, bool shared_channels) {
  const int64_t spatial_dims = input.dim() - 2;
  TORCH_CHECK_VALUE(spatial_dims >= 1 && spatial_dims <= kMaxSpatialDims,
                    "input: expected (N, C, *spatial) with 1 to 3 spatial dimensions, got ", input.dim(),
                    " dimensions");
  TORCH_CHECK_VALUE(static_cast<int64_t>(block_size.size()) == spatial_dims,
                    "block_size: expected one size per spatial dimension (", spatial_dims, "), got ",
                    block_size.size());
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()),
                   "input: expected a floating point tensor, got ", input.scalar_type());
  MaskGeometry g{};
  g.planes = mask_planes(input, shared_channels);
  const int64_t pad = kMaxSpatialDims - spatial_dims;
  for (int d = 0; d < kMaxSpatialDims; ++d) {
    if (d < pad) {
      g.size[d] = 1;
      g.block[d] = 1;
      continue;
    }
    const int64_t requested = block_size[d - pad];
    TORCH_CHECK_VALUE(requested >= 1, "block_size: every size must be >= 1, got ", block_size);
    g.size[d] = input.size(2 + d - pad);
    g.block[d] = std::min(requested, std::max<int64_t>(g.size[d], 1));
  }
  return g;
}

double gamma_factor(const MaskGeometry& g) {
  double factor = 1.0;
  for (int d = 0; d < kMaxSpatialDims; ++d) {
    if (g.size[d] == 0) {
      return 0.0;
    }
    factor *= static_cast<double>(g.size[d]) / (static_cast<double>(g.block[d]) * g.seed_extent(d));
  }
  return factor;
}

std::optional<double> check_mask_args(const at::Tensor& input, const at::Tensor& seed, const at::Tensor& p,
                                      double eps) {
  TORCH_CHECK_VALUE(eps >= 0.0, "eps: expected a non-negative number, got ", eps);
  TORCH_CHECK_VALUE(seed.dim() == 0 && seed.scalar_type() == at::kLong &&
                        (seed.device() == input.device() || seed.device().is_cpu()),
                    "seed: expected a 0-dim int64 tensor on the CPU or on the input's device (", input.device(),
                    "), got ", seed.scalar_type(), " of shape ", seed.sizes(), " on ", seed.device());
  TORCH_CHECK_VALUE(p.dim() == 0 && p.scalar_type() == at::kDouble &&
                        (p.device() == input.device() || p.device().is_cpu()),
                    "p: expected a 0-dim float64 tensor on the CPU or on the input's device (", input.device(),
                    "), got ", p.scalar_type(), " of shape ", p.sizes(), " on ", p.device());
  if (!p.device().is_cpu()) {
    return std::nullopt;
  }
  const double value = p.item<double>();
  TORCH_CHECK_VALUE(value >= 0.0 && value <= 1.0, "p: drop probability has to be between 0 and 1, got ", value);
  return value;
}

int64_t packed_mask_bytes(const MaskGeometry& g) {
  const int64_t bits = g.planes * g.plane_numel();
  return (bits + 63) / 64 * 8;
}

void check_apply_args(const at::Tensor& input, const at::Tensor& mask, const at::Tensor& scale, bool shared_channels) {
  TORCH_CHECK_VALUE(input.dim() >= 3 && input.dim() <= 2 + kMaxSpatialDims,
                    "input: expected (N, C, *spatial) with 1 to 3 spatial dimensions, got ", input.dim(),
                    " dimensions");
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()),
                   "input: expected a floating point tensor, got ", input.scalar_type());
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kByte, "mask: expected uint8, got ", mask.scalar_type());
  TORCH_CHECK_TYPE(scale.scalar_type() == at::kDouble, "scale: expected float64, got ", scale.scalar_type());
  TORCH_CHECK_VALUE(scale.numel() == 1, "scale: expected one element, got ", scale.numel());
  TORCH_CHECK_VALUE(mask.dim() == 1 && mask.is_contiguous(), "mask: expected a contiguous 1-d tensor");
  TORCH_CHECK_VALUE(mask.device() == input.device() && scale.device() == input.device(),
                    "mask and scale must be on the input's device (", input.device(), ")");
  int64_t spatial = 1;
  for (int64_t d = 2; d < input.dim(); ++d) {
    spatial *= input.size(d);
  }
  const int64_t bits = mask_planes(input, shared_channels) * spatial;
  TORCH_CHECK_VALUE(mask.numel() == (bits + 63) / 64 * 8, "mask: expected ", (bits + 63) / 64 * 8,
                    " bytes for an input of shape ", input.sizes(), ", got ", mask.numel());
}

}  // namespace dropblock
