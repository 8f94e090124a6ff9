"""The CUDA kernels themselves, run on the host, against the CPU kernels.

csrc/cuda/{mask,apply}_kernels.cu are compiled by the host C++ compiler with tests/cpp/cuda_emulation.h
(one OS thread per CUDA thread, one block at a time, real barriers for __syncthreads and the warp
shuffles, real atomics) and called through ctypes on CPU tensors' memory. So the kernels' own code
(grid-stride loops, vector widths and tails, the strided and channels-last paths, the last-block
count, keys and p by value or through memory) is checked here, without a GPU, on every CI run,
under UndefinedBehaviorSanitizer.
A second build runs every launch path under AddressSanitizer on exact-size buffers (a host
memcheck). What emulation cannot show (timing, memory ordering on real hardware, launch limits) is
left to tests/test_cuda.py and benchmarks/gpu_check.sh on a GPU. Needs a C++20 compiler and the CUDA
headers (cuda_fp16.h); skips without them.
"""

import ctypes
import math
import os
import subprocess
import warnings

import pytest
import torch

import dropblock_cuda  # noqa: F401  (registers the CPU ops compared against)
from dropblock_cuda._registrations import _packed_mask_bytes
from helpers import (
    EPS,
    ELEMENT_OFFSETS,
    LAYOUTS,
    ROOT,
    contiguous_vector_width,
    host_compile_command,
    make_input,
    p_tensor,
)

ops = torch.ops.dropblock_cuda
KINDS = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def _skip_without_cpp20(compiler, tmp_path):
    """Skips when `compiler` lacks what the emulation needs (C++20 <barrier> and std::atomic_ref)."""
    probe = tmp_path / "probe.cpp"
    probe.write_text(
        "#include <atomic>\n#include <barrier>\nint main() { std::barrier<> b(1); b.arrive_and_wait();"
        " unsigned v = 1; std::atomic_ref<unsigned>(v).fetch_and(0u); return static_cast<int>(v); }\n"
    )
    check = subprocess.run(
        [compiler, "-std=c++20", "-pthread", str(probe), "-o", str(tmp_path / "probe")], capture_output=True, text=True
    )
    if check.returncode != 0:
        pytest.skip(f"{compiler} lacks C++20 <barrier> / std::atomic_ref: {check.stderr[-300:]}")


@pytest.fixture(scope="module")
def ubsan_log(tmp_path_factory):
    return tmp_path_factory.mktemp("ubsan")


@pytest.fixture(scope="module")
def emulated(tmp_path_factory, ubsan_log):
    lib_path = tmp_path_factory.mktemp("emulated") / "libdropblock_emulated.so"
    command = host_compile_command(
        ROOT / "tests" / "cpp" / "cuda_emulation_lib.cpp",
        lib_path,
        cuda_headers=True,
        flags=("-O1", "-pthread", "-shared", "-fPIC", "-Wall", "-Wno-unknown-pragmas"),
    )
    if command is None:
        pytest.skip("needs a C++20 compiler and the CUDA headers")
    _skip_without_cpp20(command[0], tmp_path_factory.mktemp("probe"))
    build = subprocess.run(command + ["-fsanitize=undefined"], capture_output=True, text=True)
    if build.returncode != 0:  # a toolchain without the sanitizer runtime (this project's CI has it)
        warnings.warn("emulated CUDA kernels built without UndefinedBehaviorSanitizer: " + build.stderr[-500:])
        build = subprocess.run(command, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    # The kernels run under UndefinedBehaviorSanitizer (shifts past the width, overflows,
    # misaligned loads ...), which reads its options when the library loads: reports go to files
    # that every test checks.
    os.environ["UBSAN_OPTIONS"] = f"log_path={ubsan_log / 'report'}:print_stacktrace=1"
    lib = ctypes.CDLL(str(lib_path))
    i64, dbl, ptr, i32 = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p, ctypes.c_int
    lib.emulated_scratch_elements.argtypes, lib.emulated_scratch_elements.restype = [i64], i64
    lib.emulated_mask.argtypes = [ptr, dbl, i32, dbl, i64, i32, ptr, i64, i64, i64, dbl, ptr, ptr, i32]
    lib.emulated_mask.restype = i32
    lib.emulated_auto_mask_kernel.argtypes, lib.emulated_auto_mask_kernel.restype = [ptr], i32
    lib.emulated_apply.argtypes, lib.emulated_apply.restype = [i32, ctypes.POINTER(ApplyParams)], None
    lib.emulated_apply_params_size.argtypes, lib.emulated_apply_params_size.restype = [], i64
    assert lib.emulated_apply_params_size() == ctypes.sizeof(ApplyParams), "ApplyParams mirror out of date"
    lib.emulated_last_apply_path.argtypes, lib.emulated_last_apply_path.restype = [i32], i32
    lib.emulated_last_apply_vector_width.argtypes, lib.emulated_last_apply_vector_width.restype = [i32], i32
    return lib


@pytest.fixture(autouse=True)
def no_undefined_behaviour(request):
    yield
    if "emulated" in request.fixturenames:
        folder = request.getfixturevalue("ubsan_log")
        reports = []
        for path in folder.glob("report*"):
            reports.append(path.read_text())
            path.unlink()  # each test answers for its own reports
        assert not reports, "UndefinedBehaviorSanitizer:\n" + "\n".join(reports)


def _geometry(shape, block, shared):
    """make_mask_geometry and gamma_factor of csrc/op_args.cpp, in the same float64 order."""
    spatial = list(shape[2:])
    pad = 3 - len(spatial)
    size = [1] * pad + spatial
    clamped = [1] * pad + [min(b, max(s, 1)) for b, s in zip(block, spatial)]
    planes = shape[0] if shared else shape[0] * shape[1]
    factor = 1.0
    for s, b in zip(size, clamped):
        if s == 0:
            return planes, size, clamped, 0.0
        factor *= float(s) / (float(b) * (s - b + 1))
    return planes, size, clamped, factor


# dropblock::cuda::MaskKernel
MASK_KERNELS = {"auto": 0, "scatter": 1, "window": 2}


def emulated_mask(lib, shape, block, p, seed, shared, p_in_memory=False, seed_in_memory=False, kernel="auto"):
    planes, size, clamped, factor = _geometry(shape, block, shared)
    words = _packed_mask_bytes(planes * math.prod(size)) // 8
    # Garbage where the kernels must write everything (the window path never fills the mask first).
    mask = torch.full((words,), 0x5A5A5A5A5A5A5A5A, dtype=torch.int64)
    scale = torch.empty((), dtype=torch.float64)
    scratch = torch.full((lib.emulated_scratch_elements(words),), -3, dtype=torch.int64)
    geometry = (ctypes.c_int64 * 7)(planes, *size, *clamped)
    rc = lib.emulated_mask(
        geometry,
        p,
        int(p_in_memory),
        factor,
        seed,
        int(seed_in_memory),
        mask.data_ptr(),
        words,
        shape[1] if shared else 1,
        math.prod(shape),
        EPS,
        scale.data_ptr(),
        scratch.data_ptr(),
        MASK_KERNELS[kernel],
    )
    assert rc == 0
    return mask.view(torch.uint8), scale


def auto_mask_kernel(lib, shape, block, shared=False):
    planes, size, clamped, _ = _geometry(shape, block, shared)
    chosen = lib.emulated_auto_mask_kernel((ctypes.c_int64 * 7)(planes, *size, *clamped))
    return {value: name for name, value in MASK_KERNELS.items()}[chosen]


MAX_APPLY_DIMS = 5


class ApplyParams(ctypes.Structure):
    """dropblock::cuda::ApplyParams (csrc/cuda/apply_kernels.h), field for field."""

    _fields_ = [
        ("input", ctypes.c_void_p),
        ("out", ctypes.c_void_p),
        ("mask", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("dim", ctypes.c_int),
        ("sizes", ctypes.c_int64 * MAX_APPLY_DIMS),
        ("in_strides", ctypes.c_int64 * MAX_APPLY_DIMS),
        ("out_strides", ctypes.c_int64 * MAX_APPLY_DIMS),
        ("shared_channels", ctypes.c_bool),
    ]


# The apply paths the emulation reports (ApplyPath in tests/cpp/cuda_emulation_lib.cpp).
APPLY_PATHS = {"other": 0, "contiguous": 1, "single_value": 2, "channels_last": 3, "strided": 4, "strided64": 5}


def emulated_apply(lib, x, mask, scale, shared, out=None):
    out = torch.empty_like(x) if out is None else out
    params = ApplyParams(
        input=x.data_ptr(),
        out=out.data_ptr(),
        mask=mask.data_ptr(),
        scale=scale.data_ptr(),
        dim=x.dim(),
        sizes=(ctypes.c_int64 * MAX_APPLY_DIMS)(*x.shape),
        in_strides=(ctypes.c_int64 * MAX_APPLY_DIMS)(*x.stride()),
        out_strides=(ctypes.c_int64 * MAX_APPLY_DIMS)(*out.stride()),
        shared_channels=shared,
    )
    lib.emulated_apply(KINDS[x.dtype], ctypes.byref(params))
    return out


def last_apply(lib, dtype):
    """(path name, vector width) of the apply kernel the latest emulated launch ran."""
    path = lib.emulated_last_apply_path(KINDS[dtype])
    return {v: k for k, v in APPLY_PATHS.items()}[path], lib.emulated_last_apply_vector_width(KINDS[dtype])


def cpu_mask(shape, block, p, seed, shared):
    return ops.drop_block_mask(torch.empty(shape), torch.tensor(seed), p_tensor(p), list(block), EPS, shared)


MASK_CASES = [
    # shape, block, p
    ((2, 3, 56, 56), (7, 7), 0.1),
    ((3, 4, 7, 7), (7, 7), 0.5),  # one seed position per plane
    ((2, 3, 17, 33), (3, 5), 0.2),  # planes not a multiple of 16 or 64
    ((1, 1, 64, 64), (1, 1), 0.5),  # b = 1: dropout
    ((3, 4, 7, 7), (7, 7), 1.0),  # every valid position seeds
    ((2, 3, 3001), (60,), 0.3),  # blocks wider than 48
    ((2, 2, 5, 300), (3, 100), 0.5),
    ((2, 3, 9, 10, 11), (3, 3, 3), 0.2),
    ((3, 7, 129, 131), (5, 5), 0.3),  # three count CTAs, windows taken in turns, a partial last word
    ((2, 8, 56, 56), (7, 7), 0.1),  # blocks across window edges, windows that start mid-plane
    ((1, 2, 40, 300), (30, 3), 0.3),  # blocks reach back 8702 indices: further than a window
    ((1, 1, 8, 8, 300), (4, 4, 3), 0.5),  # 3d, reach 8102
    ((2, 3, 1000), (1,), 0.5),  # K near 128: many Philox calls per chunk
    ((2, 3, 999), (1,), 0.8),  # the mirrored table
]


@pytest.mark.parametrize("kernel", ["scatter", "window"])
@pytest.mark.parametrize("shared", [False, True], ids=["per_channel", "shared"])
@pytest.mark.parametrize("shape,block,p", MASK_CASES, ids=[str(case[0]) for case in MASK_CASES])
def test_emulated_mask_kernels_give_the_cpu_mask(emulated, shape, block, p, shared, kernel):
    for seed, in_memory in [(0, False), (-7, True), (2**62 + 12345, False)]:
        mask, scale = emulated_mask(emulated, shape, block, p, seed, shared, in_memory, in_memory, kernel=kernel)
        expected_mask, expected_scale = cpu_mask(shape, block, p, seed, shared)
        assert torch.equal(mask, expected_mask)
        assert scale.item() == expected_scale.item()


def test_emulated_auto_mask_kernel_is_the_window_unless_blocks_reach_further_back(emulated):
    # block_reach = ((bd - 1) * H + bh - 1) * W + bw - 1 against a halo of 64 chunks of 256 indices
    # (a quarter of a window's 256 draws): 16384. The emulation's small windows choose the same.
    assert auto_mask_kernel(emulated, (128, 256, 56, 56), (7, 7)) == "window"  # reach 342
    assert auto_mask_kernel(emulated, (128, 2048, 7, 7), (7, 7), shared=True) == "window"  # reach 48
    assert auto_mask_kernel(emulated, (2, 3, 3001), (60,)) == "window"
    assert auto_mask_kernel(emulated, (1, 1, 16385), (16385,)) == "window"  # reach 16384: the limit
    assert auto_mask_kernel(emulated, (1, 1, 16386), (16386,)) == "scatter"
    assert auto_mask_kernel(emulated, (1, 2, 40, 300), (30, 3)) == "window"  # reach 8702
    assert auto_mask_kernel(emulated, (1, 1, 16, 32, 32), (7, 7, 7)) == "window"  # reach 6342
    assert auto_mask_kernel(emulated, (1, 1, 16, 64, 64), (7, 7, 7)) == "scatter"  # reach 24966
    mask, scale = emulated_mask(emulated, (2, 2, 20000), (16386,), 0.01, 5, False)  # auto: scatter
    expected_mask, expected_scale = cpu_mask((2, 2, 20000), (16386,), 0.01, 5, False)
    assert torch.equal(mask, expected_mask) and scale.item() == expected_scale.item()


@pytest.mark.parametrize("kernel", ["scatter", "window"])
def test_emulated_count_over_many_blocks_and_p_zero(emulated, kernel):
    shape = (4, 64, 40, 40)  # 1600 words: 4 count CTAs or hundreds of windows, a last CTA that adds them up
    mask, scale = emulated_mask(emulated, shape, (7, 7), 0.2, 11, False, kernel=kernel)
    expected_mask, expected_scale = cpu_mask(shape, (7, 7), 0.2, 11, False)
    assert torch.equal(mask, expected_mask) and scale.item() == expected_scale.item()
    # p = 0, or a NaN read from memory (a device p is not range-checked): no block draws a seed
    # and nothing is dropped (the count still runs: its counter must be zeroed all the same).
    for p, in_memory in [(0.0, False), (float("nan"), True)]:
        mask, scale = emulated_mask(emulated, shape, (7, 7), p, 11, False, p_in_memory=in_memory, kernel=kernel)
        assert bool((mask.view(torch.int64) == -1).all())
        assert scale.item() == math.prod(shape) / (EPS + math.prod(shape))


APPLY_SHAPES = [
    ((2, 3, 50), (7,)),
    ((2, 3, 17, 19), (5, 3)),
    ((2, 20, 9, 11), (3, 3)),  # 20 channels: the channels-last tiles
    ((1, 300, 3, 5), (3, 3)),  # more channels than one tile holds
    ((2, 16, 3, 4, 5), (3, 3, 3)),
    ((4, 5, 7, 7), (7, 7)),  # a shared mask's vectors wrap around planes of 49
    ((2, 3, 2, 3), (2, 2)),  # planes narrower than a 16-byte vector of 16-bit elements
]


@pytest.mark.parametrize("dtype", list(KINDS), ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shared", [False, True], ids=["per_channel", "shared"])
@pytest.mark.parametrize("shape,block", APPLY_SHAPES, ids=[str(case[0]) for case in APPLY_SHAPES])
def test_emulated_apply_kernels_give_the_cpu_output(emulated, shape, block, dtype, layout, shared):
    x = make_input(shape, dtype, layout)
    mask, scale = cpu_mask(shape, block, 0.3, 42, shared)
    expected = ops.drop_block_apply(x.contiguous(), mask, scale, shared)
    out = emulated_apply(emulated, x, mask, scale, shared)  # into empty_like(x), as the op does
    assert torch.equal(out, expected)
    path, width = last_apply(emulated, dtype)
    assert path == expected_path(x, layout)
    if layout in ELEMENT_OFFSETS:  # the contiguous kernel, at the vector width the layout allows
        assert width == expected_width(x, layout, shared)
    elif path == "channels_last":
        assert width == channels_last_width(dtype, shape[1])
    inplace = x.clone() if layout in ("contiguous", "channels_last") else make_input(shape, dtype, layout)
    emulated_apply(emulated, inplace, mask, scale, shared, out=inplace)
    assert torch.equal(inplace, expected)


def expected_path(x, layout):
    if layout in ELEMENT_OFFSETS:
        return "contiguous"
    if layout == "channels_last" and x.shape[1] >= 16 and math.prod(x.shape[2:]) > 1:
        return "channels_last"
    return "strided"


def expected_width(x, layout, shared):
    plane = math.prod(x.shape[2:]) if shared and x.shape[1] != 1 else None
    return contiguous_vector_width(x.dtype, ELEMENT_OFFSETS[layout], plane)


def widest(dtype, divides, offset_elements=0):
    """The widest V of 8, 4, 2, 1 with V elements at most 16 bytes, V dividing `divides` and the
    address `offset_elements` past an aligned allocation a multiple of V elements."""
    size = torch.empty((), dtype=dtype).element_size()
    return next(v for v in (8, 4, 2, 1) if v * size <= 16 and divides % v == 0 and offset_elements % v == 0)


def channels_last_width(dtype, channels, offset_elements=0):
    """The channels-last tiles' vector: V channels, V dividing C, on aligned memory."""
    return widest(dtype, channels, offset_elements)


def offset_copy(x, offset_elements):
    """x's values and strides in memory `offset_elements` past an allocation's start."""
    span = 1 + sum((s - 1) * st for s, st in zip(x.shape, x.stride()))
    storage = torch.zeros(span + offset_elements, dtype=x.dtype)
    view = storage[offset_elements:].as_strided(x.shape, x.stride())
    return view.copy_(x)


@pytest.mark.parametrize("dtype", list(KINDS), ids=str)
@pytest.mark.parametrize("shared", [False, True], ids=["per_channel", "shared"])
def test_emulated_channels_last_tiles_run_every_vector_width(emulated, dtype, shared):
    # C = 16, 20, 18, 17 and offsets of 1 and 2 elements: every width of every element size (16-bit:
    # 8, 4, 2, 1; float32: 4, 2, 1; float64: 2, 1), each checked against the CPU, out of place and in place.
    widths = set()
    for channels, offset, spatial in [
        (16, 0, (5, 3)),
        (20, 0, (5, 3)),
        (18, 0, (5, 3)),
        (17, 0, (5, 3)),
        (16, 1, (5, 3)),
        (16, 2, (5, 3)),
        (300, 0, (5, 3)),
        (18, 0, (7,)),
        (17, 0, (2, 3, 4)),
        (24, 4, (2, 3, 4)),
    ]:
        shape = (2, channels, *spatial)
        x = offset_copy(make_input(shape, dtype, "channels_last"), offset)
        mask, scale = cpu_mask(shape, (3,) * len(spatial), 0.3, 7, shared)
        expected = ops.drop_block_apply(x.contiguous(), mask, scale, shared)
        out = emulated_apply(emulated, x, mask, scale, shared, out=offset_copy(torch.empty_like(x), offset))
        assert torch.equal(out, expected), (channels, offset)
        path, width = last_apply(emulated, dtype)
        assert (path, width) == ("channels_last", channels_last_width(dtype, channels, offset)), (channels, offset)
        widths.add(width)
        emulated_apply(emulated, x, mask, scale, shared, out=x)
        assert torch.equal(x, expected)
    element_size = torch.empty((), dtype=dtype).element_size()
    assert widths == {v for v in (1, 2, 4, 8) if v * element_size <= 16}


@pytest.mark.parametrize("dtype", list(KINDS), ids=str)
def test_emulated_transposed_views_move_vectors(emulated, dtype):
    # A transposed view of contiguous memory (x.transpose(2, 3), as the GPU benchmark runs) and its
    # empty_like are dense alike: the strided kernel moves vectors along memory's innermost dim
    # (here 8 long) and gathers the keep bits 16 apart.
    widths = set()
    for offset in (0, 1, 2, 4):
        base = make_input((2, 3, 16, 8), dtype, "contiguous")
        x = offset_copy(base, offset).transpose(2, 3)
        for shared in (False, True):
            mask, scale = cpu_mask(x.shape, (3, 3), 0.3, 11, shared)
            expected = ops.drop_block_apply(x.contiguous(), mask, scale, shared)
            out = emulated_apply(
                emulated, x, mask, scale, shared, out=offset_copy(torch.empty_like(base), offset).transpose(2, 3)
            )
            assert torch.equal(out, expected), (offset, shared)
            path, width = last_apply(emulated, dtype)
            assert (path, width) == ("strided", widest(dtype, 8, offset)), (offset, shared)
            widths.add(width)
            inplace = x.clone()  # clone keeps the transposed strides, not the offset
            inplace = offset_copy(inplace, offset)
            emulated_apply(emulated, inplace, mask, scale, shared, out=inplace)
            assert torch.equal(inplace, expected) and last_apply(emulated, dtype) == (path, width)
    element_size = torch.empty((), dtype=dtype).element_size()
    assert widths == {v for v in (1, 2, 4, 8) if v * element_size <= 16}


@pytest.mark.parametrize("dtype", list(KINDS), ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_emulated_apply_into_an_output_with_gaps(emulated, dtype, layout):
    # An output that is not dense (every other element of a larger tensor): the strided kernel with
    # every offset computed (neither out_dense nor, for a differently laid out input, same_strides).
    for shape in [(2, 3, 17, 19), (2, 16, 3, 4, 5), (2, 3, 50)]:
        x = make_input(shape, dtype, layout)
        big = torch.full([2 * s for s in shape], 7.0, dtype=dtype)
        out = big[tuple(slice(None, None, 2) for _ in shape)]
        for shared in (False, True):
            mask, scale = cpu_mask(shape, (3,) * (len(shape) - 2), 0.3, 9, shared)
            expected = ops.drop_block_apply(x.contiguous(), mask, scale, shared)
            emulated_apply(emulated, x, mask, scale, shared, out=out)
            assert torch.equal(out, expected)
            assert last_apply(emulated, dtype) == ("strided", 1)
        untouched = big.clone()
        untouched[tuple(slice(None, None, 2) for _ in shape)] = 7.0
        assert bool((untouched == 7.0).all()), "wrote outside the output's elements"


EXPANDED_CASES = [
    # shape, what the input is expanded from, the path, what the vector width divides (the output's
    # innermost run the input repeats or follows; 8: any width)
    ((2, 3, 17, 19), (), "single_value", 8),  # the gradient of y.sum(): one value
    ((2, 20, 9, 11), (1, 1, 1, 1), "single_value", 8),
    ((4, 5, 7, 7), (4, 5, 1, 1), "strided", 49),  # the gradient of y.sum((2, 3), keepdim=True): odd runs
    ((2, 16, 3, 4, 5), (1, 16, 1, 1, 1), "strided", 60),  # one value per channel over runs of 60
    ((2, 3, 50), (2, 1, 50), "strided", 1),  # channels that read the same memory
    ((2, 4, 8, 8), (2, 4, 1, 1), "strided", 64),  # runs of 64: 16-bit vectors capped at 8 bytes
]


@pytest.mark.parametrize("dtype", list(KINDS), ids=str)
@pytest.mark.parametrize("shared", [False, True], ids=["per_channel", "shared"])
@pytest.mark.parametrize("shape,source,path,run", EXPANDED_CASES, ids=[str(case[:2]) for case in EXPANDED_CASES])
def test_emulated_apply_of_expanded_inputs(emulated, shape, source, path, run, dtype, shared):
    # An expanded input (stride 0) is read where it lies, into a contiguous output as the op's
    # empty_like gives one: one value expanded everywhere is read once per thread, one value per
    # run of the output's innermost dim once per vector of the run.
    g = torch.Generator().manual_seed(len(shape) + sum(source))
    x = torch.randn(source, generator=g, dtype=torch.float64).to(dtype).expand(shape)
    mask, scale = cpu_mask(shape, (3,) * (len(shape) - 2), 0.3, 5, shared)
    expected = ops.drop_block_apply(x.contiguous(), mask, scale, shared)
    out = emulated_apply(emulated, x, mask, scale, shared)
    assert out.is_contiguous()
    assert torch.equal(out, expected)
    width = widest(dtype, run)
    if path == "strided" and x.element_size() == 2:
        width = min(width, 4)  # 8 bytes: ptxas spills in the 16-byte variant (csrc/cuda/apply_kernels.cu)
    assert last_apply(emulated, dtype) == (path, width)


@pytest.mark.parametrize("dtype", list(KINDS), ids=str)
def test_emulated_contiguous_apply_runs_every_vector_width(emulated, dtype):
    # The offset layouts of the test above reach every width the kernel has for this element
    # size (16-bit: 8, 4, 2, 1; float32: 4, 2, 1; float64: 2, 1), as launched, not as assumed.
    widths = set()
    for layout in ELEMENT_OFFSETS:
        x = make_input((2, 3, 50), dtype, layout)
        mask, scale = cpu_mask(x.shape, (7,), 0.3, 42, False)
        assert torch.equal(emulated_apply(emulated, x, mask, scale, False), ops.drop_block_apply(x, mask, scale, False))
        widths.add(emulated.emulated_last_apply_vector_width(KINDS[dtype]))
    element_size = torch.empty((), dtype=dtype).element_size()
    assert widths == {v for v in (1, 2, 4, 8) if v * element_size <= 16}


def test_emulated_apply_path_hook_tells_the_kernels_apart(emulated):
    # The hook itself: the strided kernel for a transposed view, nothing after a mask launch.
    x = make_input((2, 3, 17, 19), torch.float16, "transposed")
    mask, scale = cpu_mask(x.shape, (5, 3), 0.3, 42, False)
    emulated_apply(emulated, x, mask, scale, False)
    assert last_apply(emulated, torch.float16) == ("strided", 2)  # memory's innermost dim: N = 2
    emulated_mask(emulated, x.shape, (5, 3), 0.3, 42, False)
    assert last_apply(emulated, torch.float16) == ("other", 0)


def test_emulated_kernels_stay_inside_their_buffers(tmp_path):
    # A host memcheck: the kernels under the emulation, built with AddressSanitizer, on buffers of
    # exactly the size each launch may touch (every layout, element size and mask path).
    exe = tmp_path / "cuda_emulation_memcheck"
    command = host_compile_command(
        ROOT / "tests" / "cpp" / "cuda_emulation_memcheck.cpp",
        exe,
        cuda_headers=True,
        flags=(
            "-O1",
            "-g",
            "-pthread",
            "-Wall",
            "-Wno-unknown-pragmas",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
        ),
    )
    if command is None:
        pytest.skip("needs a C++20 compiler and the CUDA headers")
    _skip_without_cpp20(command[0], tmp_path)
    build = subprocess.run(command, capture_output=True, text=True)
    if build.returncode != 0 and "asan" in build.stderr.lower():
        pytest.skip("no AddressSanitizer runtime in this toolchain")
    assert build.returncode == 0, build.stderr
    run = subprocess.run(
        [str(exe)], capture_output=True, text=True, timeout=600, env={**os.environ, "ASAN_OPTIONS": "detect_leaks=0"}
    )
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), (run.stdout + run.stderr)[-4000:]


def test_emulated_strided_kernel_with_64_bit_offsets(emulated):
    # Offsets past 2^32 need the strided kernel's 64-bit index path: a view whose samples lie 2^32
    # elements apart in one large (8 GiB), mostly untouched, so never committed, allocation.
    storage = torch.empty(2**32 + 4096, dtype=torch.float16)
    x = storage.as_strided((2, 3, 4, 5), (2**32, 1000, 100, 1))
    x.copy_(torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0)))
    storage[:4096].zero_()  # where a 32-bit offset would wrap to
    for shared in (False, True):
        mask, scale = cpu_mask(x.shape, (3, 3), 0.4, 8, shared)
        expected = ops.drop_block_apply(x.contiguous(), mask, scale, shared)
        assert torch.equal(emulated_apply(emulated, x, mask, scale, shared), expected)
        assert last_apply(emulated, x.dtype)[0] == "strided64"
