"""Builds dropblock_cuda: the C++ ops always, the CUDA kernels when torch has CUDA and nvcc exists.

Environment:
  FORCE_CUDA=1 / FORCE_CUDA=0   build the CUDA kernels / skip them, whatever is detected
  CUDA_HOME (or CUDA_PATH)      the CUDA toolkit; otherwise /usr/local/cuda, else nvcc's folder
  TORCH_CUDA_ARCH_LIST          GPU architectures; default: the visible GPUs, else 8.0;9.0+PTX
  MAX_JOBS                      parallel compile jobs (ninja)
"""

import glob
import os
import shutil
import sys

from setuptools import setup

DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def locate_cuda_home():
    """Where the CUDA toolkit is, set before torch.utils.cpp_extension reads it.

    torch guesses from the nvcc on PATH; a wrapper script such as /usr/local/bin/nvcc makes it
    guess /usr/local, which has no lib64/libcudart and fails at link time.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = ["/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for home in candidates:
        if os.path.isfile(os.path.join(home, "bin", "nvcc")) and os.path.isdir(os.path.join(home, "include")):
            return home
    return None


cuda_home = locate_cuda_home()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def should_build_cuda():
    force = os.environ.get("FORCE_CUDA")
    if force == "0":
        return False, "FORCE_CUDA=0"
    missing = []
    if not torch.version.cuda:
        missing.append(f"torch {torch.__version__} has no CUDA")
    if not cuda_home:
        missing.append("no CUDA toolkit (set CUDA_HOME)")
    if missing and force == "1":
        sys.exit("dropblock_cuda: FORCE_CUDA=1 but " + "; ".join(missing))
    if missing:
        return False, "; ".join(missing)
    return True, f"CUDA {torch.version.cuda} toolkit at {cuda_home}"


def extension():
    sources = sorted(
        glob.glob(os.path.join("csrc", "*.cpp"))
        + glob.glob(os.path.join("csrc", "autograd", "*.cpp"))
        + glob.glob(os.path.join("csrc", "cpu", "*.cpp"))
    )
    # at::parallel_for is OpenMP in the header: without -fopenmp it silently runs on one thread.
    # -ffp-contract=off: the count table of the mask law is a fixed sequence of IEEE double
    # operations that must round as on the GPU (see make_count_table in csrc/seed_draw.h): no fused multiply-adds.
    cxx_flags = ["-O3", "-fopenmp", "-ffp-contract=off"]
    with_cuda, reason = should_build_cuda()
    if not with_cuda:
        print(f"dropblock_cuda: building the CPU ops only ({reason})", file=sys.stderr)
        return CppExtension(
            "dropblock_cuda._C",
            sources,
            define_macros=[("DROPBLOCK_PYTHON_MODULE", None)],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
    print(
        f"dropblock_cuda: building the CPU and CUDA ops ({reason}; "
        f"arch list {os.environ.get('TORCH_CUDA_ARCH_LIST', 'of the visible GPUs')})",
        file=sys.stderr,
    )
    sources += sorted(
        glob.glob(os.path.join("csrc", "cuda", "*.cpp")) + glob.glob(os.path.join("csrc", "cuda", "*.cu"))
    )
    return CUDAExtension(
        "dropblock_cuda._C",
        sources,
        define_macros=[("DROPBLOCK_PYTHON_MODULE", None), ("DROPBLOCK_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
        extra_link_args=["-fopenmp"],
    )


# Metadata (name, version, dependencies) lives in pyproject.toml; this file adds the extension.
setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)
