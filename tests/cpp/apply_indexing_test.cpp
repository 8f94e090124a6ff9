// The CUDA apply kernels' index arithmetic (csrc/cuda/apply_indexing.h), run on the host: every
// element is visited exactly once, at the input offset, output offset and mask bit that plain
// stride arithmetic gives, in the output's memory order (strided kernel and its plan's flags,
// shared-mask bits and vectors of keep bits of the contiguous kernel, the channels-last kernel's
// tiles, threads and keep rows), and the multiply-high divider is exact at the edges of its range.
// Built and run by
// tests/test_cuda_indexing.py; prints "ok" and exits 0 when every case passes.
#include <algorithm>
#include <cstdio>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/apply_indexing.h"
#include "dense_strides.h"

using dropblock::is_channels_innermost;
using dropblock::is_row_major;
using dropblock::cuda::channels_last_grid_fits;
using dropblock::cuda::channels_last_keep_row;
using dropblock::cuda::channels_last_offset;
using dropblock::cuda::channels_last_thread;
using dropblock::cuda::FastDivider32;
using dropblock::cuda::is_single_value;
using dropblock::cuda::keep_bit32;
using dropblock::cuda::kTileMinChannels;
using dropblock::cuda::kTilePositions;
using dropblock::cuda::kTileThreads;
using dropblock::cuda::make_channels_last_plan;
using dropblock::cuda::make_fast_divider32;
using dropblock::cuda::make_shared_mask_bits;
using dropblock::cuda::make_strided_plan;
using dropblock::cuda::shared_keep_bits;
using dropblock::cuda::shared_mask_bit;
using dropblock::cuda::SharedMaskBits;
using dropblock::cuda::strided_fits_32bit;
using dropblock::cuda::strided_offsets;
using dropblock::cuda::use_channels_last_tiles;
using Sizes = std::vector<int64_t>;
using Triple = std::tuple<int64_t, int64_t, int64_t>;  // input offset, output offset, mask bit

int failures = 0;

void fail(const std::string& what) {
  std::printf("FAIL %s\n", what.c_str());
  ++failures;
}

std::vector<int> identity(size_t n) {
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  return order;
}

// Every element's (input offset, output offset, mask bit), enumerated in logical order.
std::vector<Triple> expected_triples(const Sizes& sizes, const Sizes& in_strides, const Sizes& out_strides,
                                     bool shared) {
  const int dim = static_cast<int>(sizes.size());
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const int64_t S = numel / (sizes[0] * sizes[1]);
  std::vector<Triple> triples;
  std::vector<int64_t> index(dim, 0);
  for (int64_t logical = 0; logical < numel; ++logical) {
    int64_t rest = logical, in = 0, out = 0;
    for (int d = dim - 1; d >= 0; --d) {
      index[d] = rest % sizes[d];
      rest /= sizes[d];
      in += index[d] * in_strides[d];
      out += index[d] * out_strides[d];
    }
    const int64_t bit = shared ? index[0] * S + logical % S : logical;
    triples.emplace_back(in, out, bit);
  }
  return triples;
}

template <typename index_t>
void check_strided(const std::string& name, const Sizes& sizes, const Sizes& in_strides, const Sizes& out_strides,
                   bool shared, bool output_dense) {
  const int dim = static_cast<int>(sizes.size());
  const auto p = make_strided_plan<index_t>(dim, sizes.data(), in_strides.data(), out_strides.data(), shared);
  const std::string label =
      name + (shared ? " shared" : " per-channel") + (sizeof(index_t) == 4 ? " 32-bit" : " 64-bit");
  for (int d = 1; d < p.dims; ++d) {
    if (p.by_size[d].divisor < 2) {
      fail(label + ": a divided dim of size < 2 (FastDivider32 needs d >= 2)");
    }
  }
  if (output_dense != p.out_dense) {
    fail(label + ": out_dense is " + std::to_string(p.out_dense));
  }
  if ((in_strides == out_strides) && !p.same_strides) {
    fail(label + ": equal strides not taken as same_strides");
  }
  std::vector<Triple> visited;
  int64_t previous_out = -1;
  bool in_memory_order = true;
  for (int64_t e = 0; e < p.numel; ++e) {
    index_t in, out, bit;
    dropblock::cuda::strided_offsets<false, false>(p, static_cast<index_t>(e), in, out, bit);
    // The kernel's shortcuts give the same offsets wherever the plan allows them.
    index_t in2, out2, bit2;
    if (p.out_dense) {
      dropblock::cuda::strided_offsets<true, false>(p, static_cast<index_t>(e), in2, out2, bit2);
      if (in2 != in || out2 != out || bit2 != bit) {
        fail(label + ": the out-dense shortcut differs at " + std::to_string(e));
        return;
      }
    }
    if (p.same_strides) {
      dropblock::cuda::strided_offsets<false, true>(p, static_cast<index_t>(e), in2, out2, bit2);
      if (in2 != in || out2 != out || bit2 != bit) {
        fail(label + ": the same-strides shortcut differs at " + std::to_string(e));
        return;
      }
    }
    visited.emplace_back(static_cast<int64_t>(in), static_cast<int64_t>(out), static_cast<int64_t>(bit));
    in_memory_order = in_memory_order && static_cast<int64_t>(out) > previous_out;
    previous_out = static_cast<int64_t>(out);
  }
  // Three elements at once (the kernel's several per thread), the last ones past numel ignored.
  for (int64_t e = 0; e < p.numel; e += 3) {
    const index_t es[3] = {static_cast<index_t>(e), static_cast<index_t>(e + 1), static_cast<index_t>(e + 2)};
    index_t in[3], out[3], bit[3];
    dropblock::cuda::strided_offsets_n<3, false, false>(p, es, in, out, bit);
    for (int u = 0; u < 3 && e + u < p.numel; ++u) {
      if (Triple(static_cast<int64_t>(in[u]), static_cast<int64_t>(out[u]), static_cast<int64_t>(bit[u])) !=
          visited[e + u]) {
        fail(label + ": three at once differ at " + std::to_string(e + u));
        return;
      }
    }
  }
  std::vector<Triple> expected = expected_triples(sizes, in_strides, out_strides, shared);
  std::sort(visited.begin(), visited.end());
  std::sort(expected.begin(), expected.end());
  if (visited != expected) {
    fail(label + ": elements visited differ from stride arithmetic");
  }
  if (output_dense && !in_memory_order) {
    fail(label + ": a dense output is not written in memory order");
  }
}

// FastDivider32 against plain division: every shift s (divisors around each power of two), numerators
// at both ends of the range and around multiples of the divisor, and a sweep of small cases.
void check_fast_divider() {
  std::vector<uint64_t> divisors;
  for (int s = 1; s <= 31; ++s) {
    const uint64_t power = uint64_t(1) << s;
    for (uint64_t d : {power - 1, power, power + 1, power / 2 + 1, power / 2 + power / 4, power - 3}) {
      if (d >= 2 && d <= (uint64_t(1) << 31)) {
        divisors.push_back(d);
      }
    }
  }
  for (uint64_t d : {3ull, 5ull, 7ull, 56ull, 3136ull, 802816ull, 641ull, 6700417ull, 2147483647ull, 1431655765ull}) {
    divisors.push_back(d);
  }
  const uint64_t top = (uint64_t(1) << 31) - 1;
  int64_t checked = 0;
  for (uint64_t d : divisors) {
    const FastDivider32 f = make_fast_divider32(d);
    std::vector<uint64_t> numerators = {0, 1, d - 1, d, d + 1, top, top - 1, top - d, top / 2};
    // Around the largest multiples of d below 2^31 and a spread of others.
    for (uint64_t q : {top / d, top / d - 1, top / d / 2, top / d / 3, uint64_t(1), uint64_t(2), uint64_t(1000)}) {
      for (int64_t delta = -2; delta <= 2; ++delta) {
        const int64_t n = static_cast<int64_t>(q * d) + delta;
        if (n >= 0 && static_cast<uint64_t>(n) <= top) {
          numerators.push_back(static_cast<uint64_t>(n));
        }
      }
    }
    for (uint64_t n : numerators) {
      if (n > top) {
        continue;
      }
      const uint32_t q = f.divide(static_cast<uint32_t>(n));
      if (q != n / d || f.remainder(static_cast<uint32_t>(n), q) != n % d) {
        fail("FastDivider32: " + std::to_string(n) + " / " + std::to_string(d));
        return;
      }
      ++checked;
    }
  }
  for (uint64_t d = 2; d <= 300; ++d) {  // small divisors, every numerator below 2^16 and the top ones
    const FastDivider32 f = make_fast_divider32(d);
    for (uint64_t n = 0; n < (1u << 16); ++n) {
      for (uint64_t m : {n, top - n}) {
        if (f.divide(static_cast<uint32_t>(m)) != m / d) {
          fail("FastDivider32: " + std::to_string(m) + " / " + std::to_string(d));
          return;
        }
      }
    }
    checked += 2 << 16;
  }
  if (checked < 100000) {
    fail("FastDivider32: too few cases checked");
  }
}

void check_keep_bit32() {
  std::vector<uint64_t> mask(5);
  for (size_t w = 0; w < mask.size(); ++w) {
    mask[w] = 0x9E3779B97F4A7C15ull * (w + 3);
  }
  for (uint64_t i = 0; i < 64 * mask.size(); ++i) {
    if (keep_bit32(mask.data(), i) != (((mask[i >> 6] >> (i & 63)) & 1u) != 0)) {
      fail("keep_bit32 at " + std::to_string(i));
      return;
    }
  }
}

void check_layout(const std::string& name, const Sizes& sizes, const Sizes& in_strides, const Sizes& out_strides,
                  bool output_dense) {
  const int dim = static_cast<int>(sizes.size());
  for (bool shared : {false, true}) {
    check_strided<uint64_t>(name, sizes, in_strides, out_strides, shared, output_dense);
    if (strided_fits_32bit(dim, sizes.data(), in_strides.data(), out_strides.data())) {
      check_strided<uint32_t>(name, sizes, in_strides, out_strides, shared, output_dense);
    } else {
      fail(name + ": small tensor not taken as 32-bit");
    }
  }
}

void check_contiguous_shared(const Sizes& sizes) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const int64_t C = sizes[1], S = numel / (sizes[0] * C);
  const Sizes strides = dense_strides(sizes, identity(sizes.size()));
  const std::vector<Triple> expected = expected_triples(sizes, strides, strides, true);
  const SharedMaskBits small = make_shared_mask_bits(S, C * S, numel);
  SharedMaskBits large = small;
  large.small = false;  // the path of tensors of 2^32 elements or more
  if (!small.small) {
    fail("shared mask bits of a small tensor not taken as small");
  }
  for (int64_t e = 0; e < numel; ++e) {
    const int64_t bit = std::get<2>(expected[e]);
    if (shared_mask_bit(e, S, C * S) != bit || shared_mask_bit(small, e) != bit || shared_mask_bit(large, e) != bit) {
      fail("shared_mask_bit at element " + std::to_string(e));
      return;
    }
  }
  // A vector's keep bits (any width up to S, any start): bit j is element e + j's bit.
  std::vector<uint64_t> mask((sizes[0] * S + 63) / 64 + 1);
  for (size_t w = 0; w < mask.size(); ++w) {
    mask[w] = 0x9E3779B97F4A7C15ull * (2 * w + 1) ^ (0xD1B54A32D192ED03ull >> (w % 61));
  }
  for (int n = 1; n <= 8 && n <= S; ++n) {
    for (int64_t e = 0; e + n <= numel; ++e) {
      uint32_t expected_bits = 0;
      for (int j = 0; j < n; ++j) {
        const int64_t bit = std::get<2>(expected[e + j]);
        expected_bits |= static_cast<uint32_t>((mask[bit >> 6] >> (bit & 63)) & 1u) << j;
      }
      if (shared_keep_bits(mask.data(), small, e, n) != expected_bits ||
          shared_keep_bits(mask.data(), large, e, n) != expected_bits) {
        fail("shared_keep_bits of " + std::to_string(n) + " at element " + std::to_string(e));
        return;
      }
    }
  }
}

// The channels-last kernel's tiles over an (N, S, C) memory layout, for every vector width V
// that divides C: every element once (thread by thread: group, rows, positions), with its keep bit
// at (n * C + c) * S + s (per channel) or n * S + s (shared).
void check_channels_last_tiles(int64_t N, int64_t C, int64_t S) {
  for (int V : {1, 2, 4, 8}) {
    if (C % V != 0) {
      continue;
    }
    const auto g = make_channels_last_plan(N, C, S, V);
    const std::string label = "channels-last tiles " + std::to_string(N) + "x" + std::to_string(C) + "x" +
                              std::to_string(S) + " V=" + std::to_string(V);
    if (!channels_last_grid_fits(g)) {
      fail(label + ": grid does not fit");
    }
    if (g.groups_per_tile < 1 || g.groups_per_tile > kTileThreads || g.rows * g.groups_per_tile > kTileThreads ||
        g.step != g.rows * g.groups) {
      fail(label + ": plan out of bounds");
    }
    for (bool shared : {false, true}) {
      std::vector<std::pair<int64_t, int64_t>> visited, expected;
      for (int64_t x = 0; x < g.position_tiles; ++x) {
        for (int64_t y = 0; y < g.channel_tiles; ++y) {
          for (int thread = 0; thread < kTileThreads; ++thread) {
            const auto t = channels_last_thread(g, x, y, thread);
            if (!t.active) {
              continue;
            }
            if (t.count < 1 || t.count > kTilePositions || t.group >= g.groups || t.row >= g.rows) {
              fail(label + ": thread out of bounds");
              return;
            }
            const int64_t first = channels_last_offset(g, t, t.row);
            for (int64_t k = t.row, i = 0; k < t.count; k += g.rows, ++i) {
              // The kernel steps its pointer by `step` vectors from one of its positions to the next.
              const int64_t offset = first + i * g.step * V;
              if (offset != channels_last_offset(g, t, k)) {
                fail(label + ": pointer step differs from the offset");
                return;
              }
              for (int j = 0; j < V; ++j) {
                visited.emplace_back(offset + j, channels_last_keep_row(g, t, shared ? 0 : j, shared) + k);
              }
            }
          }
        }
      }
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t s = 0; s < S; ++s) {
          for (int64_t c = 0; c < C; ++c) {
            expected.emplace_back((n * S + s) * C + c, shared ? n * S + s : (n * C + c) * S + s);
          }
        }
      }
      std::sort(visited.begin(), visited.end());
      if (visited != expected) {
        fail(label + (shared ? " shared" : " per-channel") + ": elements or keep bits differ");
      }
    }
  }
}

int main() {
  const std::vector<Sizes> shapes = {{2, 3, 7},       {2, 3, 4, 5},    {3, 1, 6, 7}, {1, 4, 3, 1},
                                     {2, 3, 2, 3, 4}, {1, 2, 5, 1, 3}, {3, 5, 1, 1}, {2, 7, 130},
                                     {3, 4, 7, 7},    {2, 3, 3, 3},    {2, 5, 1, 9}};
  for (const Sizes& sizes : shapes) {
    const size_t dim = sizes.size();
    std::vector<int> order = identity(dim);
    std::vector<int> channels_last = order;  // (N, *spatial, C)
    channels_last.erase(channels_last.begin() + 1);
    channels_last.push_back(1);
    std::vector<int> reversed(order.rbegin(), order.rend());
    std::vector<int> channels_first = order;  // (C, N, *spatial)
    std::swap(channels_first[0], channels_first[1]);
    const Sizes contiguous = dense_strides(sizes, order);
    const std::string shape = [&] {
      std::string s;
      for (int64_t v : sizes) s += std::to_string(v) + "x";
      return s.substr(0, s.size() - 1);
    }();

    if (!is_row_major(static_cast<int>(dim), sizes.data(), contiguous.data())) {
      fail(shape + ": contiguous strides not row-major");
    }
    const Sizes cl = dense_strides(sizes, channels_last), cf = dense_strides(sizes, channels_first);
    check_layout(shape + " channels_last", sizes, cl, cl, true);
    check_layout(shape + " reversed", sizes, dense_strides(sizes, reversed), dense_strides(sizes, reversed), true);
    check_layout(shape + " channels_first", sizes, cf, cf, true);
    check_layout(shape + " in channels_last, out contiguous", sizes, cl, contiguous, true);
    check_layout(shape + " in contiguous, out reversed", sizes, contiguous, dense_strides(sizes, reversed), true);
    check_layout(shape + " every other element in", sizes, dense_strides(sizes, order, 2), contiguous, true);
    check_layout(shape + " every third element out", sizes, contiguous, dense_strides(sizes, order, 3), false);
    Sizes broadcast = contiguous;
    broadcast[1] = 0;  // an expanded input: every channel reads the same memory
    check_layout(shape + " channel-broadcast input", sizes, broadcast, contiguous, true);
    check_layout(shape + " one value expanded", sizes, Sizes(dim, 0), contiguous, true);
    check_contiguous_shared(sizes);
    const bool channels_last_is_innermost =
        is_channels_innermost(static_cast<int>(dim), sizes.data(), dense_strides(sizes, channels_last).data());
    const bool contiguous_is_innermost = is_channels_innermost(static_cast<int>(dim), sizes.data(), contiguous.data());
    int64_t S = 1;
    for (size_t d = 2; d < dim; ++d) S *= sizes[d];
    if (!channels_last_is_innermost || contiguous_is_innermost != (sizes[1] == 1 || S == 1)) {
      fail(shape + ": is_channels_innermost");
    }
  }
  for (const Sizes& ncs : std::vector<Sizes>{{2, 3, 7},
                                             {1, 70, 99},
                                             {2, 1500, 65},
                                             {3, 1, 64},
                                             {1, 1025, 1},
                                             {2, 64, 196},
                                             {1, 256, 64},
                                             {1, 257, 130},
                                             {1, 2048, 70},
                                             {2, 16, 3},
                                             {1, 24, 200},
                                             {1, 4104, 2}}) {
    check_channels_last_tiles(ncs[0], ncs[1], ncs[2]);
  }

  // Which layouts take the channels-last tiles.
  struct Case {
    Sizes sizes, in_strides, out_strides;
    bool tiles;
    const char* what;
  };
  const Sizes s4 = {2, 32, 5, 6};
  const Sizes cl4 = dense_strides(s4, {0, 2, 3, 1}), rm4 = dense_strides(s4, {0, 1, 2, 3});
  const Sizes s3 = {2, 40, 9};
  const Sizes s5 = {2, 16, 3, 4, 5};
  Sizes cl4_gaps = dense_strides(s4, {0, 2, 3, 1}, 2);
  Sizes cl4_broadcast = cl4;
  cl4_broadcast[2] = 0;
  const std::vector<Case> cases = {
      {s4, cl4, cl4, true, "channels_last"},
      {s3, dense_strides(s3, {0, 2, 1}), dense_strides(s3, {0, 2, 1}), true, "1-d channels innermost"},
      {s5, dense_strides(s5, {0, 2, 3, 4, 1}), dense_strides(s5, {0, 2, 3, 4, 1}), true, "channels_last_3d"},
      {{1, 32, 5, 6}, {12345, 1, 192, 32}, {7, 1, 192, 32}, true, "odd batch stride of a single sample"},
      {{2, 8, 5, 6},
       dense_strides({2, 8, 5, 6}, {0, 2, 3, 1}),
       dense_strides({2, 8, 5, 6}, {0, 2, 3, 1}),
       false,
       "too few channels"},
      {s4, rm4, rm4, false, "contiguous"},
      {s4, cl4, rm4, false, "channels_last into contiguous"},
      {s4, cl4_gaps, cl4, false, "every other element"},
      {s4, cl4_broadcast, cl4, false, "broadcast along a spatial dim"},
      {{2, 32, 1, 6}, {192, 1, 999, 32}, {192, 1, 999, 32}, true, "odd stride of a size-1 dim"},
      {{2, 32, 0, 6}, {0, 1, 192, 32}, {0, 1, 192, 32}, false, "empty"},
  };
  for (const Case& c : cases) {
    const bool tiles = use_channels_last_tiles(static_cast<int>(c.sizes.size()), c.sizes.data(), c.in_strides.data(),
                                               c.out_strides.data());
    if (tiles != c.tiles) {
      fail(std::string("use_channels_last_tiles: ") + c.what);
    }
  }
  check_fast_divider();
  check_keep_bit32();
  {
    const Sizes s = {2, 3, 4, 5}, one_sample = {1, 3, 4, 5};
    const bool everywhere = is_single_value(4, s.data(), Sizes{0, 0, 0, 0}.data());
    const bool size_one_dim = is_single_value(4, one_sample.data(), Sizes{7, 0, 0, 0}.data());
    const bool batch_stride = is_single_value(4, s.data(), Sizes{7, 0, 0, 0}.data());
    const bool spatial_stride = is_single_value(4, s.data(), Sizes{0, 0, 1, 0}.data());
    if (!everywhere || !size_one_dim || batch_stride || spatial_stride) {
      fail("is_single_value");
    }
  }
  if (kTileMinChannels > 32) {
    fail("kTileMinChannels excludes 32-channel maps");
  }
  if (failures == 0) {
    std::printf("ok\n");
  }
  return failures == 0 ? 0 : 1;
}
