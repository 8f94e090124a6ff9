// CUDA kernels of the mask op. No ATen here (compile time, and the minimal toolkits that lack
// cuBLAS headers): the glue in dropblock_cuda.cpp passes raw pointers and plain sizes.
//
// Mask (the same bits as the CPU kernel, by the law in mask_logic.h), by one of two paths:
//   window (the usual one, when a block reaches back at most kWindowMaxReach logical indices): one
//     kernel. A CUDA block owns a window of kWindowWords mask words in shared memory: it draws the
//     seed bits of the window and of the `block_reach` indices before it (whose blocks may reach
//     into it), clears their blocks inside the window, writes the words once and counts them. The
//     mask is written once, with no global atomics and no fill; only the count's finished-block
//     counter is zeroed first (cudaMemsetAsync of 8 bytes);
//   scatter (blocks that reach further back, e.g. large 3d volumes, where the halo would dwarf the
//     window): 1. the packed mask is set to all ones (cudaMemsetAsync); 2. seed kernel: one thread
//     per Philox group of 16 logical indices clears the blocks of its seeds with 64-bit atomicAnd;
//     3. count kernel: popcount of every word.
//   Both use the very functions the CPU kernel runs (seed_bits_of_group, seeds_where_blocks_fit,
//   clear_blocks) and end the same way: one partial sum per block; the last block to finish sums
//   them and writes the scale. Seeds are rare (gamma ~ p / b^d), so nearly all the work is one
//   Philox call per 16 elements: the minimum the law allows.
// Nothing is read back to the host: a key or p on the device is read by the kernels and the
// scale is written by them, so the ops are safe to capture in a CUDA graph. A key or p that
// lives on the host is passed by value instead (no copy, no extra kernel).
//
#include "dropblock_kernels.h"

#include <algorithm>
#include <atomic>

#include <c10/macros/Macros.h>

#include "../mask_logic.h"
#include "kernel_launch.cuh"

namespace dropblock {

int64_t compiled_cuda_version() {
  return CUDART_VERSION;
}

namespace cuda {
namespace {

constexpr int64_t kCountBlocks = 1024;

// The window mask kernel: mask words per window (8192 logical indices: 2 Philox groups per
// thread and window, plus the halo). Its grid is the number of its blocks resident at once on the
// device (each takes windows in turn), at most kWindowBlocks, which the emulation build in tests
// lowers so that a few windows already need turns.
constexpr int kWindowWords = 128;
constexpr int64_t kWindowBits = int64_t(kWindowWords) * 64;
#ifndef DROPBLOCK_WINDOW_BLOCKS
#define DROPBLOCK_WINDOW_BLOCKS 4096
#endif
constexpr int64_t kWindowBlocks = DROPBLOCK_WINDOW_BLOCKS;
static_assert(kWindowBlocks >= 1, "the window kernel needs a block");
// kAuto takes the window kernel while the halo (blocks reaching back into a window) adds at most
// a quarter to its Philox work: about what the scatter path's fill and count passes cost instead.
constexpr int64_t kWindowMaxReach = kWindowBits / 4;

int count_blocks(int64_t mask_words) {
  const int64_t blocks = ceil_div(mask_words, kThreads * 8);
  return static_cast<int>(blocks < 1 ? 1 : (blocks > kCountBlocks ? kCountBlocks : blocks));
}

// The most blocks the window kernel may launch for this mask (its scratch is sized for them).
int window_blocks_at_most(int64_t mask_words) {
  const int64_t blocks = ceil_div(mask_words, kWindowWords);
  return static_cast<int>(blocks < 1 ? 1 : (blocks > kWindowBlocks ? kWindowBlocks : blocks));
}

// ------------------------------------------------------------------------------------------
// Mask
// ------------------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ T read(ScalarArg<T> arg) {
  return arg.device != nullptr ? *arg.device : arg.value;
}

// Draws the seed bits of Philox group k and clears the blocks of those where a block fits.
template <typename Clear>
__device__ __forceinline__ void clear_blocks_of_group(const SeedGrid& grid, int64_t k, PhiloxKey key,
                                                      SeedThreshold threshold, const Clear& clear) {
  const uint32_t bits = seed_bits_of_group(static_cast<uint64_t>(k), key, threshold);
  if (bits != 0) {
    clear_blocks(grid, static_cast<uint64_t>(k), seeds_where_blocks_fit(grid, static_cast<uint64_t>(k), bits), clear);
  }
}

// Word w of `words` as counted: the bits past the last logical element (total_bits) cleared.
__device__ __forceinline__ uint64_t without_bits_past_end(uint64_t v, int64_t w, int64_t words, int64_t total_bits) {
  return w == words - 1 && (total_bits & 63) != 0 ? v & low_bits(total_bits & 63) : v;
}

// Scatter path, step 2 (after the fill): the blocks of every seed, cleared with global atomics.
__global__ void __launch_bounds__(kThreads) seed_kernel(SeedGrid grid, double gamma_factor, ScalarArg<int64_t> seed,
                                                        ScalarArg<double> drop_probability,
                                                        uint64_t* __restrict__ mask,
                                                        unsigned long long* __restrict__ count_finished) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    *count_finished = 0;  // the count kernel's finished-block counter, which runs next on the stream
  }
  const SeedThreshold threshold = make_seed_threshold(read(drop_probability), gamma_factor);
  if (never_seeds(threshold)) {
    return;
  }
  const PhiloxKey key = make_key(static_cast<uint64_t>(read(seed)));
  const AtomicClear clear{mask};
  const int64_t groups = (grid.total + 15) / 16;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < groups; k += stride) {
    clear_blocks_of_group(grid, k, key, threshold, clear);
  }
}

__device__ __forceinline__ int64_t block_sum(int64_t value) {
  __shared__ int64_t warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset >>= 1) {
    value += __shfl_down_sync(0xFFFFFFFFu, value, offset);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    warp_sums[warp] = value;
  }
  __syncthreads();
  value = 0;
  if (warp == 0) {
    value = lane < kThreads / 32 ? warp_sums[lane] : 0;
    for (int offset = 16; offset > 0; offset >>= 1) {
      value += __shfl_down_sync(0xFFFFFFFFu, value, offset);
    }
  }
  return value;  // valid in thread 0
}

// The end of both mask paths: `sum` is this thread's count of kept bits. One partial sum per
// block goes to scratch[1 ..]; the last block to finish (counted in scratch[0], zeroed before the
// kernel) adds the partials and writes the scale (keep_scale). Every thread of the block calls it,
// last in the kernel.
__device__ __forceinline__ void publish_count(int64_t sum, int64_t* scratch, int64_t multiplier, int64_t numel,
                                              double eps, double* __restrict__ scale) {
  sum = block_sum(sum);
  volatile int64_t* partials = scratch + 1;
  __shared__ bool last_block;
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = sum;
    __threadfence();  // this block's partial is visible device-wide before it counts as finished
    const bool last = atomicAdd(reinterpret_cast<unsigned long long*>(scratch), 1ull) == gridDim.x - 1;
    if (last) {
      __threadfence();  // and the last block sees every partial counted before its own
    }
    last_block = last;
  }
  __syncthreads();
  if (!last_block) {
    return;
  }
  int64_t kept = 0;
  for (unsigned i = threadIdx.x; i < gridDim.x; i += blockDim.x) {
    kept += partials[i];  // volatile: read from L2, never a stale L1 line
  }
  kept = block_sum(kept);
  if (threadIdx.x == 0) {
    *scale = keep_scale(numel, kept * multiplier, eps);
  }
}

// Scatter path, step 3: popcount of the mask (clearing the bits past the last element).
__global__ void __launch_bounds__(kThreads) count_kernel(uint64_t* __restrict__ mask, int64_t words,
                                                         int64_t total_bits, int64_t* scratch,
                                                         int64_t multiplier, int64_t numel, double eps,
                                                         double* __restrict__ scale) {
  int64_t sum = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < words; w += stride) {
    const uint64_t v = without_bits_past_end(mask[w], w, words, total_bits);
    if (w == words - 1) {
      mask[w] = v;
    }
    sum += __popcll(v);
  }
  publish_count(sum, scratch, multiplier, numel, eps, scale);
}

// Clears bits of one window of the mask, held in shared memory as 32-bit halves of its words
// (a 32-bit atomicAnd is a native shared-memory operation; a 64-bit one is a compare-and-swap
// loop). Bits outside the window belong to other windows, whose blocks draw the same seeds.
struct WindowClear {
  uint32_t* halves;  // 2 * kWindowWords: low half of word i at 2i, high half at 2i + 1
  int64_t first_word;
  __device__ void operator()(int64_t w, uint64_t bits) const {
    const int64_t i = w - first_word;
    if (i < 0 || i >= kWindowWords) {
      return;
    }
    // Blocks of two seeds may overlap: atomics.
    if (static_cast<uint32_t>(bits) != 0) {
      atomicAnd(halves + 2 * i, ~static_cast<uint32_t>(bits));
    }
    if (static_cast<uint32_t>(bits >> 32) != 0) {
      atomicAnd(halves + 2 * i + 1, ~static_cast<uint32_t>(bits >> 32));
    }
  }
};

// Window path: the whole mask and its count in one kernel (see the top of this file).
__global__ void __launch_bounds__(kThreads) window_mask_kernel(SeedGrid grid, double gamma_factor,
                                                               ScalarArg<int64_t> seed,
                                                               ScalarArg<double> drop_probability,
                                                               uint64_t* __restrict__ mask, int64_t words,
                                                               int64_t* scratch, int64_t multiplier, int64_t numel,
                                                               double eps, double* __restrict__ scale) {
  __shared__ uint32_t window[2 * kWindowWords];
  const SeedThreshold threshold = make_seed_threshold(read(drop_probability), gamma_factor);
  const bool seeds = !never_seeds(threshold);
  const PhiloxKey key = make_key(static_cast<uint64_t>(read(seed)));
  const int64_t reach = block_reach(grid);
  const int64_t windows = ceil_div(words, kWindowWords);
  int64_t sum = 0;
  for (int64_t win = blockIdx.x; win < windows; win += gridDim.x) {
    const int64_t first_word = win * kWindowWords;
    for (int i = threadIdx.x; i < 2 * kWindowWords; i += blockDim.x) {
      window[i] = ~0u;
    }
    __syncthreads();
    if (seeds) {
      // Seeds from `reach` indices before the window to its end; groups of 16 that straddle
      // either edge are drawn whole (WindowClear writes nothing outside the window).
      const int64_t first_bit = first_word * 64;
      const int64_t end_bit = first_bit + kWindowBits < grid.total ? first_bit + kWindowBits : grid.total;
      const int64_t first_group = (first_bit > reach ? first_bit - reach : 0) / 16;
      const int64_t end_group = ceil_div(end_bit, 16);
      const WindowClear clear{window, first_word};
      for (int64_t k = first_group + threadIdx.x; k < end_group; k += blockDim.x) {
        clear_blocks_of_group(grid, k, key, threshold, clear);
      }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < kWindowWords; i += blockDim.x) {
      const int64_t w = first_word + i;
      if (w < words) {
        const uint64_t v =
            without_bits_past_end((static_cast<uint64_t>(window[2 * i + 1]) << 32) | window[2 * i], w, words, grid.total);
        mask[w] = v;
        sum += __popcll(v);
      }
    }
    __syncthreads();  // every word is read before the next window overwrites them
  }
  publish_count(sum, scratch, multiplier, numel, eps, scale);
}

// The window kernel's grid: as many blocks as the device holds at once (so that every block takes
// the same number of windows, give or take one), asked once per device; at most kWindowBlocks.
// Not asked while `stream` is being captured into a CUDA graph (the first query of a kernel may
// load its module, which a capture must not see): kWindowBlocks then, a grid as correct.
int resident_window_blocks(cudaStream_t stream) {
#ifdef DROPBLOCK_CUDA_EMULATION
  (void)stream;
  return static_cast<int>(kWindowBlocks);
#else
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices];  // 0: not asked yet
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) {
    (void)cudaGetLastError();  // leave no error for the launch check to report
    return static_cast<int>(kWindowBlocks);
  }
  int blocks = cached[device].load(std::memory_order_relaxed);
  if (blocks == 0) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess) {
      (void)cudaGetLastError();
      return static_cast<int>(kWindowBlocks);
    }
    if (capture != cudaStreamCaptureStatusNone) {
      return static_cast<int>(kWindowBlocks);  // not cached: asked again outside the capture
    }
    int sms = 0, per_sm = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) == cudaSuccess &&
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, window_mask_kernel, kThreads, 0) == cudaSuccess &&
        sms > 0 && per_sm > 0) {
      blocks = sms * per_sm < kWindowBlocks ? sms * per_sm : static_cast<int>(kWindowBlocks);
    } else {
      (void)cudaGetLastError();
      blocks = static_cast<int>(kWindowBlocks);
    }
    cached[device].store(blocks, std::memory_order_relaxed);
  }
  return blocks;
#endif
}

}  // namespace

int64_t mask_count_scratch_elements(int64_t mask_words) {
  return std::max(count_blocks(mask_words), window_blocks_at_most(mask_words)) + 1;
}

namespace {

CudaMaskKernel choose_mask_kernel(const SeedGrid& grid, CudaMaskKernel requested) {
  if (requested != CudaMaskKernel::kAuto) {
    return requested;
  }
  return block_reach(grid) <= kWindowMaxReach ? CudaMaskKernel::kWindow : CudaMaskKernel::kScatter;
}

}  // namespace

CudaMaskKernel choose_mask_kernel(const MaskGeometry& g, CudaMaskKernel requested) {
  return choose_mask_kernel(make_seed_grid(g), requested);
}

cudaError_t launch_mask(const MaskGeometry& g, ScalarArg<double> drop_probability, double gamma_factor,
                        ScalarArg<int64_t> seed, uint64_t* mask, int64_t mask_words, int64_t count_multiplier,
                        int64_t numel, double eps, double* scale, int64_t* scratch, CudaMaskKernel kernel,
                        cudaStream_t stream) {
  const SeedGrid grid = make_seed_grid(g);
  if (choose_mask_kernel(grid, kernel) == CudaMaskKernel::kWindow) {
    const cudaError_t zero = cudaMemsetAsync(scratch, 0, sizeof(int64_t), stream);  // the finished-block counter
    if (zero != cudaSuccess) {
      return zero;
    }
    const int most = window_blocks_at_most(mask_words), resident = resident_window_blocks(stream);
    launch(window_mask_kernel, dim3(most < resident ? most : resident), kThreads, stream, grid, gamma_factor, seed,
           drop_probability, mask, mask_words, scratch, count_multiplier, numel, eps, scale);
    return cudaSuccess;
  }
  const cudaError_t fill = cudaMemsetAsync(mask, 0xFF, static_cast<size_t>(mask_words) * sizeof(uint64_t), stream);
  if (fill != cudaSuccess) {
    return fill;
  }
  // mask_words > 0, so grid.total > 0: the seed kernel always runs (and zeroes scratch[0]).
  launch(seed_kernel, dim3(grid_for(ceil_div(grid.total, 16), kThreads)), kThreads, stream, grid, gamma_factor, seed,
         drop_probability, mask, reinterpret_cast<unsigned long long*>(scratch));
  launch(count_kernel, dim3(count_blocks(mask_words)), kThreads, stream, mask, mask_words, grid.total, scratch,
         count_multiplier, numel, eps, scale);
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace dropblock
