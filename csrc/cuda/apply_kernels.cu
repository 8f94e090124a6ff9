// CUDA kernels of the apply ops (raw pointers, no ATen: see mask_kernels.cu).
//
// Apply: out = keep ? in * scale : 0 in the op math type, by one of three paths:
//  * contiguous: input and output both row-major (or the input one expanded value): vectors of up
//    to 16 bytes (narrower where alignment, or planes smaller than a vector for a shared mask,
//    forbid);
//  * channels-last tiles: both dense with the channels innermost and 16 channels or more: each
//    thread keeps a group of V channels (a 16-byte vector where C allows) over a tile of positions;
//  * strided: anything else, in the output's memory order, several elements per thread, indices
//    by multiply-high division (apply_indexing.h); vectors into a dense output where the input is
//    laid out alike or repeats one value along the innermost dim.
// Every kernel takes one argument, an ApplyKernelParams holding the pointers and its path's plan.
// Words: a CTA is a CUDA thread block; a "block" is a dropped DropBlock block.
#include "apply_kernels.h"

#include <algorithm>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <c10/macros/Macros.h>

#include "../packed_mask.h"
#include "kernel_launch.cuh"

namespace dropblock {
namespace cuda {
namespace {

// ------------------------------------------------------------------------------------------
// Apply
// ------------------------------------------------------------------------------------------

template <typename T>
struct Math;
template <>
struct Math<float> {
  using acc = float;
  static __device__ __forceinline__ float to_acc(float v) { return v; }
  static __device__ __forceinline__ float from_acc(float v) { return v; }
};
template <>
struct Math<double> {
  using acc = double;
  static __device__ __forceinline__ double to_acc(double v) { return v; }
  static __device__ __forceinline__ double from_acc(double v) { return v; }
};
template <>
struct Math<__half> {
  using acc = float;
  static __device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_acc(float v) { return __float2half_rn(v); }
};
template <>
struct Math<__nv_bfloat16> {
  using acc = float;
  static __device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_acc(float v) { return __float2bfloat16_rn(v); }
};

template <typename T>
__device__ __forceinline__ T apply_one(T v, bool keep, typename Math<T>::acc scale) {
  using M = Math<T>;
  return M::from_acc(keep ? M::to_acc(v) * scale : typename M::acc(0));
}

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// The one argument of every apply kernel: the pointers of ApplyParams, typed, and the plan the
// launcher worked out for the kernel's path (ContiguousPlan, StridedPlan, ChannelsLastPlan).
template <typename T, typename Plan>
struct ApplyKernelParams {
  const T* in;
  T* out;
  const uint64_t* __restrict__ mask;
  const double* __restrict__ scale;
  Plan plan;
};

// ------------------------------------------------------------------------------------------
// Contiguous
// ------------------------------------------------------------------------------------------

constexpr int kUnroll = 4;

struct ContiguousPlan {
  int64_t n;                   // elements
  SharedMaskBits shared_bits;  // where a shared mask's bits lie (kShared only)
};

// Elements [0, n) of contiguous input and output, V per vector, kUnroll vectors per thread.
// Budget (sm_90 SASS, whole kernel, per-channel mask): float V = 4: 195 instructions for the 16
// elements of a thread (12 each, tail and set-up included), half V = 8: 266 for 32 (8.3).
// Mask bit of element e: e, or (e / (C * S)) * S + e % S when the channels share the mask (then
// V <= S, and a vector's bits come in at most two runs: shared_keep_bits). kSingleValue: the input
// is one value expanded over the whole shape (the gradient of y.sum()): read once per thread.
template <typename T, int V, bool kShared, bool kSingleValue>
__device__ __forceinline__ void apply_contiguous(const ApplyKernelParams<T, ContiguousPlan>& p) {
  using acc_t = typename Math<T>::acc;
  const acc_t scale = static_cast<acc_t>(*p.scale);
  const int64_t n = p.plan.n;
  const int64_t vectors = n / V;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * (kThreads * kUnroll) + threadIdx.x;
  Pack<T, V> data[kUnroll];
  uint32_t keep[kUnroll];
  T value{};
  if (kSingleValue) {
    value = p.in[0];
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t i = base + u * kThreads;
    if (i < vectors) {
      if (!kSingleValue) {
        data[u] = reinterpret_cast<const Pack<T, V>*>(p.in)[i];
      }
      // Per channel, a vector's V bits lie in one word (V divides 64 and the vector's first bit);
      // a shared mask's may straddle a plane and a word.
      keep[u] = kShared ? shared_keep_bits(p.mask, p.plan.shared_bits, i * V, V)
                        : static_cast<uint32_t>(p.mask[(i * V) >> 6] >> ((i * V) & 63));
    }
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t i = base + u * kThreads;
    if (i < vectors) {
      Pack<T, V> result;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        result.v[j] = apply_one(kSingleValue ? value : data[u].v[j], (keep[u] >> j) & 1u, scale);
      }
      reinterpret_cast<Pack<T, V>*>(p.out)[i] = result;
    }
  }
  // The last n % V elements, if any.
  if (blockIdx.x == 0 && threadIdx.x < n - vectors * V) {
    const int64_t e = vectors * V + threadIdx.x;
    const int64_t bit = kShared ? shared_mask_bit(p.plan.shared_bits, e) : e;
    p.out[e] = apply_one(kSingleValue ? value : p.in[e], keep_bit(p.mask, bit), scale);
  }
}

// Two kernels rather than a flag, so that the contiguous kernel keeps its name and template
// (apply_contiguous_kernel<T, V, kShared>: the GPU tests read its width from the profiler).
template <typename T, int V, bool kShared>
__global__ void __launch_bounds__(kThreads) apply_contiguous_kernel(const ApplyKernelParams<T, ContiguousPlan> p) {
  apply_contiguous<T, V, kShared, false>(p);
}

template <typename T, int V, bool kShared>
__global__ void __launch_bounds__(kThreads) apply_single_value_kernel(const ApplyKernelParams<T, ContiguousPlan> p) {
  apply_contiguous<T, V, kShared, true>(p);
}

template <typename T, int V, bool kShared, bool kSingleValue>
void launch_contiguous(const ApplyKernelParams<T, ContiguousPlan>& p, cudaStream_t stream) {
  const int64_t vectors = p.plan.n / V;
  const int64_t ctas = vectors == 0 ? 1 : ceil_div(vectors, kThreads * kUnroll);
  const dim3 grid(static_cast<unsigned>(ctas));
  if constexpr (kSingleValue) {
    launch(apply_single_value_kernel<T, V, kShared>, grid, kThreads, stream, p);
  } else {
    launch(apply_contiguous_kernel<T, V, kShared>, grid, kThreads, stream, p);
  }
}

// The widest vector the output's (and, unless it is one value, the input's) alignment allows.
template <typename T, bool kShared, bool kSingleValue>
void launch_contiguous_widest(const ApplyKernelParams<T, ContiguousPlan>& p, int64_t S, cudaStream_t stream) {
  constexpr int kWidest = 16 / sizeof(T);
  const uintptr_t addresses =
      reinterpret_cast<uintptr_t>(p.out) | (kSingleValue ? 0 : reinterpret_cast<uintptr_t>(p.in));
  auto fits = [&](int v) { return addresses % (v * sizeof(T)) == 0 && (!kShared || v <= S); };
  if (kWidest >= 8 && fits(8)) {
    launch_contiguous<T, (kWidest >= 8 ? 8 : 1), kShared, kSingleValue>(p, stream);
  } else if (kWidest >= 4 && fits(4)) {
    launch_contiguous<T, (kWidest >= 4 ? 4 : 1), kShared, kSingleValue>(p, stream);
  } else if (fits(2)) {
    launch_contiguous<T, 2, kShared, kSingleValue>(p, stream);
  } else {
    launch_contiguous<T, 1, kShared, kSingleValue>(p, stream);
  }
}

template <typename T, bool kSingleValue>
void launch_contiguous_any(const T* in, T* out, const ApplyParams& a, int64_t numel, int64_t S, cudaStream_t stream) {
  const int64_t C = a.sizes[1];
  const bool shared = a.shared_channels && C != 1;  // one channel: the bits are the per-channel ones
  ApplyKernelParams<T, ContiguousPlan> p{in, out, a.mask, a.scale, {numel, make_shared_mask_bits(S, C * S, numel)}};
  if (shared) {
    launch_contiguous_widest<T, true, kSingleValue>(p, S, stream);
  } else {
    launch_contiguous_widest<T, false, kSingleValue>(p, S, stream);
  }
}

// ------------------------------------------------------------------------------------------
// Strided
// ------------------------------------------------------------------------------------------

constexpr int kStridedUnroll = 4;

// Budget (sm_90 SASS from nvcc 13.0 -O3, float, 32-bit indices, 3 dims after merging: e.g. the
// transposed view (N * C, W, H) of a contiguous map): per element 2 divisions of 2 instructions
// (IMAD.HI, SHF), the remainder (1 IMAD) and 1 multiply-add per offset still unknown (the mask bit;
// the output's unless kOutDense, the input's unless kSameStrides), the mask's 32-bit word and bit
// (about 6), the element's load, scale, select and store (about 6), the dims' tests and constants
// once per kStridedUnroll items. Measured on the path a 3-dim plan takes, V = 1: 150 instructions
// per 4 elements (37.5 each) with both flags, 166 and 168 with one (out dense / same strides);
// each further dim adds 6 per element. V = 4 (both dense alike, memory's innermost size a multiple
// of 4, bits gathered 56 apart as for x.transpose(2, 3)): about 20 per element; half V = 8: about
// 15; an input that repeats one value along the innermost dim is read once per vector. The
// kernel this replaced ran a runtime 32-bit division (about 25 instructions with its
// branch) per dim, every dim of the input, one element per thread: about 185 per element.
// kStridedUnroll items per thread, all loaded before any is stored: several loads in flight per
// thread (each element is still read and written by one thread: in place is safe).
template <typename T, typename index_t, int V, bool kOutDense, bool kSameStrides>
__global__ void __launch_bounds__(kThreads) apply_strided_kernel(const ApplyKernelParams<T, StridedPlan<index_t>> p) {
  // V > 1: the output dense, the input laid out alike (kSameStrides) or one value along the
  // innermost dim (its stride 0: the launcher checks), V dividing that dim's size.
  static_assert(V == 1 || kOutDense, "vectors only into a dense output");
  using acc_t = typename Math<T>::acc;
  const acc_t scale = static_cast<acc_t>(*p.scale);
  const index_t items = static_cast<index_t>(p.plan.numel / V);
  const index_t base = static_cast<index_t>(blockIdx.x) * (kThreads * kStridedUnroll) + threadIdx.x;
  // The innermost dim's bit stride: 1 when memory's innermost dim is the mask's too.
  const index_t inner_bits = p.plan.bit_stride[p.plan.dims - 1];
  index_t first[kStridedUnroll], in_offsets[kStridedUnroll], out_offsets[kStridedUnroll], bits[kStridedUnroll];
#pragma unroll
  for (int u = 0; u < kStridedUnroll; ++u) {
    first[u] = (base + u * kThreads) * V;
  }
  strided_offsets_n<kStridedUnroll, kOutDense, kSameStrides>(p.plan, first, in_offsets, out_offsets, bits);
  Pack<T, V> data[kStridedUnroll];
  uint32_t keep[kStridedUnroll];
#pragma unroll
  for (int u = 0; u < kStridedUnroll; ++u) {
    const index_t i = base + u * kThreads;
    if (i < items) {
      const index_t bit = bits[u];
      if (V == 1) {
        data[u].v[0] = p.in[in_offsets[u]];
        keep[u] = keep_bit32(p.mask, bit);
      } else {
        // V divides the innermost size: the vector's elements are consecutive along that dim.
        if (kSameStrides) {
          data[u] = *reinterpret_cast<const Pack<T, V>*>(p.in + in_offsets[u]);
        } else {
          data[u].v[0] = p.in[in_offsets[u]];  // one value along the innermost dim: lane 0 serves all
        }
        if (inner_bits == 1) {
          keep[u] = static_cast<uint32_t>(keep_bits(p.mask, static_cast<int64_t>(bit), V));
        } else {
          // The vector's bits lie inner_bits apart: one 32-bit word each.
          keep[u] = 0;
          index_t at = bit;
#pragma unroll
          for (int j = 0; j < V; ++j, at += inner_bits) {
            keep[u] |= static_cast<uint32_t>(keep_bit32(p.mask, at)) << j;
          }
        }
      }
    }
  }
#pragma unroll
  for (int u = 0; u < kStridedUnroll; ++u) {
    const index_t i = base + u * kThreads;
    if (i < items) {
      Pack<T, V> result;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        result.v[j] = apply_one(data[u].v[V == 1 || kSameStrides ? j : 0], (keep[u] >> j) & 1u, scale);
      }
      if (V == 1) {
        p.out[out_offsets[u]] = result.v[0];
      } else {
        *reinterpret_cast<Pack<T, V>*>(p.out + out_offsets[u]) = result;
      }
    }
  }
}

template <typename T, typename index_t, int V, bool kOutDense, bool kSameStrides>
void launch_strided(const ApplyKernelParams<T, StridedPlan<index_t>>& p, cudaStream_t stream) {
  const int64_t items = p.plan.numel / V;
  launch(apply_strided_kernel<T, index_t, V, kOutDense, kSameStrides>,
         dim3(static_cast<unsigned>(ceil_div(items, kThreads * kStridedUnroll))), kThreads, stream, p);
}

template <typename T, bool kSameStrides, typename Fits>
void launch_strided_widest(const ApplyKernelParams<T, StridedPlan<uint32_t>>& p, const Fits& fits,
                           cudaStream_t stream) {
  // 16 bytes, but 8 for 16-bit elements repeated along the innermost dim: ptxas spills 8 bytes in
  // that kernel at 16.
  constexpr int kWidest = (kSameStrides || sizeof(T) != 2 ? 16 : 8) / sizeof(T);
  if (kWidest >= 8 && fits(8)) {
    launch_strided<T, uint32_t, (kWidest >= 8 ? 8 : 1), true, kSameStrides>(p, stream);
  } else if (kWidest >= 4 && fits(4)) {
    launch_strided<T, uint32_t, (kWidest >= 4 ? 4 : 1), true, kSameStrides>(p, stream);
  } else if (kWidest >= 2 && fits(2)) {
    launch_strided<T, uint32_t, 2, true, kSameStrides>(p, stream);
  } else {
    launch_strided<T, uint32_t, 1, true, kSameStrides>(p, stream);
  }
}

template <typename T>
void launch_strided_any(const T* in, T* out, const ApplyParams& a, cudaStream_t stream) {
  if (!strided_fits_32bit(a.dim, a.sizes, a.in_strides, a.out_strides)) {
    const StridedPlan<uint64_t> plan =
        make_strided_plan<uint64_t>(a.dim, a.sizes, a.in_strides, a.out_strides, a.shared_channels);
    launch_strided<T, uint64_t, 1, false, false>({in, out, a.mask, a.scale, plan}, stream);
    return;
  }
  const StridedPlan<uint32_t> plan =
      make_strided_plan<uint32_t>(a.dim, a.sizes, a.in_strides, a.out_strides, a.shared_channels);
  const ApplyKernelParams<T, StridedPlan<uint32_t>> p{in, out, a.mask, a.scale, plan};
  // Vectors along the innermost dim where the output is dense and the input either laid out alike
  // or one value along that dim (expanded: e.g. the gradient of y.sum((2, 3), keepdim=True)), and
  // the dim's size and the alignment allow.
  const bool inner_broadcast = plan.in_stride[plan.dims - 1] == 0;
  if (plan.out_dense && (plan.same_strides || inner_broadcast)) {
    constexpr int kWidest = 16 / sizeof(T);
    const uintptr_t addresses =
        reinterpret_cast<uintptr_t>(out) | (plan.same_strides ? reinterpret_cast<uintptr_t>(in) : 0);
    const uint32_t inner = plan.by_size[plan.dims - 1].divisor;
    auto fits = [&](int v) { return v <= kWidest && inner % v == 0 && addresses % (v * sizeof(T)) == 0; };
    if (plan.same_strides) {
      launch_strided_widest<T, true>(p, fits, stream);
    } else {
      launch_strided_widest<T, false>(p, fits, stream);
    }
  } else if (plan.out_dense) {
    launch_strided<T, uint32_t, 1, true, false>(p, stream);
  } else if (plan.same_strides) {
    launch_strided<T, uint32_t, 1, false, true>(p, stream);
  } else {
    launch_strided<T, uint32_t, 1, false, false>(p, stream);
  }
}

// ------------------------------------------------------------------------------------------
// Channels last
// ------------------------------------------------------------------------------------------

// Budget (sm_90 SASS from nvcc 13.0 -O3): per vector of V channels at one position one 16-byte
// load and store, V multiplies, V bit tests (two 32-bit LOP3: the keep words are 64 positions
// wide) and selects, the address steps. Measured main loop (kUnroll positions of one vector each):
// float V = 4: 143 instructions per 16 elements (8.9 each), 116 with a shared mask (7.3); half
// V = 8: 254 per 32 (7.9), shared 191 (6.0). The kernel this replaced divided each element's tile
// index by the channel count (a 64-bit multiply-high) and moved it alone: 173 per 4 elements
// (43 each). The thread's keep words (V per-channel words, or the shared row's one) are read once
// per tile. kUnroll positions per round, all loaded before any is stored.
template <typename T, int V, bool kShared>
__global__ void __launch_bounds__(kThreads) apply_channels_last_kernel(const ApplyKernelParams<T, ChannelsLastPlan> p) {
  static_assert(kThreads == kTileThreads, "the plan's rows assume kThreads threads per CTA");
  using acc_t = typename Math<T>::acc;
  const ChannelsLastPlan& g = p.plan;
  const ChannelsLastThread t = channels_last_thread(g, blockIdx.x, blockIdx.y, static_cast<int>(threadIdx.x));
  if (!t.active) {
    return;
  }
  const acc_t scale = static_cast<acc_t>(*p.scale);
  constexpr int kWords = kShared ? 1 : V;
  uint64_t keep[kWords];
#pragma unroll
  for (int j = 0; j < kWords; ++j) {
    keep[j] = keep_bits(p.mask, channels_last_keep_row(g, t, j, kShared), t.count) >> t.row;
  }
  const int64_t first = channels_last_offset(g, t, t.row);
  const Pack<T, V>* in = reinterpret_cast<const Pack<T, V>*>(p.in + first);
  Pack<T, V>* out = reinterpret_cast<Pack<T, V>*>(p.out + first);
  const int64_t step = g.step;
  const int rows = g.rows;
  const int count = static_cast<int>(t.count);
  // Position row + k * rows of the tile is this thread's k-th; kUnroll of them per round, the
  // pointers stepped once per round.
  for (int k0 = 0; t.row + k0 * rows < count; k0 += kUnroll, in += kUnroll * step, out += kUnroll * step) {
    Pack<T, V> data[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (t.row + (k0 + u) * rows < count) {
        data[u] = in[u * step];
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (t.row + (k0 + u) * rows < count) {
        const int shift = (k0 + u) * rows;  // the keep words are shifted by row already
        Pack<T, V> result;
#pragma unroll
        for (int j = 0; j < V; ++j) {
          result.v[j] = apply_one(data[u].v[j], (keep[kShared ? 0 : j] >> shift) & 1u, scale);
        }
        out[u * step] = result;
      }
    }
  }
}

template <typename T, int V>
void launch_channels_last(const T* in, T* out, const ApplyParams& a, int64_t S, cudaStream_t stream) {
  const ChannelsLastPlan g = make_channels_last_plan(a.sizes[0], a.sizes[1], S, V);
  const dim3 grid(static_cast<unsigned>(g.position_tiles), static_cast<unsigned>(g.channel_tiles));
  const ApplyKernelParams<T, ChannelsLastPlan> p{in, out, a.mask, a.scale, g};
  if (a.shared_channels) {
    launch(apply_channels_last_kernel<T, V, true>, grid, kThreads, stream, p);
  } else {
    launch(apply_channels_last_kernel<T, V, false>, grid, kThreads, stream, p);
  }
}

// The widest vector of channels that C and the alignment of both tensors allow.
template <typename T>
void launch_channels_last_widest(const T* in, T* out, const ApplyParams& a, int64_t S, cudaStream_t stream) {
  constexpr int kWidest = 16 / sizeof(T);
  const uintptr_t addresses = reinterpret_cast<uintptr_t>(in) | reinterpret_cast<uintptr_t>(out);
  const int64_t C = a.sizes[1];
  auto fits = [&](int v) { return v <= kWidest && C % v == 0 && addresses % (v * sizeof(T)) == 0; };
  if (fits(8)) {
    launch_channels_last<T, (kWidest >= 8 ? 8 : 1)>(in, out, a, S, stream);
  } else if (fits(4)) {
    launch_channels_last<T, (kWidest >= 4 ? 4 : 1)>(in, out, a, S, stream);
  } else if (fits(2)) {
    launch_channels_last<T, 2>(in, out, a, S, stream);
  } else {
    launch_channels_last<T, 1>(in, out, a, S, stream);
  }
}

template <typename T>
void apply_typed(const ApplyParams& a, cudaStream_t stream) {
  int64_t numel = 1;
  for (int d = 0; d < a.dim; ++d) {
    numel *= a.sizes[d];
  }
  if (numel == 0) {
    return;
  }
  const T* in = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  const int64_t S = numel / (a.sizes[0] * a.sizes[1]);
  if (is_row_major(a.dim, a.sizes, a.out_strides)) {
    if (is_row_major(a.dim, a.sizes, a.in_strides)) {
      launch_contiguous_any<T, false>(in, out, a, numel, S, stream);
      return;
    }
    if (is_single_value(a.dim, a.sizes, a.in_strides)) {
      launch_contiguous_any<T, true>(in, out, a, numel, S, stream);
      return;
    }
  }
  if (use_channels_last_tiles(a.dim, a.sizes, a.in_strides, a.out_strides)) {
    launch_channels_last_widest(in, out, a, S, stream);
  } else {
    launch_strided_any(in, out, a, stream);
  }
}

}  // namespace

void launch_apply(ScalarKind kind, const ApplyParams& params, cudaStream_t stream) {
  switch (kind) {
    case ScalarKind::kFloat:
      apply_typed<float>(params, stream);
      break;
    case ScalarKind::kDouble:
      apply_typed<double>(params, stream);
      break;
    case ScalarKind::kHalf:
      apply_typed<__half>(params, stream);
      break;
    case ScalarKind::kBFloat16:
      apply_typed<__nv_bfloat16>(params, stream);
      break;
  }
}

}  // namespace cuda
}  // namespace dropblock
