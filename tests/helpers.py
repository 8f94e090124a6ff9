import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import dropblock_cuda  # noqa: F401
from dropblock_cuda.functional import _draw_seed
from reference import keep_mask, unpack_mask

ops = torch.ops.dropblock_cuda
ROOT = Path(__file__).resolve().parents[1]
EPS = 1e-6  # the eps of the raw-op tests

# The skips of the CUDA tests; tests/conftest.py gives every test skipped for want of a "CUDA device"
# the `cuda` marker that benchmarks/gpu_check.sh selects.
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
requires_two_gpus = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA devices"
)


def p_tensor(p, device="cpu"):
    """The raw ops' `p`: a 0-dim float64 tensor."""
    return torch.tensor(p, dtype=torch.float64, device=device)


def shape_strategies(max_channels, max_side):
    """The @given arguments n, c and spatial of a random input shape (n, c, *spatial): 1 to 3
    samples, 1 to `max_channels` channels, 1 to 3 spatial sizes of 1 to `max_side`."""
    from hypothesis import strategies as st

    spatial = st.lists(st.integers(1, max_side), min_size=1, max_size=3)
    return dict(n=st.integers(1, 3), c=st.integers(1, max_channels), spatial=spatial)


def host_compile_command(source, output, *, std="c++20", flags=(), cuda_headers=False):
    """The host C++ compiler's command line for a program of tests/cpp/ (csrc/ and tests/cpp/ on
    the include path, torch's headers as system headers so that -Werror answers for this project's
    code only, the CUDA headers when asked), or None when there is no compiler or no CUDA headers."""
    from torch.utils.cpp_extension import include_paths

    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        return None
    includes = [f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'tests' / 'cpp'}"] + [f"-isystem{path}" for path in include_paths()]
    if cuda_headers:
        header = cuda_toolkit_file("include/cuda_fp16.h")
        if header is None:
            return None
        includes.append(f"-isystem{header.parent}")
    return [compiler, f"-std={std}", *flags, *includes, str(source), "-o", str(output)]


def env_finding_package(**variables):
    """os.environ plus `variables`, with PYTHONPATH leading to the dropblock_cuda these tests
    import (installed, or built in place): for subprocesses run outside the source tree."""
    package_parent = os.path.dirname(os.path.dirname(dropblock_cuda.__file__))
    path = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **variables)


def cuda_toolkit_file(relative):
    """`relative` (e.g. "bin/nvcc") inside the first CUDA toolkit that has it, of CUDA_HOME,
    CUDA_PATH and /usr/local/cuda, as a Path; None when none has it."""
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / relative).exists():
            return Path(home) / relative
    return None


def assert_equal(actual, expected):
    """torch.equal, failing with how many elements differ and where the first one is."""
    if torch.equal(actual, expected):
        return
    actual = actual.detach().cpu()
    expected = expected.detach().cpu()
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (
        f"shape/dtype {tuple(actual.shape)} {actual.dtype} vs {tuple(expected.shape)} {expected.dtype}"
    )
    where = (actual != expected).nonzero()  # NaN differs from NaN, as in torch.equal
    first = tuple(where[0].tolist())
    raise AssertionError(
        f"{len(where)} of {actual.numel()} elements differ; first at {first}: "
        f"{actual[first].item()!r} vs {expected[first].item()!r}"
    )


# Memory layouts of the apply tests (make_input). "offsetK" is contiguous memory K elements past an
# allocation's start (CPU and CUDA allocations are aligned to 64 bytes or more), so that the
# contiguous kernel takes narrower vectors: see contiguous_vector_width.
LAYOUTS = ["contiguous", "channels_last", "transposed", "strided", "offset1", "offset2", "offset4"]
ELEMENT_OFFSETS = {"contiguous": 0, "offset1": 1, "offset2": 2, "offset4": 4}


def make_input(shape, dtype, layout, device="cpu"):
    """A random input of `shape` in one of LAYOUTS; the same values and strides on every device."""
    g = torch.Generator().manual_seed(sum(shape) * 131 + LAYOUTS.index(layout))
    base = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)
    if layout == "channels_last":  # channels innermost (channels_last, channels_last_3d, and for 1d)
        return base.movedim(1, -1).contiguous().movedim(-1, 1)
    if layout == "transposed":
        return base.transpose(-1, 0).contiguous().transpose(-1, 0)
    if layout == "strided":
        big = torch.zeros([s * 2 for s in shape], dtype=dtype, device=device)
        return big[tuple(slice(1, None, 2) for _ in shape)].copy_(base)
    if layout in ELEMENT_OFFSETS:
        k = ELEMENT_OFFSETS[layout]
        return base if k == 0 else torch.zeros(base.numel() + k, dtype=dtype, device=device)[k:].view(shape).copy_(base)
    raise ValueError(layout)


def contiguous_vector_width(dtype, offset_elements, shared_plane=None):
    """The vector width (elements) launch_contiguous_widest in csrc/cuda/apply_kernels.cu picks
    for contiguous input and output, the input `offset_elements` past a 64-byte boundary and the
    output on one: the widest V of 8, 4, 2, 1 with V elements at most 16 bytes, the address a
    multiple of V elements, and, when the channels share the mask (`shared_plane`: the plane size
    S, for C > 1), V <= S. The emulation tests check this against the kernel actually launched."""
    size = torch.empty((), dtype=dtype).element_size()
    for v in (8, 4, 2, 1):
        if v * size <= 16 and offset_elements % v == 0 and (shared_plane is None or v <= shared_plane):
            return v
    raise AssertionError("unreachable: width 1 always fits")


def key_of(generator):
    """The Philox key the public functions draw from `generator` for their next call."""
    return int(_draw_seed(generator.device, generator))


def mask_of(x, key, p, block_size, shared_channels=False, eps=1e-6):
    """The op's keep mask as a bool array (planes, *spatial), and its scale."""
    seed = torch.tensor(key, dtype=torch.int64, device=x.device)
    mask, scale = ops.drop_block_mask(x, seed, p_tensor(p, x.device), list(block_size), eps, shared_channels)
    planes = x.shape[0] if shared_channels else x.shape[0] * x.shape[1]
    spatial = tuple(x.shape[2:])
    bits = planes * int(np.prod(spatial))
    return unpack_mask(mask.cpu().numpy(), bits).reshape((planes,) + spatial), scale.item()


def reference_mask(shape, key, p, block_size, shared_channels=False):
    return keep_mask(tuple(shape), tuple(block_size), p, key, shared_channels)
