// CPU kernels of the apply ops: out = keep ? in * scale : 0, by the packed keep mask.
//
// Contiguous input (per-channel or shared mask) runs the AVX-512 kernels of apply_cpu_avx512.cpp
// where the CPU has them; the kernels here serve the other CPUs and the channels-last and strided
// layouts.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../memory_layout.h"
#include "../op_args.h"
#include "../packed_mask.h"
#include "apply_cpu_avx512.h"
#include "cpu_parallel.h"

namespace dropblock {
namespace {

// Keep bits expanded to all-ones / all-zeros lanes of the scalar's width, a byte at a time,
// so that a word of mixed bits is applied with a vectorisable AND instead of a branch per element.
template <typename lane_t>
struct LaneMasks {
  lane_t lanes[256][8];
  LaneMasks() {
    for (int byte = 0; byte < 256; ++byte) {
      for (int j = 0; j < 8; ++j) {
        lanes[byte][j] = ((byte >> j) & 1) ? static_cast<lane_t>(~lane_t(0)) : lane_t(0);
      }
    }
  }
};

template <size_t bytes>
struct LaneType;
template <>
struct LaneType<2> {
  using type = uint16_t;
};
template <>
struct LaneType<4> {
  using type = uint32_t;
};
template <>
struct LaneType<8> {
  using type = uint64_t;
};

// 16-bit floats: the conversions to and from float are most of the apply's cost (c10::Half
// converts in software unless F16C is on at compile time), so runs of up to kNarrowBatch elements
// go through functions the compiler vectorises for the CPU at hand. The arithmetic is the
// element-wise one: float(x) * scale, rounded to nearest even; dropped lanes become +0.
constexpr int kNarrowBatch = 64;

// dst[j] = src[j] * scale for j < n contiguous 16-bit elements, then ANDed with lanes[j] (all ones
// keeps, zero drops) when kMasked. dst may be src.
template <bool kMasked, typename half_t>
inline void scale_narrow_loop(const half_t* src, half_t* dst, int64_t n, float scale, const uint32_t* lanes) {
  for (int64_t j = 0; j < n; ++j) {
    float v = static_cast<float>(src[j]) * scale;
    if constexpr (kMasked) {
      uint32_t v_bits;
      std::memcpy(&v_bits, &v, sizeof(v_bits));
      v_bits &= lanes[j];
      std::memcpy(&v, &v_bits, sizeof(v_bits));
    }
    dst[j] = half_t(v);
  }
}

// The same, masked where lanes is given; one loop each way, so both vectorise.
template <typename half_t>
inline void scale_narrow(const half_t* src, half_t* dst, int64_t n, float scale, const uint32_t* lanes) {
  if (lanes == nullptr) {
    scale_narrow_loop<false>(src, dst, n, scale, lanes);
  } else {
    scale_narrow_loop<true>(src, dst, n, scale, lanes);
  }
}

// The vectorised clones (target_clones takes functions, not templates).
DROPBLOCK_VECTOR_CLONES
void scale_narrow_run(const c10::Half* src, c10::Half* dst, int64_t n, float scale, const uint32_t* lanes) {
  scale_narrow(src, dst, n, scale, lanes);
}

DROPBLOCK_VECTOR_CLONES
void scale_narrow_run(const c10::BFloat16* src, c10::BFloat16* dst, int64_t n, float scale, const uint32_t* lanes) {
  scale_narrow(src, dst, n, scale, lanes);
}

// dst[j] = src[j] * scale for a contiguous run of n elements, all kept.
template <typename scalar_t, typename acc_t>
void scale_run(const scalar_t* src, scalar_t* dst, int64_t n, acc_t scale) {
  if constexpr (sizeof(scalar_t) == 2) {
    scale_narrow_run(src, dst, n, static_cast<float>(scale), nullptr);
  } else {
    for (int64_t j = 0; j < n; ++j) {
      dst[j] = static_cast<scalar_t>(static_cast<acc_t>(src[j]) * scale);
    }
  }
}

// out[i] = keep(bit0 + i) ? in[i] * scale : 0 for a run of n elements with the given strides.
// Dropped elements are exactly zero whatever the input holds there (inf and NaN included).
template <typename scalar_t, typename acc_t>
void apply_run(const scalar_t* in, int64_t in_stride, scalar_t* out, int64_t out_stride, int64_t n,
               const uint64_t* mask, int64_t bit0, acc_t scale) {
  using lane_t = typename LaneType<sizeof(scalar_t)>::type;
  static const LaneMasks<lane_t> table;
  const bool unit = in_stride == 1 && out_stride == 1;
  int64_t i = 0;
  while (i < n) {
    const int64_t bit = bit0 + i;
    const int offset = static_cast<int>(bit & 63);
    const int64_t len = std::min<int64_t>(64 - offset, n - i);
    const uint64_t all = low_bits(len);
    const uint64_t word = (mask[bit >> 6] >> offset) & all;
    const scalar_t* src = in + i * in_stride;
    scalar_t* dst = out + i * out_stride;
    if (!unit) {
      for (int64_t j = 0; j < len; ++j) {
        const bool keep = (word >> j) & 1u;
        dst[j * out_stride] =
            keep ? static_cast<scalar_t>(static_cast<acc_t>(src[j * in_stride]) * scale) : scalar_t(0);
      }
    } else if (word == 0) {
      std::fill(dst, dst + len, scalar_t(0));
    } else if (word == all) {
      scale_run(src, dst, len, scale);
    } else if constexpr (sizeof(scalar_t) == 2) {
      static const LaneMasks<uint32_t> float_lanes;
      alignas(64) uint32_t lanes[64];
      for (int b = 0; b < 8; ++b) {
        std::memcpy(lanes + 8 * b, float_lanes.lanes[(word >> (8 * b)) & 0xFF], sizeof(float_lanes.lanes[0]));
      }
      scale_narrow_run(src, dst, len, static_cast<float>(scale), lanes);
    } else {
      alignas(64) lane_t lanes[64];
      for (int b = 0; b < 8; ++b) {
        std::memcpy(lanes + 8 * b, table.lanes[(word >> (8 * b)) & 0xFF], sizeof(table.lanes[0]));
      }
      for (int64_t j = 0; j < len; ++j) {
        const scalar_t v = static_cast<scalar_t>(static_cast<acc_t>(src[j]) * scale);
        lane_t v_bits;
        std::memcpy(&v_bits, &v, sizeof(v));
        v_bits &= lanes[j];
        std::memcpy(dst + j, &v_bits, sizeof(v));
      }
    }
    i += len;
  }
}

// Strides of the (padded) spatial dimensions, and whether they lay the plane out row-major.
struct PlaneLayout {
  int64_t stride[kMaxSpatialDims];
  bool row_major;
};

// All ones where bit `shift` of `keep` is set, else zero: the bit moved to the sign, then spread.
inline int32_t keep_lane(uint32_t keep, int shift) {
  return static_cast<int32_t>(keep << (31 - shift)) >> 31;
}

// A channels-last tile of `positions` (<= kTilePositions) positions of C contiguous channels each:
// dst[k * C + c] = bit k % 32 of keep[(k / 32) * C + c] ? src[k * C + c] * scale : 0. Typed stores
// and no captured references, so that the channel loop vectorises (4- and 8-byte elements).
template <typename scalar_t>
inline void keep_tile_loop(const scalar_t* src, scalar_t* dst, int64_t positions, int64_t C, const uint32_t* keep,
                           scalar_t scale) {
  using lane_t = typename LaneType<sizeof(scalar_t)>::type;
  using signed_lane_t = std::make_signed_t<lane_t>;
  for (int64_t k = 0; k < positions; ++k) {
    const uint32_t* bits = keep + (k >> 5) * C;
    const int shift = static_cast<int>(k & 31);
    const scalar_t* in = src + k * C;
    scalar_t* out = dst + k * C;
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t v = in[c] * scale;
      lane_t v_bits;
      std::memcpy(&v_bits, &v, sizeof(v));
      v_bits &= static_cast<lane_t>(static_cast<signed_lane_t>(keep_lane(bits[c], shift)));
      scalar_t result;
      std::memcpy(&result, &v_bits, sizeof(result));
      out[c] = result;
    }
  }
}

// The vectorised clones (target_clones takes functions, not templates): the channel loop is most
// of a channels-last apply, and wider vectors keep it as fast as the contiguous pass.
DROPBLOCK_VECTOR_CLONES
void keep_tile_run(const float* src, float* dst, int64_t positions, int64_t C, const uint32_t* keep, float scale) {
  keep_tile_loop(src, dst, positions, C, keep, scale);
}

DROPBLOCK_VECTOR_CLONES
void keep_tile_run(const double* src, double* dst, int64_t positions, int64_t C, const uint32_t* keep, double scale) {
  keep_tile_loop(src, dst, positions, C, keep, scale);
}

// 16-bit elements: the keep lanes of a position, then the vectorised float conversion.
template <typename half_t>
void keep_tile_run(const half_t* src, half_t* dst, int64_t positions, int64_t C, const uint32_t* keep, float scale) {
  uint32_t lanes[kNarrowBatch];
  for (int64_t k = 0; k < positions; ++k) {
    const uint32_t* bits = keep + (k >> 5) * C;
    const int shift = static_cast<int>(k & 31);
    for (int64_t c0 = 0; c0 < C; c0 += kNarrowBatch) {
      const int64_t m = std::min<int64_t>(kNarrowBatch, C - c0);
      for (int64_t j = 0; j < m; ++j) {
        lanes[j] = static_cast<uint32_t>(keep_lane(bits[c0 + j], shift));
      }
      scale_narrow_run(src + k * C + c0, dst + k * C + c0, m, scale, lanes);
    }
  }
}

// Positions per channels-last tile at most: 8 mask words of each channel, so that a tile reads one
// cache line of every channel's mask row at once (64-position tiles revisited each line 8 times, after
// the tile's data had pushed it out of L1: the gather cost as much as the element loop).
constexpr int64_t kTilePositions = 512;

// Channels-last data: a run of C channels is contiguous in memory but its keep bits lie S apart
// in the mask. A tile of up to kTilePositions positions of one sample first gathers each channel's
// keep bits for those positions (as 32-bit halves, [k / 32][c], so that the element loop over the
// channels vectorises), then walks the tile in memory order.
template <typename scalar_t, typename acc_t>
void apply_channels_last(const scalar_t* in, scalar_t* out, int64_t N, int64_t C, int64_t S, const uint64_t* mask,
                         bool shared_channels, acc_t scale, bool simd) {
  // Shorter tiles (down to one mask word per channel) where long ones would leave threads idle.
  int64_t positions = kTilePositions;
  while (positions > 64 && N * ((S + positions - 1) / positions) < 4 * at::get_num_threads()) {
    positions /= 2;
  }
  const int64_t tiles_per_sample = (S + positions - 1) / positions;
  const int64_t mask_rows = shared_channels ? 1 : C;
  parallel_over(N * tiles_per_sample, N * C * S, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> halves(static_cast<size_t>(positions / 32 * mask_rows));
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t n = tile / tiles_per_sample, s0 = (tile - n * tiles_per_sample) * positions;
      const int64_t len = std::min<int64_t>(positions, S - s0);
      for (int64_t c = 0; c < mask_rows; ++c) {
        const int64_t first_bit = (n * mask_rows + c) * S + s0;
        for (int64_t k = 0; k < len; k += 64) {
          const uint64_t row = keep_bits(mask, first_bit + k, std::min<int64_t>(64, len - k));
          halves[(k >> 5) * mask_rows + c] = static_cast<uint32_t>(row);
          halves[((k >> 5) + 1) * mask_rows + c] = static_cast<uint32_t>(row >> 32);
        }
      }
      const int64_t first = (n * S + s0) * C;
      if (!shared_channels) {
        keep_tile_run(in + first, out + first, len, C, halves.data(), scale);
        continue;
      }
      // Positions with one keep bit for all their channels: each run of positions with equal bits
      // is one contiguous run of elements, scaled or zeroed in one call.
      for (int64_t k = 0; k < len;) {
        const bool keep = (halves[k >> 5] >> (k & 31)) & 1u;
        int64_t end = k + 1;
        while (end < len && static_cast<bool>((halves[end >> 5] >> (end & 31)) & 1u) == keep) {
          ++end;
        }
        const int64_t offset = first + k * C, n_elements = (end - k) * C;
        if (!keep) {
          std::fill(out + offset, out + offset + n_elements, scalar_t(0));
        } else if (simd) {
          avx512::scale_run(in + offset, out + offset, n_elements, scale);
        } else {
          scale_run(in + offset, out + offset, n_elements, scale);
        }
        k = end;
      }
    }
  });
}

PlaneLayout plane_layout(const at::Tensor& t) {
  PlaneLayout layout{};
  const int64_t pad = kMaxSpatialDims - (t.dim() - 2);
  for (int d = 0; d < kMaxSpatialDims; ++d) {
    layout.stride[d] = d < pad ? 0 : t.stride(2 + d - pad);
  }
  // The padded dimensions have size 1: whether the plane is row-major is its spatial dims' say.
  layout.row_major = is_row_major(static_cast<int>(t.dim() - 2), t.sizes().data() + 2, t.strides().data() + 2);
  return layout;
}

void apply_into(const at::Tensor& input, at::Tensor& output, const at::Tensor& mask, const at::Tensor& scale_tensor,
                bool shared_channels) {
  if (input.numel() == 0) {
    return;
  }
  const at::Tensor words = word_aligned(mask);
  const uint64_t* bits = reinterpret_cast<const uint64_t*>(words.const_data_ptr<uint8_t>());
  // A CPU float64 tensor of one element (check_apply_args): read in place rather than through item(),
  // which dispatches an op.
  const double scale = *scale_tensor.const_data_ptr<double>();
  const int64_t N = input.size(0), C = input.size(1);
  const int64_t S = input.numel() / (N * C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "drop_block_apply_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t s = static_cast<acc_t>(scale);
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    const bool contiguous = input.is_contiguous() && output.is_contiguous();
    const bool simd = avx512::usable();
    if (!shared_channels && contiguous) {
      // Logical order is memory order: one run over the whole tensor, split at word edges.
      const int64_t numel = input.numel();
      parallel_over(numel / 64 + (numel % 64 != 0 ? 1 : 0), numel, [&](int64_t begin, int64_t end) {
        const int64_t first = begin * 64, last = std::min(end * 64, numel);
        if (simd) {
          avx512::apply_run(in + first, out + first, last - first, bits, first, s);
        } else {
          apply_run<scalar_t, acc_t>(in + first, 1, out + first, 1, last - first, bits, first, s);
        }
      });
      return;
    }
    if (shared_channels && contiguous && simd) {
      // The C planes of sample n are consecutive runs of S elements, all with keep bits n * S on:
      // one call per sample's share of a range of planes, so that small planes cost no set-up each.
      parallel_over(N * C, N * C * S, [&](int64_t begin, int64_t end) {
        for (int64_t plane = begin; plane < end;) {
          const int64_t n = plane / C, stop = std::min(end, (n + 1) * C);
          avx512::apply_planes(in + plane * S, out + plane * S, stop - plane, S, bits, n * S, s);
          plane = stop;
        }
      });
      return;
    }
    if (is_channels_innermost(static_cast<int>(input.dim()), input.sizes().data(), input.strides().data()) &&
        is_channels_innermost(static_cast<int>(output.dim()), output.sizes().data(), output.strides().data())) {
      apply_channels_last<scalar_t, acc_t>(in, out, N, C, S, bits, shared_channels, s, simd);
      return;
    }
    const PlaneLayout in_layout = plane_layout(input), out_layout = plane_layout(output);
    const int64_t pad = kMaxSpatialDims - (input.dim() - 2);
    int64_t size[kMaxSpatialDims];
    for (int d = 0; d < kMaxSpatialDims; ++d) {
      size[d] = d < pad ? 1 : input.size(2 + d - pad);
    }
    const bool plane_is_one_run = in_layout.row_major && out_layout.row_major;
    parallel_over(N * C, N * C * S, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t n = plane / C, c = plane % C;
        const scalar_t* in_plane = in + n * input.stride(0) + c * input.stride(1);
        scalar_t* out_plane = out + n * output.stride(0) + c * output.stride(1);
        const int64_t bit_plane = (shared_channels ? n : plane) * S;
        if (plane_is_one_run) {
          apply_run<scalar_t, acc_t>(in_plane, 1, out_plane, 1, S, bits, bit_plane, s);
          continue;
        }
        for (int64_t z = 0; z < size[0]; ++z) {
          for (int64_t y = 0; y < size[1]; ++y) {
            apply_run<scalar_t, acc_t>(in_plane + z * in_layout.stride[0] + y * in_layout.stride[1],
                                       in_layout.stride[2],
                                       out_plane + z * out_layout.stride[0] + y * out_layout.stride[1],
                                       out_layout.stride[2], size[2], bits, bit_plane + (z * size[1] + y) * size[2], s);
          }
        }
      }
    });
  });
}

at::Tensor drop_block_apply_cpu(const at::Tensor& input, const at::Tensor& mask, const at::Tensor& scale,
                                bool shared_channels) {
  check_apply_args(input, mask, scale, shared_channels);
  at::Tensor output = at::empty_like(input);
  apply_into(input, output, mask, scale, shared_channels);
  return output;
}

void drop_block_apply_inplace_cpu(at::Tensor& input, const at::Tensor& mask, const at::Tensor& scale,
                                  bool shared_channels) {
  check_apply_args(input, mask, scale, shared_channels);
  check_inplace_args(input, mask, scale);
  apply_into(input, input, mask, scale, shared_channels);
}

}  // namespace

TORCH_LIBRARY_IMPL(dropblock_cuda, CPU, m) {
  m.impl("drop_block_apply", &drop_block_apply_cpu);
  m.impl("drop_block_apply_", &drop_block_apply_inplace_cpu);
}

}  // namespace dropblock
