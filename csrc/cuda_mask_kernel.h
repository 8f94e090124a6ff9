#pragma once
// The two paths of the CUDA mask (see csrc/cuda/mask_kernels.cu): one windowed kernel, or
// fill + scatter of the blocks + count. They give the same mask. Plain C++, shared by the op
// registration (every build, CPU-only included) and the CUDA kernels.
namespace dropblock {

enum class CudaMaskKernel : int { kAuto = 0, kScatter = 1, kWindow = 2 };

// The path asked for: kAuto (the geometry decides) unless DROPBLOCK_CUDA_MASK_KERNEL (read once)
// or torch.ops.dropblock_cuda._set_cuda_mask_kernel forces one. Defined in csrc/dropblock.cpp.
CudaMaskKernel requested_cuda_mask_kernel();

}  // namespace dropblock
