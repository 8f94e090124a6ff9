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
// One private composite, _drop_block_train (its kernel in autograd/dropblock_autograd.cpp): an
// eager training forward in one call from Python (the key drawn from the default generator of the
// input's device as torch.randint draws it, then the two ops above), because the Python calls
// around the ops cost more than the ops themselves on a small map. torch.compile, TorchScript and
// the transforms keep the separate ops. The other private ops are in private_ops.cpp.
#include <torch/library.h>

#ifdef DROPBLOCK_PYTHON_MODULE
#include <Python.h>
#endif

TORCH_LIBRARY(dropblock_cuda, m) {
  m.def(
      "drop_block_mask(Tensor input, Tensor seed, Tensor p, int[] block_size, float eps, bool shared_channels)"
      " -> (Tensor mask, Tensor scale)");
  m.def("drop_block_apply(Tensor input, Tensor mask, Tensor scale, bool shared_channels) -> Tensor");
  m.def("drop_block_apply_(Tensor(a!) input, Tensor mask, Tensor scale, bool shared_channels) -> ()");
  m.def(
      "_drop_block_train(Tensor input, float p, int[] block_size, float eps, bool shared_channels, "
      "bool scale_by_keep) -> Tensor");
}

#ifdef DROPBLOCK_PYTHON_MODULE
// `import dropblock_cuda._C` loads this library, which runs the registrations above. Builds
// without Python (CMake) are loaded with torch.ops.load_library or linked by C++ programs.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
#endif
