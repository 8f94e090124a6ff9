#include "op_args.h"

#include <cmath>

#include <ATen/MemoryOverlap.h>
#include <c10/util/Exception.h>

namespace dropblock {
namespace {

// What both ops ask of their input: (N, C, *spatial) with 1 to 3 spatial dimensions, of a dtype the
// kernels have (at::isFloatingType also admits the float8 types, which they do not).
void check_input(const at::Tensor& input) {
  TORCH_CHECK_VALUE(input.dim() >= 3 && input.dim() <= 2 + kMaxSpatialDims,
                    "input: expected (N, C, *spatial) with 1 to 3 spatial dimensions, got ", input.dim(),
                    " dimensions");
  const at::ScalarType type = input.scalar_type();
  TORCH_CHECK_TYPE(type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16,
                   "input: expected a float16, bfloat16, float32 or float64 tensor, got ", type);
}

// Bits of the packed mask of `input`: one per (plane, spatial position). A zero-size input may have
// sizes whose products overflow int64 (its numel is 0): refused, not wrapped around (the kernels
// take the plane's size, the planes and their product as int64). The running products are
// checked in this order (the fake kernels check the same ones): N * C unless the channels share
// the mask, each spatial size into the plane's size, then planes * plane size.
int64_t mask_bits(const at::Tensor& input, bool shared_channels) {
  int64_t planes = input.size(0), spatial = 1, bits = 0;
  bool overflows = !shared_channels && __builtin_mul_overflow(planes, input.size(1), &planes);
  for (int64_t d = 2; d < input.dim(); ++d) {
    overflows = __builtin_mul_overflow(spatial, input.size(d), &spatial) || overflows;
  }
  overflows = __builtin_mul_overflow(planes, spatial, &bits) || overflows;
  TORCH_CHECK_VALUE(!overflows, "input: a mask for shape ", input.sizes(), " would have more than 2**63 - 1 bits");
  return bits;
}

}  // namespace

MaskGeometry make_mask_geometry(const at::Tensor& input, c10::IntArrayRef block_size, bool shared_channels) {
  check_input(input);
  const int64_t spatial_dims = input.dim() - 2;
  TORCH_CHECK_VALUE(static_cast<int64_t>(block_size.size()) == spatial_dims,
                    "block_size: expected one size per spatial dimension (", spatial_dims, "), got ",
                    block_size.size());
  for (const int64_t requested : block_size) {
    TORCH_CHECK_VALUE(requested >= 1, "block_size: every size must be >= 1, got ", block_size);
  }
  mask_bits(input, shared_channels);  // so that planes * plane_numel() below cannot overflow
  MaskGeometry g{};
  g.planes = shared_channels ? input.size(0) : input.size(0) * input.size(1);
  const int64_t pad = kMaxSpatialDims - spatial_dims;
  for (int d = 0; d < kMaxSpatialDims; ++d) {
    if (d < pad) {
      g.size[d] = 1;
      g.block[d] = 1;
      continue;
    }
    g.size[d] = input.size(2 + d - pad);
    g.block[d] = std::min(block_size[d - pad], std::max<int64_t>(g.size[d], 1));
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
  TORCH_CHECK_VALUE(
      seed.dim() == 0 && seed.scalar_type() == at::kLong && (seed.device() == input.device() || seed.device().is_cpu()),
      "seed: expected a 0-dim int64 tensor on the CPU or on the input's device (", input.device(), "), got ",
      seed.scalar_type(), " of shape ", seed.sizes(), " on ", seed.device());
  TORCH_CHECK_VALUE(
      p.dim() == 0 && p.scalar_type() == at::kDouble && (p.device() == input.device() || p.device().is_cpu()),
      "p: expected a 0-dim float64 tensor on the CPU or on the input's device (", input.device(), "), got ",
      p.scalar_type(), " of shape ", p.sizes(), " on ", p.device());
  if (!p.device().is_cpu()) {
    return std::nullopt;
  }
  const double value = p.item<double>();
  TORCH_CHECK_VALUE(value >= 0.0 && value <= 1.0, "p: drop probability has to be between 0 and 1, got ", value);
  return value;
}

int64_t packed_mask_bytes(int64_t bits) {
  return (bits / 64 + (bits % 64 != 0 ? 1 : 0)) * 8;  // bits + 63 would overflow near 2^63
}

void check_apply_args(const at::Tensor& input, const at::Tensor& mask, const at::Tensor& scale, bool shared_channels) {
  check_input(input);
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kByte, "mask: expected uint8, got ", mask.scalar_type());
  TORCH_CHECK_TYPE(scale.scalar_type() == at::kDouble, "scale: expected float64, got ", scale.scalar_type());
  TORCH_CHECK_VALUE(mask.device() == input.device(), "mask: expected a tensor on the input's device (", input.device(),
                    "), got one on ", mask.device());
  TORCH_CHECK_VALUE(scale.device() == input.device(), "scale: expected a tensor on the input's device (",
                    input.device(), "), got one on ", scale.device());
  TORCH_CHECK_VALUE(scale.numel() == 1, "scale: expected one element, got ", scale.numel());
  TORCH_CHECK_VALUE(mask.dim() == 1 && mask.is_contiguous(), "mask: expected a contiguous 1-d tensor, got shape ",
                    mask.sizes(), " with strides ", mask.strides());
  const int64_t bytes = packed_mask_bytes(mask_bits(input, shared_channels));
  TORCH_CHECK_VALUE(mask.numel() == bytes, "mask: expected ", bytes, " bytes for an input of shape ", input.sizes(),
                    ", got ", mask.numel());
}

void check_inplace_args(const at::Tensor& input, const at::Tensor& mask, const at::Tensor& scale) {
  TORCH_CHECK(at::has_internal_overlap(input) != at::MemOverlap::Yes,
              "drop_block_apply_: input has elements that share memory (an expanded tensor?), so it cannot be "
              "written in place; pass input.clone()");
  // get_overlap_status says TooHard for tensors that are not dense even where their storages
  // differ: only tensors of one storage can overlap, and there anything but "No" is refused.
  const auto refuse_overlap = [&](const at::Tensor& other, const char* name) {
    const bool same_storage =
        input.has_storage() && other.has_storage() && input.storage().is_alias_of(other.storage());
    TORCH_CHECK(!same_storage || at::get_overlap_status(input, other) == at::MemOverlapStatus::No,
                "drop_block_apply_: ", name, " shares memory with the input, which is written before the ", name,
                " is read; pass ", name, ".clone()");
  };
  refuse_overlap(mask, "mask");
  refuse_overlap(scale, "scale");
}

at::Tensor word_aligned(const at::Tensor& mask) {
  return reinterpret_cast<uintptr_t>(mask.const_data_ptr()) % alignof(uint64_t) == 0 ? mask : mask.clone();
}

}  // namespace dropblock
