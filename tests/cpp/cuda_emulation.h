#pragma once
// Runs the CUDA kernels of csrc/cuda/*.cu on the host, for tests on machines
// without a GPU: one OS thread per thread of a block, the blocks one at a time (so a function-local
// static stands in for __shared__ memory), std::barrier for __syncthreads and the warp shuffles, real
// atomics for atomicAnd / atomicAdd. Slow and exact; it covers what those kernels use, nothing more.
// Include it before the .cu files, compiled by a host C++20 compiler with DROPBLOCK_CUDA_EMULATION.
#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#undef __global__
#undef __device__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __shared__ static
#define __launch_bounds__(...)

namespace dropblock_emulation {

constexpr unsigned kWarp = 32;

struct Block {
  explicit Block(unsigned threads) : sync(threads), warps(threads / kWarp) {}
  std::barrier<> sync;
  struct Warp {
    Warp() : sync(kWarp) {}
    std::barrier<> sync;
    uint64_t slots[kWarp] = {};
  };
  std::vector<Warp> warps;
};

inline thread_local Block* current_block = nullptr;

// The kernel of the latest emulated launch: tests ask which one a launcher chose (e.g. the vector
// width of the contiguous apply kernel) instead of inferring it.
inline std::atomic<const void*> last_kernel{nullptr};

}  // namespace dropblock_emulation

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

inline void __syncthreads() {
  dropblock_emulation::current_block->sync.arrive_and_wait();
}

inline void __threadfence() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

inline int __popcll(unsigned long long x) {
  return __builtin_popcountll(x);
}

inline unsigned int atomicAnd(unsigned int* address, unsigned int value) {
  return std::atomic_ref<unsigned int>(*address).fetch_and(value);
}

inline unsigned long long atomicAnd(unsigned long long* address, unsigned long long value) {
  return std::atomic_ref<unsigned long long>(*address).fetch_and(value);
}

inline unsigned int atomicAdd(unsigned int* address, unsigned int value) {
  return std::atomic_ref<unsigned int>(*address).fetch_add(value);
}

inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  return std::atomic_ref<unsigned long long>(*address).fetch_add(value);
}

template <typename T>
T __shfl_down_sync(unsigned /*mask: every lane takes part in this project's shuffles*/, T value, int offset) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "a shuffled value fits a 64-bit slot");
  auto& warp = dropblock_emulation::current_block->warps[threadIdx.x / dropblock_emulation::kWarp];
  const unsigned lane = threadIdx.x % dropblock_emulation::kWarp;
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  warp.slots[lane] = bits;
  warp.sync.arrive_and_wait();
  T result = value;
  if (lane + offset < dropblock_emulation::kWarp) {
    std::memcpy(&result, &warp.slots[lane + offset], sizeof(T));
  }
  warp.sync.arrive_and_wait();
  return result;
}

extern "C" inline cudaError_t cudaMemsetAsync(void* address, int value, size_t bytes, cudaStream_t) {
  std::memset(address, value, bytes);
  return cudaSuccess;
}

// kernel<<<grid, block>>>(args...): one OS thread per thread of a block, which run the blocks one
// after another (a barrier between two blocks, so the statics standing in for __shared__ memory
// belong to one block at a time).
template <typename... Params, typename... Args>
void emulate_launch(void (*kernel)(Params...), dim3 grid, dim3 block, Args... args) {
  dropblock_emulation::last_kernel.store(reinterpret_cast<const void*>(kernel));
  const unsigned threads = block.x * block.y * block.z;
  dropblock_emulation::Block state(threads);
  std::barrier<> between_blocks(threads);
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      dropblock_emulation::current_block = &state;
      threadIdx = uint3{t, 0, 0};
      blockDim = block;
      gridDim = grid;
      for (unsigned z = 0; z < grid.z; ++z) {
        for (unsigned y = 0; y < grid.y; ++y) {
          for (unsigned x = 0; x < grid.x; ++x) {
            blockIdx = uint3{x, y, z};
            kernel(args...);
            between_blocks.arrive_and_wait();
          }
        }
      }
    });
  }
  for (auto& thread : pool) {
    thread.join();
  }
}
