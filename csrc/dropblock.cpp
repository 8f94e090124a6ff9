// The op schema of dropblock_cuda, registered once; each backend folder adds its kernels.
//
// DropBlock runs as two ops so that the data is read once and written once:
//   drop_block_mask   draws the packed keep mask (1 bit per element, or per (sample, position)
//                     when the channels share it) and the scale numel / (eps + kept); it touches
//                     no data, only the input's shape, and is a pure function of `seed` and `p`
//                     (0-dim int64 / float64 tensors, on the input's device or on the CPU: on
//                     the device, torch.compile keeps a scheduled p symbolic and CUDA graphs
//                     read the current values; on the CPU, the CUDA kernels take them by value);
//   drop_block_apply  out = keep ? input * scale : 0, the single pass over the data. It is linear
//                     in its input, so it is its own backward;
//   drop_block_apply_ the same in place, without a gradient (see csrc/autograd/).
// One private composite, _drop_block_train: an eager training forward in one call from Python
// (the key drawn from the default generator of the input's device as torch.randint draws it, then
// the two ops above), because the Python calls around the ops cost more than the ops themselves on
// a small map. torch.compile, TorchScript and the transforms keep the separate ops.
// Two private ops: _cuda_version, and _set_cuda_mask_kernel, which picks one of the two CUDA mask
// paths (they give the same mask; benchmarks and tests compare them).
#include <atomic>
#include <cstdlib>
#include <string>

#include <c10/util/Exception.h>
#include <torch/library.h>

#include "cuda_mask_kernel.h"

#ifdef DROPBLOCK_PYTHON_MODULE
#include <Python.h>
#endif

namespace dropblock {
#ifdef DROPBLOCK_WITH_CUDA
int64_t compiled_cuda_version();
#endif
}  // namespace dropblock

namespace {

using dropblock::CudaMaskKernel;

int64_t cuda_version() {
#ifdef DROPBLOCK_WITH_CUDA
  return dropblock::compiled_cuda_version();
#else
  return -1;
#endif
}

constexpr const char* kMaskKernelNames[] = {"auto", "scatter", "window"};  // CudaMaskKernel's order

CudaMaskKernel parse_mask_kernel(const std::string& name, const char* what) {
  for (int i = 0; i < 3; ++i) {
    if (name == kMaskKernelNames[i]) {
      return static_cast<CudaMaskKernel>(i);
    }
  }
  TORCH_CHECK_VALUE(false, what, ": expected 'auto', 'window' or 'scatter', got '", name, "'");
}

// Starts from DROPBLOCK_CUDA_MASK_KERNEL, read once (getenv is not safe against a concurrent
// setenv, so it is not read on every call).
std::atomic<int>& mask_kernel_setting() {
  static std::atomic<int> setting{[] {
    const char* env = std::getenv("DROPBLOCK_CUDA_MASK_KERNEL");
    return static_cast<int>(env == nullptr || *env == '\0' ? CudaMaskKernel::kAuto
                                                             : parse_mask_kernel(env, "DROPBLOCK_CUDA_MASK_KERNEL"));
  }()};
  return setting;
}

std::string set_cuda_mask_kernel(const std::string& kernel) {
  const CudaMaskKernel requested = parse_mask_kernel(kernel, "_set_cuda_mask_kernel: kernel");
  return kMaskKernelNames[mask_kernel_setting().exchange(static_cast<int>(requested))];
}

}  // namespace

namespace dropblock {
CudaMaskKernel requested_cuda_mask_kernel() {
  return static_cast<CudaMaskKernel>(mask_kernel_setting().load(std::memory_order_relaxed));
}
}  // namespace dropblock

TORCH_LIBRARY(dropblock_cuda, m) {
  m.def("drop_block_mask(Tensor input, Tensor seed, Tensor p, int[] block_size, float eps, bool shared_channels)"
        " -> (Tensor mask, Tensor scale)");
  m.def("drop_block_apply(Tensor input, Tensor mask, Tensor scale, bool shared_channels) -> Tensor");
  m.def("drop_block_apply_(Tensor(a!) input, Tensor mask, Tensor scale, bool shared_channels) -> ()");
  m.def("_drop_block_train(Tensor input, float p, int[] block_size, float eps, bool shared_channels, "
        "bool scale_by_keep) -> Tensor");
  m.def("_cuda_version() -> int", &cuda_version);
  // Returns the previous setting: "auto" (the geometry decides), "window" or "scatter".
  m.def("_set_cuda_mask_kernel(str kernel) -> str", &set_cuda_mask_kernel);
}

#ifdef DROPBLOCK_PYTHON_MODULE
// `import dropblock_cuda._C` loads this library, which runs the registrations above. Builds
// without Python (CMake) are loaded with torch.ops.load_library or linked by C++ programs.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
#endif
