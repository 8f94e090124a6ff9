// A host-side memcheck of the CUDA kernels: csrc/cuda/*.cu run under the host emulation
// (cuda_emulation.h), built with AddressSanitizer, on buffers of exactly the size the kernels may
// touch (so any read or write past them is reported). Results are compared with the CPU kernels by
// tests/test_cuda_emulated.py; this only exercises every launch path. Built and run by that test;
// prints "ok" and exits 0 when nothing is reported.
#define DROPBLOCK_CUDA_EMULATION
#define DROPBLOCK_WINDOW_BLOCKS 3  // windows taken in turns from a few on
#define DROPBLOCK_WINDOW_DRAWS 8   // small windows
#include "cuda_emulation.h"

#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <vector>

#include "cuda/mask_kernels.cu"
#include "cuda/apply_kernels.cu"
#include "dense_strides.h"

namespace {

using dropblock::MaskGeometry;
using dropblock::cuda::ScalarArg;
using dropblock::cuda::ScalarKind;
using Sizes = std::vector<int64_t>;

int64_t product(const Sizes& sizes) {
  return std::accumulate(sizes.begin(), sizes.end(), int64_t(1), std::multiplies<int64_t>());
}

// The mask kernels for `sizes` with blocks of side `block`, into exact-size buffers.
void run_mask(const Sizes& sizes, int64_t block, bool shared) {
  MaskGeometry g{};
  g.planes = shared ? sizes[0] : sizes[0] * sizes[1];
  const size_t pad = 3 - (sizes.size() - 2);
  for (size_t d = 0; d < 3; ++d) {
    g.size[d] = d < pad ? 1 : sizes[2 + d - pad];
    g.block[d] = d < pad ? 1 : std::min(block, g.size[d]);
  }
  const int64_t words = (g.planes * g.plane_numel() + 63) / 64;
  std::vector<uint64_t> mask(words);
  std::vector<int64_t> scratch(dropblock::cuda::mask_count_scratch_elements(words));
  double scale = 0.0, p = 0.3;
  int64_t key = 12345;
  for (auto kernel : {dropblock::CudaMaskKernel::kScatter, dropblock::CudaMaskKernel::kWindow}) {
    for (bool in_memory : {false, true}) {
      const ScalarArg<double> p_arg = in_memory ? ScalarArg<double>{&p, 0.0} : ScalarArg<double>{nullptr, p};
      const ScalarArg<int64_t> key_arg = in_memory ? ScalarArg<int64_t>{&key, 0} : ScalarArg<int64_t>{nullptr, key};
      const dropblock::cuda::MaskParams params{
          g,    p_arg,  0.05,           key_arg, mask.data(), words, shared ? sizes[1] : 1, product(sizes),
          1e-6, &scale, scratch.data(), kernel};
      dropblock::cuda::launch_mask(params, nullptr);
    }
  }
}

// Elements a view of `sizes` / `strides` reaches, from its first: 1 + sum (size - 1) * stride.
int64_t extent(const Sizes& sizes, const Sizes& strides) {
  int64_t last = 0;
  for (size_t d = 0; d < sizes.size(); ++d) {
    last += (sizes[d] - 1) * strides[d];
  }
  return last + 1;
}

// In place runs the same kernels over the same ranges, so only out-of-place calls are made.
template <typename T>
void run_apply(ScalarKind kind, const Sizes& sizes, const Sizes& in_strides, const Sizes& out_strides,
               int64_t in_offset, bool shared) {
  const int64_t planes = shared ? sizes[0] : sizes[0] * sizes[1];
  const int64_t bits = planes * (product(sizes) / (sizes[0] * sizes[1]));
  std::vector<uint64_t> mask((bits + 63) / 64);
  for (size_t w = 0; w < mask.size(); ++w) {
    mask[w] = 0x9E3779B97F4A7C15ull * (w + 1);
  }
  const double scale = 1.5;
  std::vector<T> in(in_offset + extent(sizes, in_strides));
  std::vector<T> out(extent(sizes, out_strides));
  dropblock::cuda::ApplyParams params{};
  params.in = in.data() + in_offset;
  params.out = out.data();
  params.mask = mask.data();
  params.scale = &scale;
  params.dim = static_cast<int>(sizes.size());
  for (int d = 0; d < params.dim; ++d) {
    params.sizes[d] = sizes[d];
    params.in_strides[d] = in_strides[d];
    params.out_strides[d] = out_strides[d];
  }
  params.shared_channels = shared;
  dropblock::cuda::launch_apply(kind, params, nullptr);
}

template <typename T>
void run_layouts(ScalarKind kind, const Sizes& sizes) {
  const size_t dim = sizes.size();
  std::vector<int> order(dim);
  std::iota(order.begin(), order.end(), 0);
  std::vector<int> channels_last = order;
  channels_last.erase(channels_last.begin() + 1);
  channels_last.push_back(1);
  const std::vector<int> reversed(order.rbegin(), order.rend());
  const Sizes contiguous = dense_strides(sizes, order, 1);
  const Sizes cl = dense_strides(sizes, channels_last, 1);
  const Sizes rev = dense_strides(sizes, reversed, 1);
  for (bool shared : {false, true}) {
    run_apply<T>(kind, sizes, contiguous, contiguous, 0, shared);
    for (int64_t offset : {1, 2, 4}) {  // misaligned by 1, 2, 4 elements: every narrower vector width
      run_apply<T>(kind, sizes, contiguous, contiguous, offset, shared);
    }
    for (int64_t offset : {0, 1, 2, 4}) {  // channels-last tiles and dense permuted walks, every width
      run_apply<T>(kind, sizes, cl, cl, offset, shared);
      run_apply<T>(kind, sizes, rev, rev, offset, shared);
    }
    run_apply<T>(kind, sizes, dense_strides(sizes, order, 2), contiguous, 0, shared);
    // Expanded inputs: one value (a 1-element buffer: it must be the only element read), and one
    // expanded over the spatial dims.
    run_apply<T>(kind, sizes, Sizes(dim, 0), contiguous, 0, shared);
    Sizes spatial_broadcast = contiguous;
    for (size_t d = 2; d < dim; ++d) {
      spatial_broadcast[d] = 0;
    }
    spatial_broadcast[0] = sizes[1];
    spatial_broadcast[1] = 1;
    run_apply<T>(kind, sizes, spatial_broadcast, contiguous, 0, shared);
  }
}

}  // namespace

int main() {
  const std::vector<Sizes> shapes = {{2, 3, 50},   {2, 3, 17, 19}, {2, 20, 9, 11}, {1, 300, 3, 5}, {2, 16, 3, 4, 5},
                                     {4, 5, 7, 7}, {2, 3, 2, 3},   {2, 18, 3, 5},  {1, 17, 4, 3},  {2, 3, 8, 16}};
  for (const Sizes& sizes : shapes) {
    for (bool shared : {false, true}) {
      run_mask(sizes, 3, shared);
      run_mask(sizes, 60, shared);  // blocks wider than 48, clamped to the map
    }
    // Element sizes 4, 8 and 2 (bfloat16 takes the paths of half).
    run_layouts<float>(ScalarKind::kFloat, sizes);
    run_layouts<double>(ScalarKind::kDouble, sizes);
    run_layouts<__half>(ScalarKind::kHalf, sizes);
  }
  run_mask({3, 7, 129, 131}, 5, false);  // several count blocks
  std::printf("ok\n");
  return 0;
}
