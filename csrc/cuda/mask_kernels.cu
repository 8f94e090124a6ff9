// CUDA kernels of the mask op. No ATen here (compile time, and the minimal toolkits that lack
// cuBLAS headers): the glue in dropblock_cuda.cpp passes raw pointers and plain sizes.
//
// The mask (the same bits as the CPU kernel, by the law in mask_logic.h: seeds drawn per chunk of
// 256 logical indices) comes by one of two paths:
//   window (the usual one, when a block reaches back at most kWindowMaxReach logical indices): one
//     kernel. A CTA (CUDA thread block) owns a window of whole chunks of the mask in shared memory:
//     its threads draw one chunk each, the window's and those of the `block_reach` indices before
//     it (whose blocks may reach into it), clear their blocks inside the window, then write the
//     words once and count them. The mask is written once, with no global atomics and no fill;
//     only the count's finished-CTA counter is zeroed first (cudaMemsetAsync of 8 bytes);
//   scatter (blocks that reach further back, e.g. large 3d volumes, where the halo would dwarf the
//     window): 1. the packed mask is set to all ones (cudaMemsetAsync); 2. seed kernel: one thread
//     per chunk clears the blocks of its seeds with 64-bit atomicAnd; 3. count kernel: popcount
//     of every word.
//   Both run the functions the CPU kernel runs (make_count_table, seeds_of_chunk,
//   clear_chunk_blocks) and end the same way: one partial sum per CTA; the last CTA to finish sums
//   them and writes the scale. Every CTA first computes the count table into shared memory (one
//   thread, a few dozen double operations at DropBlock's rates), from p read on the device if it
//   lives there.
// Nothing is read back to the host: a key or p on the device is read by the kernels and the
// scale is written by them, so the ops are safe to capture in a CUDA graph. A key or p that
// lives on the host is passed by value instead (no copy, no extra kernel).
//
// Instruction budget per chunk of 256 positions and thread (sm_90 SASS of window_mask_kernel,
// cuobjdump -sass, nvcc 13.0; 80 registers, no spill): the first Philox4x32-10 call and the loop
// set-up about 85 instructions (20 IMAD.WIDE: 10 unrolled rounds), the count scan about 5 a step
// (K + 1 steps; a warp takes its largest K, about 3), so about 120 for a chunk without seeds;
// a chunk with seeds adds about 38 per candidate byte of its first word (4 for K <= 4); its
// seeds (up to 4) go to a shared-memory queue that all the CTA's threads then place, one seed a
// thread (a division to find it, bd * bh rows of 32-bit shared-memory atomics), so a warp no
// longer waits for its lane with the most seeds; denser chunks walk their rows in their lane. The law before this one
// spent a Philox call and a classification with a tie and a seed branch per 16 positions: about 500 instructions per 16
// positions.
#include "mask_kernels.h"

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

// The window kernel: chunks drawn per window, one per thread (the emulation build in tests lowers
// it, so that small masks already span many windows). A window holds kWindowDraws - halo chunks,
// the halo being the chunks before it whose blocks reach into it; at least a quarter of the draws.
#ifndef DROPBLOCK_WINDOW_DRAWS
#define DROPBLOCK_WINDOW_DRAWS 256
#endif
constexpr int64_t kWindowDraws = DROPBLOCK_WINDOW_DRAWS;
static_assert(kWindowDraws >= 4 && kWindowDraws % 4 == 0, "a window holds a quarter of its draws at least");
constexpr int kWindowWordsMax = static_cast<int>(kWindowDraws * kChunk / 64);
// Its grid is the number of its CTAs resident at once on the device (each takes windows in turn),
// at most kWindowBlocks, which the emulation build also lowers so that windows need turns.
#ifndef DROPBLOCK_WINDOW_BLOCKS
#define DROPBLOCK_WINDOW_BLOCKS 4096
#endif
constexpr int64_t kWindowBlocks = DROPBLOCK_WINDOW_BLOCKS;
static_assert(kWindowBlocks >= 1, "the window kernel needs a CTA");
// kAuto takes the window kernel while the halo is at most a quarter of the draws of a full-size
// (256-draw) window: about what the scatter path's fill and count passes cost instead. Fixed, so
// that the emulation chooses as the GPU does.
constexpr int64_t kWindowMaxReach = 64 * kChunk;

int count_blocks(int64_t mask_words) {
  const int64_t blocks = ceil_div(mask_words, kThreads * 8);
  return static_cast<int>(blocks < 1 ? 1 : (blocks > kCountBlocks ? kCountBlocks : blocks));
}

// Chunks per window for blocks that reach `reach` indices back.
int64_t window_chunks(int64_t reach) {
  const int64_t halo = ceil_div(reach, kChunk);
  return kWindowDraws - halo >= kWindowDraws / 4 ? kWindowDraws - halo : kWindowDraws / 4;
}

// The most CTAs the window kernel may launch for this mask (its scratch is sized for them): at
// least one window of the smallest size per CTA.
int window_blocks_at_most(int64_t mask_words) {
  const int64_t blocks = ceil_div(mask_words, kWindowDraws / 4 * (kChunk / 64));
  return static_cast<int>(blocks < 1 ? 1 : (blocks > kWindowBlocks ? kWindowBlocks : blocks));
}

// ------------------------------------------------------------------------------------------
// Mask
// ------------------------------------------------------------------------------------------

// What the mask kernels read: MaskParams with the geometry turned into the seed grid.
struct MaskArgs {
  SeedGrid grid;
  ScalarArg<double> p;
  double gamma_factor;
  ScalarArg<int64_t> key;
  uint64_t* mask;
  int64_t mask_words;
  int64_t count_multiplier;
  int64_t numel;
  double eps;
  double* scale;
  int64_t* scratch;
  int64_t window_chunks;  // window kernel only
};

template <typename T>
__device__ __forceinline__ T read(ScalarArg<T> arg) {
  return arg.device != nullptr ? *arg.device : arg.value;
}

// The count table of this launch, into shared memory by thread 0; every thread of the CTA calls it.
__device__ __forceinline__ CountTable shared_count_table(const MaskArgs& a, uint64_t* bounds) {
  __shared__ CountTable table;
  if (threadIdx.x == 0) {
    table = make_count_table(seed_rate(read(a.p), a.gamma_factor), bounds);
  }
  __syncthreads();
  return table;
}

// Word w of `words` as counted: the bits past the last logical element (total_bits) cleared.
__device__ __forceinline__ uint64_t without_bits_past_end(uint64_t v, int64_t w, int64_t words, int64_t total_bits) {
  return w == words - 1 && (total_bits & 63) != 0 ? v & low_bits(total_bits & 63) : v;
}

// Scatter path, step 2 (after the fill): the blocks of every seed, cleared with global atomics.
__global__ void __launch_bounds__(kThreads) seed_kernel(MaskArgs a) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    *reinterpret_cast<unsigned long long*>(a.scratch) = 0;  // the count kernel's finished-CTA counter, next
  }
  __shared__ uint64_t bounds[kChunk];
  const CountTable table = shared_count_table(a, bounds);
  if (never_seeds(table)) {
    return;
  }
  const PhiloxKey key = make_key(static_cast<uint64_t>(read(a.key)));
  const AtomicClear clear{a.mask};
  const int64_t chunks = ceil_div(a.grid.total, kChunk);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks; c += stride) {
    const ChunkBits seeds = seeds_of_chunk(static_cast<uint64_t>(c), key, bounds, table);
    if (any(seeds)) {
      clear_chunk_blocks(a.grid, static_cast<uint64_t>(c), seeds, clear);
    }
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
// CTA goes to scratch[1 ..]; the last CTA to finish (counted in scratch[0], zeroed before the
// kernel) adds the partials and writes the scale (keep_scale). Every thread of the CTA calls it,
// last in the kernel.
__device__ __forceinline__ void publish_count(int64_t sum, const MaskArgs& a) {
  sum = block_sum(sum);
  volatile int64_t* partials = a.scratch + 1;
  __shared__ bool last_block;
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = sum;
    __threadfence();  // this CTA's partial is visible device-wide before it counts as finished
    const bool last = atomicAdd(reinterpret_cast<unsigned long long*>(a.scratch), 1ull) == gridDim.x - 1;
    if (last) {
      __threadfence();  // and the last CTA sees every partial counted before its own
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
    *a.scale = keep_scale(a.numel, kept * a.count_multiplier, a.eps);
  }
}

// Scatter path, step 3: popcount of the mask (clearing the bits past the last element).
__global__ void __launch_bounds__(kThreads) count_kernel(MaskArgs a) {
  int64_t sum = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < a.mask_words; w += stride) {
    const uint64_t v = without_bits_past_end(a.mask[w], w, a.mask_words, a.grid.total);
    if (w == a.mask_words - 1) {
      a.mask[w] = v;
    }
    sum += __popcll(v);
  }
  publish_count(sum, a);
}

// Clears bits of one window of the mask, held in shared memory as 32-bit halves of its words
// (a 32-bit atomicAnd is a native shared-memory operation; a 64-bit one is a compare-and-swap
// loop). Bits outside the window belong to other windows, whose CTAs draw the same seeds.
struct WindowClear {
  uint32_t* halves;  // 2 * window words: low half of word i at 2i, high half at 2i + 1
  int64_t first_word;
  int64_t words;
  __device__ void operator()(int64_t w, uint64_t bits) const {
    const int64_t i = w - first_word;
    if (i < 0 || i >= words) {
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

// Seeds the window kernel places with all its threads per window, at most (DropBlock's rates: about
// 170 per window at p = 0.1, block 7); the seeds past it are placed in their lanes.
constexpr unsigned kSeedQueue = 1024;
constexpr uint32_t kNoSeed = ~uint32_t(0);  // a queue slot of a chunk placed in its lane

// Window path: the whole mask and its count in one kernel (see the top of this file). At least
// 2 CTAs per SM: without the bound ptxas holds the kernel to 64 registers and spills; it needs
// about 80 (the chunk's 256 seed bits, Philox, the seed grid): 3 CTAs of 256 threads per SM.
__global__ void __launch_bounds__(kThreads, 2) window_mask_kernel(MaskArgs a) {
  __shared__ uint32_t window[2 * kWindowWordsMax];
  __shared__ uint64_t bounds[kChunk];
  // The seeds of sparse chunks, as offsets from the window's first drawn index: placed by all the
  // CTA's threads together instead of by their lanes (most lanes of a warp hold 0 to 2 seeds, a few
  // more: placing in the lanes would keep the warp busy for its largest count).
  __shared__ uint32_t queue[kSeedQueue];
  __shared__ unsigned queued;
  const CountTable table = shared_count_table(a, bounds);
  const bool seeds = !never_seeds(table);
  const PhiloxKey key = make_key(static_cast<uint64_t>(read(a.key)));
  const SeedGrid& grid = a.grid;
  const int64_t halo = ceil_div(block_reach(grid), kChunk);
  const int64_t window_words = a.window_chunks * (kChunk / 64);
  const int64_t windows = ceil_div(a.mask_words, window_words);
  int64_t sum = 0;
  for (int64_t win = blockIdx.x; win < windows; win += gridDim.x) {
    const int64_t first_word = win * window_words;
    for (int i = threadIdx.x; i < 2 * window_words; i += blockDim.x) {
      window[i] = ~0u;
    }
    if (threadIdx.x == 0) {
      queued = 0;
    }
    __syncthreads();
    const WindowClear clear{window, first_word, window_words};
    // The window's chunks and the halo's before them (a window starts on a chunk).
    const int64_t first_chunk = win * a.window_chunks;
    const int64_t first_drawn = first_chunk > halo ? first_chunk - halo : 0;
    if (seeds) {
      const int64_t end_chunk = ceil_div(
          first_word * 64 + window_words * 64 < grid.total ? first_word * 64 + window_words * 64 : grid.total, kChunk);
      for (int64_t c = first_drawn + threadIdx.x; c < end_chunk; c += blockDim.x) {
        const ChunkBits s = seeds_of_chunk(static_cast<uint64_t>(c), key, bounds, table);
        if (!any(s)) {
          continue;
        }
        const int n = bit_count(s);
        const unsigned slot = n <= kSparseChunkSeeds ? atomicAdd(&queued, static_cast<unsigned>(n)) : kSeedQueue;
        const bool fits = slot + n <= kSeedQueue;
        // Offsets of the seeds, or, where the queue is full, the sentinel in the slots taken.
        const uint32_t base = static_cast<uint32_t>((c - first_drawn) * kChunk);
        unsigned k = slot;
        const uint64_t words[4] = {s.w0, s.w1, s.w2, s.w3};
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          for (uint64_t v = words[q]; v != 0 && slot < kSeedQueue; v &= v - 1, ++k) {
            if (k < kSeedQueue) {
              queue[k] = fits ? base + 64 * q + lowest_bit64(v) : kNoSeed;
            }
          }
        }
        if (!fits) {
          clear_chunk_blocks(grid, static_cast<uint64_t>(c), s, clear);
        }
      }
    }
    __syncthreads();
    const unsigned entries = queued < kSeedQueue ? queued : kSeedQueue;
    for (unsigned i = threadIdx.x; i < entries; i += blockDim.x) {
      const int64_t g = first_drawn * kChunk + queue[i];
      if (queue[i] != kNoSeed && g < grid.total) {
        clear_block_if_it_fits(grid, g, clear);
      }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < window_words; i += blockDim.x) {
      const int64_t w = first_word + i;
      if (w < a.mask_words) {
        const uint64_t v = without_bits_past_end((static_cast<uint64_t>(window[2 * i + 1]) << 32) | window[2 * i], w,
                                                 a.mask_words, grid.total);
        a.mask[w] = v;
        sum += __popcll(v);
      }
    }
    __syncthreads();  // every word is read before the next window overwrites them
  }
  publish_count(sum, a);
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

cudaError_t launch_mask(const MaskParams& params, cudaStream_t stream) {
  MaskArgs a{make_seed_grid(params.geometry),
             params.p,
             params.gamma_factor,
             params.key,
             params.mask,
             params.mask_words,
             params.count_multiplier,
             params.numel,
             params.eps,
             params.scale,
             params.scratch,
             0};
  if (choose_mask_kernel(a.grid, params.kernel) == CudaMaskKernel::kWindow) {
    const cudaError_t zero = cudaMemsetAsync(a.scratch, 0, sizeof(int64_t), stream);  // the finished-CTA counter
    if (zero != cudaSuccess) {
      return zero;
    }
    a.window_chunks = window_chunks(block_reach(a.grid));
    const int64_t windows = ceil_div(a.mask_words, a.window_chunks * (kChunk / 64));
    const int resident = resident_window_blocks(stream);
    const int64_t ctas = windows < resident ? windows : resident;  // <= window_blocks_at_most: the scratch holds them
    launch(window_mask_kernel, dim3(static_cast<unsigned>(ctas)), kThreads, stream, a);
    return cudaSuccess;
  }
  const cudaError_t fill = cudaMemsetAsync(a.mask, 0xFF, static_cast<size_t>(a.mask_words) * sizeof(uint64_t), stream);
  if (fill != cudaSuccess) {
    return fill;
  }
  // mask_words > 0, so grid.total > 0: the seed kernel always runs (and zeroes scratch[0]).
  launch(seed_kernel, dim3(grid_for(ceil_div(a.grid.total, kChunk), kThreads)), kThreads, stream, a);
  launch(count_kernel, dim3(count_blocks(a.mask_words)), kThreads, stream, a);
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace dropblock
