#pragma once
// The ops' arguments on the host, for every backend: their checks, and what follows from them (the
// mask geometry, the seed probability, eq. 1 of the paper generalised, and the packed mask's size).
// The fake kernels of dropblock_cuda/_registrations.py make the same checks with the same messages
// (tests/test_misuse.py compares them), so that a traced or meta call fails where a real one would.
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>

#include "seed_grid.h"

namespace dropblock {

// Checks drop_block_mask's input and block_size and returns the geometry of its mask.
MaskGeometry make_mask_geometry(const at::Tensor& input, c10::IntArrayRef block_size, bool shared_channels);

// gamma = min(p * gamma_factor, 1) is eq. 1 of the paper generalised: p * prod(S) / (prod(b) *
// prod(S - b + 1)); gamma_factor = prod over dimensions of S / (b * (S - b + 1)), in that order.
double gamma_factor(const MaskGeometry& geometry);

// Checks drop_block_mask's scalar arguments. `seed` and `p` may sit on the CPU whatever the
// input's device (a CUDA kernel then takes them by value). Returns p's value, checked to lie in
// [0, 1], when p is on the CPU (read once, here); nothing for a p on a device.
std::optional<double> check_mask_args(const at::Tensor& input, const at::Tensor& seed, const at::Tensor& p, double eps);

// Bytes of a packed keep mask of `bits` bits: whole 64-bit words (no overflow up to 2^63 - 1 bits).
int64_t packed_mask_bytes(int64_t bits);

// Checks drop_block_apply's arguments against each other (shape, dtype, device).
void check_apply_args(const at::Tensor& input, const at::Tensor& mask, const at::Tensor& scale, bool shared_channels);

// Checks what drop_block_apply_ writes: the input, whose elements must not share memory with each
// other, with the mask or with the scale (those would be overwritten before they are read).
void check_inplace_args(const at::Tensor& input, const at::Tensor& mask, const at::Tensor& scale);

// The mask, or a copy of it when its data does not start on an 8-byte boundary: the kernels read
// it as 64-bit words, and a view at an odd byte offset passes every other check.
at::Tensor word_aligned(const at::Tensor& mask);

}  // namespace dropblock
