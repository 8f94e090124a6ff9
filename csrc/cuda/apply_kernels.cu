// CUDA kernels of the apply ops (raw pointers, no ATen: see mask_kernels.cu).
//
// Apply: out = keep ? in * scale : 0 in the op math type: vector loads of up to 16 bytes when input
// and output are both contiguous (narrower where alignment, or planes smaller than a vector for a
// shared mask, forbid);
// tiles through shared memory when both are dense with the channels innermost and there are 16
// channels or more; else one thread per element in the output's memory order.
#include "dropblock_kernels.h"

#include <algorithm>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <c10/macros/Macros.h>

#include "../mask_logic.h"
#include "apply_indexing.h"
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

constexpr int kUnroll = 4;

// Elements [0, n) of contiguous input and output, V per vector, kUnroll vectors per thread.
// Mask bit of element e: e, or (e / (C * S)) * S + e % S when the channels share the mask (then
// V <= S, and a vector's bits come in at most two runs: shared_keep_bits).
template <typename T, int V, bool kShared>
__global__ void __launch_bounds__(kThreads) apply_contiguous_kernel(const T* in, T* out, int64_t n,
                                                                    const uint64_t* __restrict__ mask,
                                                                    const double* __restrict__ scale_ptr,
                                                                    SharedMaskBits shared_bits) {
  using acc_t = typename Math<T>::acc;
  const acc_t scale = static_cast<acc_t>(*scale_ptr);
  const int64_t vectors = n / V;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * (kThreads * kUnroll) + threadIdx.x;
  Pack<T, V> data[kUnroll];
  uint32_t keep[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t i = base + u * kThreads;
    if (i < vectors) {
      data[u] = reinterpret_cast<const Pack<T, V>*>(in)[i];
      // Per channel, a vector's V bits lie in one word (V divides 64 and the vector's first bit);
      // a shared mask's may straddle a plane and a word.
      keep[u] = kShared ? shared_keep_bits(mask, shared_bits, i * V, V)
                        : static_cast<uint32_t>(mask[(i * V) >> 6] >> ((i * V) & 63));
    }
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t i = base + u * kThreads;
    if (i < vectors) {
      Pack<T, V> result;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        result.v[j] = apply_one(data[u].v[j], (keep[u] >> j) & 1u, scale);
      }
      reinterpret_cast<Pack<T, V>*>(out)[i] = result;
    }
  }
  // The last n % V elements, if any.
  if (blockIdx.x == 0 && threadIdx.x < n - vectors * V) {
    const int64_t e = vectors * V + threadIdx.x;
    const int64_t bit = kShared ? shared_mask_bit(shared_bits, e) : e;
    out[e] = apply_one(in[e], keep_bit(mask, bit), scale);
  }
}

template <typename T, typename index_t>
__global__ void __launch_bounds__(kThreads) apply_strided_kernel(const T* in, T* out, StridedParams<index_t> p,
                                                                 const uint64_t* __restrict__ mask,
                                                                 const double* __restrict__ scale_ptr) {
  using acc_t = typename Math<T>::acc;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= p.numel) {
    return;
  }
  const acc_t scale = static_cast<acc_t>(*scale_ptr);
  index_t in_offset, out_offset, bit;
  strided_offsets(p, e, in_offset, out_offset, bit);
  out[out_offset] = apply_one(in[in_offset], keep_bit(mask, static_cast<int64_t>(bit)), scale);
}

template <typename T, int V, bool kShared>
void launch_contiguous(const T* in, T* out, int64_t numel, const uint64_t* mask, const double* scale, int64_t S,
                       int64_t CS, cudaStream_t stream) {
  const SharedMaskBits shared_bits = make_shared_mask_bits(S, CS, numel);
  const int64_t vectors = numel / V;
  const int64_t blocks = vectors == 0 ? 1 : ceil_div(vectors, kThreads * kUnroll);
  launch(apply_contiguous_kernel<T, V, kShared>, dim3(static_cast<unsigned>(blocks)), kThreads, stream, in, out,
         numel, mask, scale, shared_bits);
}

template <typename T, bool kShared>
void launch_contiguous_widest(const T* in, T* out, int64_t numel, const uint64_t* mask, const double* scale,
                              int64_t S, int64_t CS, cudaStream_t stream) {
  constexpr int kWidest = 16 / sizeof(T);
  const uintptr_t addresses = reinterpret_cast<uintptr_t>(in) | reinterpret_cast<uintptr_t>(out);
  auto fits = [&](int v) {
    return addresses % (v * sizeof(T)) == 0 && (!kShared || v <= S);
  };
  if (kWidest >= 8 && fits(8)) {
    launch_contiguous<T, (kWidest >= 8 ? 8 : 1), kShared>(in, out, numel, mask, scale, S, CS, stream);
  } else if (kWidest >= 4 && fits(4)) {
    launch_contiguous<T, (kWidest >= 4 ? 4 : 1), kShared>(in, out, numel, mask, scale, S, CS, stream);
  } else if (fits(2)) {
    launch_contiguous<T, 2, kShared>(in, out, numel, mask, scale, S, CS, stream);
  } else {
    launch_contiguous<T, 1, kShared>(in, out, numel, mask, scale, S, CS, stream);
  }
}

template <typename index_t, typename T>
void launch_strided(const T* in, T* out, int dim, const int64_t* sizes, const int64_t* in_strides,
                    const int64_t* out_strides, bool shared, const uint64_t* mask, const double* scale,
                    cudaStream_t stream) {
  const StridedParams<index_t> p = make_strided_params<index_t>(dim, sizes, in_strides, out_strides, shared);
  launch(apply_strided_kernel<T, index_t>, dim3(static_cast<unsigned>(ceil_div(p.numel, kThreads))), kThreads, stream,
         in, out, p, mask, scale);
}

// Channels-innermost memory: one block per tile (see apply_indexing.h). The keep words of the
// tile's channels go to shared memory once; the tile is then written in memory order, so both
// the data accesses and the mask loads (one word per channel per 64 positions) coalesce or nearly.
template <typename T, bool kShared>
__global__ void __launch_bounds__(kThreads) apply_channels_last_kernel(const T* in, T* out, ChannelsLastGrid g,
                                                                       const uint64_t* __restrict__ mask,
                                                                       const double* __restrict__ scale_ptr) {
  __shared__ uint64_t keep[kTileChannels];
  using acc_t = typename Math<T>::acc;
  const acc_t scale = static_cast<acc_t>(*scale_ptr);
  const ChannelsLastBlock b = channels_last_block(g, blockIdx.x, blockIdx.y);
  const int rows = kShared ? 1 : static_cast<int>(b.channels);
  for (int c = threadIdx.x; c < rows; c += blockDim.x) {
    keep[c] = keep_bits(mask, channels_last_keep_row(g, b, c, kShared), b.count);
  }
  __syncthreads();
  // kUnroll elements per thread and round, all loaded before any is stored: several loads in
  // flight per thread (each element is still read and written by one thread: in place is safe).
  const int64_t elements = b.count * b.channels;
  for (int64_t base = threadIdx.x; base < elements; base += static_cast<int64_t>(blockDim.x) * kUnroll) {
    int64_t offsets[kUnroll];
    bool kept[kUnroll];
    T values[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + static_cast<int64_t>(u) * blockDim.x;
      if (i < elements) {
        int k, c;
        offsets[u] = channels_last_element(g, b, i, k, c);
        kept[u] = (keep[kShared ? 0 : c] >> k) & 1u;
        values[u] = in[offsets[u]];
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (base + static_cast<int64_t>(u) * blockDim.x < elements) {
        out[offsets[u]] = apply_one(values[u], kept[u], scale);
      }
    }
  }
}

template <typename T>
void launch_channels_last(const T* in, T* out, const ChannelsLastGrid& g, const uint64_t* mask, const double* scale,
                          bool shared, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(g.position_tiles), static_cast<unsigned>(g.channel_tiles));
  if (shared) {
    launch(apply_channels_last_kernel<T, true>, grid, kThreads, stream, in, out, g, mask, scale);
  } else {
    launch(apply_channels_last_kernel<T, false>, grid, kThreads, stream, in, out, g, mask, scale);
  }
}

template <typename T>
void apply_typed(const T* in, T* out, int dim, const int64_t* sizes, const int64_t* in_strides,
                 const int64_t* out_strides, const uint64_t* mask, const double* scale, bool shared,
                 cudaStream_t stream) {
  int64_t numel = 1;
  for (int d = 0; d < dim; ++d) {
    numel *= sizes[d];
  }
  if (numel == 0) {
    return;
  }
  const int64_t C = sizes[1];
  const int64_t S = numel / (sizes[0] * C);
  if (is_row_major(dim, sizes, in_strides) && is_row_major(dim, sizes, out_strides)) {
    if (shared && C != 1) {
      launch_contiguous_widest<T, true>(in, out, numel, mask, scale, S, C * S, stream);
    } else {
      launch_contiguous_widest<T, false>(in, out, numel, mask, scale, S, C * S, stream);
    }
    return;
  }
  if (use_channels_last_tiles(dim, sizes, in_strides, out_strides)) {
    launch_channels_last(in, out, make_channels_last_grid(sizes[0], C, S), mask, scale, shared, stream);
  } else if (strided_fits_32bit(dim, sizes, in_strides, out_strides)) {
    launch_strided<uint32_t>(in, out, dim, sizes, in_strides, out_strides, shared, mask, scale, stream);
  } else {
    launch_strided<uint64_t>(in, out, dim, sizes, in_strides, out_strides, shared, mask, scale, stream);
  }
}

}  // namespace

void launch_apply(ScalarKind kind, const void* in, void* out, int dim, const int64_t* sizes,
                  const int64_t* in_strides, const int64_t* out_strides, const uint64_t* mask, const double* scale,
                  bool shared_channels, cudaStream_t stream) {
  switch (kind) {
    case ScalarKind::kFloat:
      apply_typed(static_cast<const float*>(in), static_cast<float*>(out), dim, sizes, in_strides, out_strides,
                  mask, scale, shared_channels, stream);
      break;
    case ScalarKind::kDouble:
      apply_typed(static_cast<const double*>(in), static_cast<double*>(out), dim, sizes, in_strides, out_strides,
                  mask, scale, shared_channels, stream);
      break;
    case ScalarKind::kHalf:
      apply_typed(static_cast<const __half*>(in), static_cast<__half*>(out), dim, sizes, in_strides, out_strides,
                  mask, scale, shared_channels, stream);
      break;
    case ScalarKind::kBFloat16:
      apply_typed(static_cast<const __nv_bfloat16*>(in), static_cast<__nv_bfloat16*>(out), dim, sizes, in_strides,
                  out_strides, mask, scale, shared_channels, stream);
      break;
  }
}

}  // namespace cuda
}  // namespace dropblock
