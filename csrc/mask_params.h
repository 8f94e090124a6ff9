#pragma once
// Host-side set-up shared by every backend: argument checks, the mask geometry, the seed
// probability (eq. 1 of the paper, generalised) and the packed mask's size.
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>

#include "mask_logic.h"

namespace dropblock {

// Checks the arguments of drop_block_mask and returns the geometry of its mask.
MaskGeometry make_mask_geometry(const at::Tensor& input, c10::IntArrayRef block_size, bool shared_channels);

// gamma = min(p * gamma_factor, 1) is eq. 1 of the paper generalised: p * prod(S) / (prod(b) *
// prod(S - b + 1)); gamma_factor = prod over dimensions of S / (b * (S - b + 1)), in that order.
double gamma_factor(const MaskGeometry& geometry);

// Checks drop_block_mask's scalar arguments. `seed` and `p` may sit on the CPU whatever the
// input's device (a CUDA kernel then takes them by value). Returns p's value, checked to lie in
// [0, 1], when p is on the CPU (read once, here); nothing for a p on a device.
std::optional<double> check_mask_args(const at::Tensor& input, const at::Tensor& seed, const at::Tensor& p,
                                      double eps);

// Bytes of the packed keep mask: one bit per (plane, spatial position), whole 64-bit words.
int64_t packed_mask_bytes(const MaskGeometry& geometry);

// Mask planes implied by an input shape: N * C, or N when the mask is shared by the channels.
int64_t mask_planes(const at::Tensor& input, bool shared_channels);

// Checks drop_block_apply's arguments against each other (shape, dtype, device).
void check_apply_args(const at::Tensor& input, const at::Tensor& mask, const at::Tensor& scale, bool shared_channels);

}  // namespace dropblock
