// CPU kernels of the DropBlock ops: the packed keep mask (no data touched) and the data pass.
#include <algorithm>
#include <cstring>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "../mask_logic.h"
#include "../mask_params.h"

namespace dropblock {
namespace {

// About this many elements per unit of parallel work: small enough to balance two to a few
// dozen threads, large enough that per-item set-up and edge atomics stay negligible.
constexpr int64_t kItemElements = int64_t(1) << 15;

// A box of one plane whose elements form one contiguous range of logical indices.
struct Box {
  int64_t plane;
  int64_t lo[kMaxSpatialDims];
  int64_t hi[kMaxSpatialDims];
};

// Philox groups drawn per batch: independent iterations the compiler can vectorise.
constexpr int kPhiloxBatch = 64;

// Philox is most of the mask's cost: give the vectoriser wider registers where the CPU has them.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DROPBLOCK_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DROPBLOCK_VECTOR_CLONES
#endif

// Seed bits of the Philox groups first_group .. first_group + n - 1: the batched twin of
// seed_bits_of_group.
DROPBLOCK_VECTOR_CLONES
void seed_bits_of_groups(uint64_t first_group, int64_t n, PhiloxKey key, SeedThreshold t, uint32_t* bits) {
  for (int64_t base = 0; base < n; base += kPhiloxBatch) {
    const int m = static_cast<int>(std::min<int64_t>(kPhiloxBatch, n - base));
    uint32_t c0[kPhiloxBatch], c1[kPhiloxBatch], c2[kPhiloxBatch], c3[kPhiloxBatch];
    for (int i = 0; i < m; ++i) {
      const uint64_t k = first_group + static_cast<uint64_t>(base + i);
      c0[i] = static_cast<uint32_t>(k);
      c1[i] = static_cast<uint32_t>(k >> 32);
      c2[i] = 0;  // stream 0
      c3[i] = 0;
    }
    for (int round = 0; round < 10; ++round) {
      const uint32_t k0 = philox_round_key_lo(key, round), k1 = philox_round_key_hi(key, round);
      for (int i = 0; i < m; ++i) {
        philox_round(c0[i], c1[i], c2[i], c3[i], k0, k1);
      }
    }
    // Most groups hold no byte at or below the threshold's: find the others without branching.
    uint32_t candidate[kPhiloxBatch];
    const bool screen = t.top <= 127;
    for (int i = 0; i < m; ++i) {
      candidate[i] = static_cast<uint32_t>(!screen) | may_hold_seed(c0[i], t.top) | may_hold_seed(c1[i], t.top) |
                     may_hold_seed(c2[i], t.top) | may_hold_seed(c3[i], t.top);
    }
    for (int i = 0; i < m; ++i) {
      bits[base + i] = candidate[i] ? seed_bits_from_draw(Philox4{{c0[i], c1[i], c2[i], c3[i]}},
                                                          first_group + static_cast<uint64_t>(base + i), key, t)
                                    : 0;
    }
  }
}

// Computes the keep bits of boxes of one plane into the packed mask.
class BoxMasker {
 public:
  BoxMasker(const MaskGeometry& g, PhiloxKey key, SeedThreshold threshold)
      : g_(g), key_(key), threshold_(threshold) {}

  // `first`/`last`: the box's contiguous range of logical indices.
  void run(const Box& box, int64_t first, int64_t last, const PackedWriter& out) {
    out.set_range(first, last);
    if (never_seeds(threshold_)) {
      return;
    }
    const int64_t H = g_.size[1], W = g_.size[2];
    const int64_t bd = g_.block[0], bh = g_.block[1], bw = g_.block[2];
    const int64_t z0 = box.lo[0], z1 = box.hi[0], y0 = box.lo[1], y1 = box.hi[1];
    const int64_t x0 = box.lo[2], x1 = box.hi[2];
    const int64_t ny = y1 - y0, nx = x1 - x0;
    // Seeds that can reach the box: up to b - 1 positions before it in every dimension.
    const int64_t sz0 = std::max<int64_t>(z0 - bd + 1, 0), sz1 = std::min(z1, g_.seed_extent(0));
    const int64_t sy0 = std::max<int64_t>(y0 - bh + 1, 0), sy1 = std::min(y1, g_.seed_extent(1));
    const int64_t sx0 = std::max<int64_t>(x0 - bw + 1, 0), sx1 = std::min(x1, g_.seed_extent(2));
    if (sz0 >= sz1 || sy0 >= sy1 || sx0 >= sx1) {
      return;
    }
    const int64_t plane_base = box.plane * g_.plane_numel();

    // 1. Draw the seeds. Rows whose seed span covers most of the row are drawn as one
    // contiguous run of Philox groups per slab (the few positions past the span are drawn and
    // ignored); narrow spans are drawn row by row.
    const int64_t seed_rows = sy1 - sy0;
    const int64_t line_origin = x0 - (bw - 1);  // local lines start where the first seed reaching x0 sits
    const int64_t nwords = (nx + bw - 1 + 63) / 64;
    seed_lines_.assign(static_cast<size_t>((sz1 - sz0) * seed_rows * nwords), 0);
    seeded_line_.assign(static_cast<size_t>((sz1 - sz0) * seed_rows), 0);
    const bool row_runs = 2 * (sx1 - sx0) < W;
    for (int64_t sz = sz0; sz < sz1; ++sz) {
      for (int64_t sy = sy0; sy < sy1; sy += row_runs ? 1 : seed_rows) {
        const int64_t last_row = row_runs ? sy : sy1 - 1;
        const int64_t first = plane_base + (sz * H + sy) * W + sx0;
        const int64_t last = plane_base + (sz * H + last_row) * W + sx1 - 1;
        sample_run(first, last, plane_base, SeedWindow{sz0, sz1, sy0, sy1, sx0, sx1}, line_origin, nwords);
      }
    }

    // 2. Expand each seeded line along x, then OR it into the bh x bd lines its blocks cover.
    drops_.assign(static_cast<size_t>((z1 - z0) * ny * nwords), 0);
    dropped_line_.assign(static_cast<size_t>((z1 - z0) * ny), 0);
    for (int64_t sz = sz0; sz < sz1; ++sz) {
      for (int64_t sy = sy0; sy < sy1; ++sy) {
        const int64_t s_index = (sz - sz0) * seed_rows + (sy - sy0);
        if (!seeded_line_[s_index]) {
          continue;
        }
        uint64_t* seeds = seed_lines_.data() + s_index * nwords;
        expand_line(seeds, nwords, bw);
        for (int64_t z = std::max(sz, z0); z < std::min(sz + bd, z1); ++z) {
          for (int64_t y = std::max(sy, y0); y < std::min(sy + bh, y1); ++y) {
            const int64_t t = (z - z0) * ny + (y - y0);
            uint64_t* drop = drops_.data() + t * nwords;
            for (int64_t w = 0; w < nwords; ++w) {
              drop[w] |= seeds[w];
            }
            dropped_line_[t] = 1;
          }
        }
      }
    }

    // 3. Clear the dropped bits.
    for (int64_t z = z0; z < z1; ++z) {
      for (int64_t y = y0; y < y1; ++y) {
        const int64_t t = (z - z0) * ny + (y - y0);
        if (!dropped_line_[t]) {
          continue;
        }
        const int64_t dst = plane_base + (z * H + y) * W + x0;
        const uint64_t* drop = drops_.data() + t * nwords;
        for (int64_t i = 0; i < nx; i += 64) {
          out.clear_bits(dst + i, read_bits64(drop, nwords, (bw - 1) + i), std::min<int64_t>(64, nx - i));
        }
      }
    }
  }

 private:
  // Draws the groups covering logical indices [first, last] and records the seeds that sit
  // where a block fits (x in [sx0, sx1), y and z below their seed extents) in their seed lines.
  struct SeedWindow {
    int64_t sz0, sz1, sy0, sy1, sx0, sx1;
  };

  void sample_run(int64_t first, int64_t last, int64_t plane_base, const SeedWindow& s, int64_t line_origin,
                  int64_t nwords) {
    const int64_t H = g_.size[1], W = g_.size[2];
    const int64_t seed_rows = s.sy1 - s.sy0;
    const uint64_t k0 = static_cast<uint64_t>(first) / 16;
    const int64_t groups = static_cast<int64_t>(static_cast<uint64_t>(last) / 16 - k0) + 1;
    group_bits_.resize(static_cast<size_t>(groups));
    seed_bits_of_groups(k0, groups, key_, threshold_, group_bits_.data());
    for (int64_t i = 0; i < groups; ++i) {
      uint32_t bits = group_bits_[static_cast<size_t>(i)];
      while (bits != 0) {
        const int lane = __builtin_ctz(bits);
        bits &= bits - 1;
        const int64_t g = static_cast<int64_t>(16 * (k0 + static_cast<uint64_t>(i))) + lane;
        if (g < first || g > last) {
          continue;
        }
        const int64_t local = g - plane_base;
        const int64_t row = local / W, x = local - row * W;
        const int64_t z = row / H, y = row - z * H;
        if (x < s.sx0 || x >= s.sx1 || y < s.sy0 || y >= s.sy1 || z < s.sz0 || z >= s.sz1) {
          continue;
        }
        const int64_t s_index = (z - s.sz0) * seed_rows + (y - s.sy0);
        const int64_t pos = x - line_origin;
        seed_lines_[static_cast<size_t>(s_index * nwords + (pos >> 6))] |= uint64_t(1) << (pos & 63);
        seeded_line_[static_cast<size_t>(s_index)] = 1;
      }
    }
  }

  MaskGeometry g_;
  PhiloxKey key_;
  SeedThreshold threshold_;
  std::vector<uint32_t> group_bits_;
  std::vector<uint64_t> seed_lines_;  // one line per seed row (z, y) that can reach the box
  std::vector<uint8_t> seeded_line_;
  std::vector<uint64_t> drops_;       // one line per row of the box
  std::vector<uint8_t> dropped_line_;
};

// Work items: runs of whole planes when planes are small, slabs / line runs / line segments
// of one plane when they are large. Every item is a contiguous range of logical indices.
struct WorkItem {
  int64_t plane_begin;
  int64_t plane_end;
  int split_dim;  // -1: whole planes; else the dimension [lo, hi) cuts
  int64_t lo;
  int64_t hi;
};

std::vector<WorkItem> plan_items(const MaskGeometry& g) {
  std::vector<WorkItem> items;
  const int64_t plane = g.plane_numel();
  if (plane <= kItemElements) {
    const int64_t per_item = std::max<int64_t>(1, kItemElements / std::max<int64_t>(plane, 1));
    for (int64_t q = 0; q < g.planes; q += per_item) {
      items.push_back({q, std::min(q + per_item, g.planes), -1, 0, 0});
    }
    return items;
  }
  int dim = 0;
  while (dim < kMaxSpatialDims - 1 && g.size[dim] == 1) {
    ++dim;
  }
  int64_t inner = 1;
  for (int d = dim + 1; d < kMaxSpatialDims; ++d) {
    inner *= g.size[d];
  }
  int64_t step = std::max<int64_t>(1, kItemElements / inner);
  if (dim == kMaxSpatialDims - 1) {
    step = (step + 63) / 64 * 64;
  }
  for (int64_t q = 0; q < g.planes; ++q) {
    for (int64_t lo = 0; lo < g.size[dim]; lo += step) {
      items.push_back({q, q + 1, dim, lo, std::min(lo + step, g.size[dim])});
    }
  }
  return items;
}

void run_item(const MaskGeometry& g, const WorkItem& item, BoxMasker& masker, uint64_t* words) {
  const int64_t plane = g.plane_numel();
  Box box{};
  int64_t first = 0, last = 0;  // logical index range [first, last) of the item
  for (int d = 0; d < kMaxSpatialDims; ++d) {
    box.lo[d] = 0;
    box.hi[d] = g.size[d];
  }
  if (item.split_dim < 0) {
    first = item.plane_begin * plane;
    last = item.plane_end * plane;
  } else {
    box.lo[item.split_dim] = item.lo;
    box.hi[item.split_dim] = item.hi;
    int64_t inner = 1;
    for (int d = item.split_dim + 1; d < kMaxSpatialDims; ++d) {
      inner *= g.size[d];
    }
    first = item.plane_begin * plane + item.lo * inner;
    last = item.plane_begin * plane + item.hi * inner;
  }
  const PackedWriter out{words, first >> 6, (last - 1) >> 6};
  if (item.split_dim >= 0) {
    box.plane = item.plane_begin;
    masker.run(box, first, last, out);
    return;
  }
  for (int64_t q = item.plane_begin; q < item.plane_end; ++q) {
    box.plane = q;
    masker.run(box, q * plane, (q + 1) * plane, out);
  }
}

std::tuple<at::Tensor, at::Tensor> drop_block_mask_cpu(const at::Tensor& input, const at::Tensor& seed, const at::Tensor& p,
                                                       c10::IntArrayRef block_size, double eps,
                                                       bool shared_channels) {
  const MaskGeometry g = make_mask_geometry(input, block_size, shared_channels);
  check_mask_args(input, seed, p, eps);
  const PhiloxKey key = make_key(static_cast<uint64_t>(seed.item<int64_t>()));
  const SeedThreshold threshold = make_seed_threshold(p.item<double>(), gamma_factor(g));

  at::Tensor mask = at::zeros({packed_mask_bytes(g)}, input.options().dtype(at::kByte));
  uint64_t* words = reinterpret_cast<uint64_t*>(mask.data_ptr<uint8_t>());
  const std::vector<WorkItem> items = plan_items(g);
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    BoxMasker masker(g, key, threshold);
    for (int64_t i = begin; i < end; ++i) {
      run_item(g, items[static_cast<size_t>(i)], masker, words);
    }
  });

  const int64_t nwords = mask.numel() / 8;
  const int64_t kept_bits = at::parallel_reduce(
      0, nwords, 1 << 14, int64_t(0),
      [&](int64_t begin, int64_t end, int64_t acc) {
        for (int64_t w = begin; w < end; ++w) {
          acc += __builtin_popcountll(words[w]);
        }
        return acc;
      },
      std::plus<int64_t>());
  const int64_t kept = shared_channels ? kept_bits * input.size(1) : kept_bits;
  at::Tensor scale = at::empty({}, input.options().dtype(at::kDouble));
  scale.fill_(keep_scale(input.numel(), kept, eps));
  return {mask, scale};
}

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

template <size_t bytes> struct LaneType;
template <> struct LaneType<2> { using type = uint16_t; };
template <> struct LaneType<4> { using type = uint32_t; };
template <> struct LaneType<8> { using type = uint64_t; };

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
    } else if (word == all) {
      for (int64_t j = 0; j < len; ++j) {
        dst[j] = static_cast<scalar_t>(static_cast<acc_t>(src[j]) * scale);
      }
    } else if (word == 0) {
      std::fill(dst, dst + len, scalar_t(0));
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

PlaneLayout plane_layout(const at::Tensor& t) {
  PlaneLayout layout{};
  const int64_t pad = kMaxSpatialDims - (t.dim() - 2);
  for (int d = 0; d < kMaxSpatialDims; ++d) {
    layout.stride[d] = d < pad ? 0 : t.stride(2 + d - pad);
  }
  int64_t expected = 1;
  layout.row_major = true;
  for (int d = kMaxSpatialDims - 1; d >= 0; --d) {
    const int64_t size = d < pad ? 1 : t.size(2 + d - pad);
    if (size != 1 && layout.stride[d] != expected) {
      layout.row_major = false;
    }
    expected *= size;
  }
  return layout;
}

void apply_into(const at::Tensor& input, at::Tensor& output, const at::Tensor& mask, const at::Tensor& scale_tensor,
                bool shared_channels) {
  if (input.numel() == 0) {
    return;
  }
  const uint64_t* bits = reinterpret_cast<const uint64_t*>(mask.const_data_ptr<uint8_t>());
  const double scale = scale_tensor.item<double>();
  const int64_t N = input.size(0), C = input.size(1);
  const int64_t S = input.numel() / (N * C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "drop_block_apply_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t s = static_cast<acc_t>(scale);
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    if (!shared_channels && input.is_contiguous() && output.is_contiguous()) {
      // Logical order is memory order: one run over the whole tensor, split at word edges.
      const int64_t numel = input.numel();
      at::parallel_for(0, (numel + 63) / 64, 256, [&](int64_t begin, int64_t end) {
        const int64_t first = begin * 64, last = std::min(end * 64, numel);
        apply_run<scalar_t, acc_t>(in + first, 1, out + first, 1, last - first, bits, first, s);
      });
      return;
    }
    const PlaneLayout in_layout = plane_layout(input), out_layout = plane_layout(output);
    const int64_t pad = kMaxSpatialDims - (input.dim() - 2);
    int64_t size[kMaxSpatialDims];
    for (int d = 0; d < kMaxSpatialDims; ++d) {
      size[d] = d < pad ? 1 : input.size(2 + d - pad);
    }
    const bool plane_is_one_run = in_layout.row_major && out_layout.row_major;
    at::parallel_for(0, N * C, std::max<int64_t>(1, 4096 / S), [&](int64_t begin, int64_t end) {
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
                                       out_layout.stride[2], size[2], bits,
                                       bit_plane + (z * size[1] + y) * size[2], s);
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
  at::assert_no_internal_overlap(input);
  apply_into(input, input, mask, scale, shared_channels);
}

}  // namespace

TORCH_LIBRARY_IMPL(dropblock_cuda, CPU, m) {
  m.impl("drop_block_mask", &drop_block_mask_cpu);
  m.impl("drop_block_apply", &drop_block_apply_cpu);
  m.impl("drop_block_apply_", &drop_block_apply_inplace_cpu);
}

}  // namespace dropblock
