"""The CUDA kernels against the CPU kernels: the same mask bits, the same scale, the same outputs.

Every test here needs a CUDA device and skips without one; nothing touches the GPU at import.
The test marked `huge` allocates about 9 GiB of GPU memory (an input of more than 2**31 elements).
"""

import math
import random
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from dropblock_cuda import drop_block1d, drop_block2d, drop_block3d
from helpers import (
    EPS,
    ELEMENT_OFFSETS,
    LAYOUTS,
    assert_equal,
    contiguous_vector_width,
    env_finding_package,
    make_input,
    p_tensor,
    requires_cuda,
    requires_two_gpus,
)

ops = torch.ops.dropblock_cuda
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def positive_cpu(shape):
    return torch.rand(shape, generator=torch.Generator().manual_seed(0)) + 0.5


def cpu_and_cuda_masks(shape, block, p, seed, shared, device="cuda"):
    """drop_block_mask on the CPU and on `device` for the same seed value: ((mask, scale), (mask, scale))."""
    cpu = ops.drop_block_mask(
        torch.empty(shape), torch.tensor(seed), p_tensor(p, torch.empty(shape).device), list(block), EPS, shared
    )
    x = torch.empty(shape, device=device)
    gpu = ops.drop_block_mask(x, torch.tensor(seed, device=device), p_tensor(p, x.device), list(block), EPS, shared)
    return cpu, gpu


def assert_same_mask(cpu, gpu):
    (mask_cpu, scale_cpu), (mask_gpu, scale_gpu) = cpu, gpu
    assert mask_gpu.dtype == torch.uint8 and mask_gpu.shape == mask_cpu.shape
    assert scale_gpu.dtype == torch.float64 and scale_gpu.dim() == 0
    assert_equal(mask_gpu.cpu(), mask_cpu)
    assert scale_gpu.item() == scale_cpu.item()


MASK_CASES = [
    # shape, block, p
    ((2, 3, 56, 56), (7, 7), 0.1),
    ((4, 8, 28, 28), (7, 7), 0.3),
    ((2, 5, 14, 14), (7, 7), 0.9),
    ((3, 4, 7, 7), (7, 7), 0.5),  # block == map: one seed position
    ((3, 4, 5, 9), (7, 3), 0.5),  # block clamped in one dimension
    ((2, 3, 17, 33), (3, 5), 0.2),  # planes not a multiple of 16 or 64
    ((2, 3, 13, 1), (5, 1), 0.4),
    ((2, 3, 1, 13), (1, 5), 0.4),
    ((1, 1, 64, 64), (1, 1), 0.5),  # b = 1: dropout
    ((2, 3, 40, 40), (7, 7), 1.0),
    ((2, 3, 40, 40), (3, 3), 1.0),
    ((3, 4, 7, 7), (7, 7), 1.0),  # gamma = 1: every valid position seeds (the mirrored table is empty: K = 256)
    ((2, 3, 33, 33), (5, 5), 0.0),
    ((2, 3, 1000), (7,), 0.1),
    ((2, 3, 3001), (60,), 0.3),  # block wider than 49
    ((2, 2, 5, 300), (3, 100), 0.5),
    ((2, 3, 9, 10, 11), (3, 3, 3), 0.2),
    ((2, 2, 20, 20, 20), (5, 5, 5), 0.4),
    ((16, 256, 28, 28), (7, 7), 0.2),  # the count kernel spreads over many blocks (last one adds up)
    ((3, 7, 129, 131), (5, 5), 0.3),  # several count blocks and a partial last word
    ((1, 2, 7, 3, 70), (2, 3, 55), 0.6),
    ((1, 2, 40, 300), (30, 3), 0.3),  # blocks reach further back than a window: the scatter kernels
    ((1, 2, 16, 64, 64), (7, 7, 7), 0.3),  # the same in 3d
]


@requires_cuda
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("shape,block,p", MASK_CASES)
def test_mask_bit_identical_to_cpu(shape, block, p, shared):
    for seed in (0, 1, -7, 2**62 + 12345):
        assert_same_mask(*cpu_and_cuda_masks(shape, block, p, seed, shared))


@requires_cuda
@pytest.mark.parametrize("kernel", ["window", "scatter"])
@pytest.mark.parametrize("shape,block,p", MASK_CASES)
def test_both_mask_kernels_bit_identical_to_cpu(shape, block, p, kernel, mask_kernel):
    mask_kernel(kernel)
    for seed, shared in [(3, False), (-(2**40), True)]:
        assert_same_mask(*cpu_and_cuda_masks(shape, block, p, seed, shared))


# Masks for the concurrency test: about 10^8 bits (ResNet-50's first stage at batch 128:
# 12,544 windows taken in turns by every resident CTA, 25,088 CTAs of the scatter path), and
# (16, 256, 28, 28), a mask of 401,408 bytes.
CONCURRENCY_CASES = [((128, 256, 56, 56), (7, 7), 0.1), ((16, 256, 28, 28), (7, 7), 0.2)]
POPCOUNT = torch.tensor([bin(byte).count("1") for byte in range(256)], dtype=torch.int64)


def check_many_keys(shape, block, p, set_mask_kernel, device="cuda", keys=200):
    """200 keys over `shape` on `device`: the window and scatter paths' masks agree bit for bit,
    each path's scale is numel / (eps + kept) for the kept bits it wrote, and the masks equal the
    CPU's (for every key of a small mask, every 20th of one of 10^7 bits or more). All calls are
    enqueued before one synchronisation. device="cpu" is a dry run of this code (CI)."""
    rng = random.Random(2026)
    keys = [rng.randrange(-(2**63), 2**63) for _ in range(keys)]
    cpu_every = 1 if math.prod(shape) < 10**7 else 20
    x = torch.empty(shape, dtype=torch.bfloat16, device=device)  # only its shape is read
    x_cpu = torch.empty((), dtype=torch.bfloat16).expand(shape)
    keys_on_device = torch.tensor(keys, device=device)
    popcount = POPCOUNT.to(device)
    p_args = [p_tensor(p, where) for where in (device, "cpu")]
    results = []
    for i, key in enumerate(keys):
        # Keys and p alternately on the device (read by the kernels) and on the host (by value).
        seed = keys_on_device[i] if i % 2 == 0 else torch.tensor(key)
        p_arg = p_args[i % 4 // 2]
        shared = i % 3 == 2 and cpu_every == 1  # the small case also with masks shared by the channels
        paths = {}
        for kernel in ("window", "scatter"):
            set_mask_kernel(kernel)
            mask, scale = ops.drop_block_mask(x, seed, p_arg, list(block), EPS, shared)
            paths[kernel] = (mask, scale, popcount[mask.long()].sum())
        (mask, scale, kept), (mask_s, scale_s, kept_s) = paths["window"], paths["scatter"]
        results.append(
            (
                key,
                shared,
                (mask != mask_s).any(),
                torch.stack([scale, scale_s]),
                torch.stack([kept, kept_s]),
                mask if i % cpu_every == 0 else None,
            )
        )
    if device == "cuda":
        torch.cuda.synchronize()
    for key, shared, differ, scales, kept, mask in results:
        multiplier = shape[1] if shared else 1
        assert not differ.item(), f"key {key}: the window and scatter masks differ"
        for (scale, count), kernel in zip(zip(scales.tolist(), kept.tolist()), ("window", "scatter")):
            assert scale == math.prod(shape) / (EPS + count * multiplier), f"key {key}: {kernel} scale {scale}"
        if mask is not None:
            assert_same_mask(
                ops.drop_block_mask(x_cpu, torch.tensor(key), p_tensor(p), list(block), EPS, shared), (mask, scales[0])
            )


@requires_cuda
@pytest.mark.parametrize("shape,block,p", CONCURRENCY_CASES, ids=["1e8_bits", "16x256x28x28"])
def test_many_keys_with_concurrent_ctas_give_the_cpu_mask_on_both_paths(shape, block, p, mask_kernel):
    # The emulation runs CTAs one after another; here the cross-CTA protocol (one partial per CTA,
    # __threadfence, the finished-CTA counter, the last CTA's sum), the scatter path's 64-bit
    # atomicAnd and the device-only __umulhi / __umul64hi run with thousands of CTAs in flight,
    # for 200 keys enqueued back to back (the caching allocator hands each call's scratch to the
    # next while kernels run). The large mask is compared with the CPU's for every 20th key
    # only: the CPU draws 10^8 bits in 90 ms on 2 cores (measured; a few times less on a GPU
    # machine's 16), so all 200 keys could take 20 s of a GPU check of a few minutes; a wrong bit
    # that both GPU paths agree on would have to come from the law's shared functions, which the
    # 10 keys compared and the other tests here check.
    check_many_keys(shape, block, p, mask_kernel)


@requires_cuda
def test_mask_random_shapes_bit_identical_to_cpu():
    rng = random.Random(1234)
    for _ in range(200):
        dims = rng.choice([1, 2, 3])
        sizes = [rng.choice([1, 2, 3, 5, 7, 13, 16, 17, 33, 64, 65]) for _ in range(dims)]
        if dims == 3:
            sizes = [min(s, 17) for s in sizes]
        block = [rng.choice([1, 2, 3, 5, 7, 8, 50, 70]) for _ in range(dims)]
        shape = (rng.randint(1, 3), rng.randint(1, 4), *sizes)
        p = rng.choice([0.01, 0.1, 0.3, 0.5, 0.9, 1.0])
        seed = rng.randint(-(2**63), 2**63 - 1)
        shared = rng.random() < 0.3
        assert_same_mask(*cpu_and_cuda_masks(shape, block, p, seed, shared))


APPLY_SHAPES = [
    ((2, 3, 50), (7,)),
    ((2, 3, 17, 19), (5, 3)),
    ((3, 4, 16, 16), (7, 7)),
    ((2, 3, 5, 7, 9), (3, 3, 3)),
    # Planes that are no multiple of the vector width (a shared mask's vectors wrap), or narrower.
    ((4, 5, 7, 7), (7, 7)),
    ((2, 3, 2, 3), (2, 2)),
    # Enough channels for the channels-last tiles (csrc/cuda/apply_indexing.h): several tiles of
    # positions, more channels than one tile holds, a single sample.
    ((2, 40, 70), (7,)),
    ((2, 96, 9, 9), (3, 3)),
    ((1, 300, 5, 13), (3, 3)),
    ((2, 16, 3, 5, 7), (3, 3, 3)),
]


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("shape,block", APPLY_SHAPES)
def test_apply_equals_cpu(shape, block, dtype, layout, shared):
    x_cpu = make_input(shape, dtype, layout)
    x_gpu = make_input(shape, dtype, layout, "cuda")
    assert x_gpu.stride() == x_cpu.stride() and torch.equal(x_gpu.cpu(), x_cpu)
    (mask_cpu, scale_cpu), (mask_gpu, scale_gpu) = cpu_and_cuda_masks(shape, block, 0.3, 42, shared)
    out_cpu = ops.drop_block_apply(x_cpu, mask_cpu, scale_cpu, shared)
    out_gpu = ops.drop_block_apply(x_gpu, mask_gpu, scale_gpu, shared)
    assert out_gpu.device == x_gpu.device and out_gpu.dtype == dtype
    assert out_gpu.stride() == out_cpu.stride()
    assert_equal(out_gpu.cpu(), out_cpu)
    # In place, through the same layout.
    inplace = x_gpu.clone() if layout in ("contiguous", "channels_last") else make_input(shape, dtype, layout, "cuda")
    ops.drop_block_apply_(inplace, mask_gpu, scale_gpu, shared)
    assert_equal(inplace.cpu(), out_cpu)


@requires_cuda
def test_contiguous_apply_runs_every_vector_width():
    # The offset layouts of test_apply_equals_cpu launch, per dtype, every vector width of the
    # contiguous kernel (16-bit 8/4/2/1, float32 4/2/1, float64 2/1), at the width
    # contiguous_vector_width predicts (the emulation checks the same on the host): read here
    # from the kernels' names in the profiler, e.g. apply_contiguous_kernel<__half, 4, false>.
    from torch.profiler import ProfilerActivity, profile

    type_names = {
        torch.float32: "float",
        torch.float64: "double",
        torch.float16: "__half",
        torch.bfloat16: "__nv_bfloat16",
    }
    shape = (2, 3, 50)
    (mask_cpu, scale_cpu), (mask, scale) = cpu_and_cuda_masks(shape, (7,), 0.3, 42, False)
    for dtype in DTYPES:
        expected_widths = set()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for layout, offset in ELEMENT_OFFSETS.items():
                x = make_input(shape, dtype, layout, "cuda")
                out = ops.drop_block_apply(x, mask, scale, False)
                assert_equal(out.cpu(), ops.drop_block_apply(x.cpu(), mask_cpu, scale_cpu, False))
                expected_widths.add(contiguous_vector_width(dtype, offset))
            torch.cuda.synchronize()
        launched = {
            int(width)
            for event in prof.events()
            for width in re.findall(rf"apply_contiguous_kernel<{type_names[dtype]}, (\d+), false>", event.name)
        }
        element_size = torch.empty((), dtype=dtype).element_size()
        assert launched == expected_widths == {v for v in (1, 2, 4, 8) if v * element_size <= 16}, dtype


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("numel_tail", [0, 1, 3, 5, 7])
def test_apply_vector_tails(dtype, numel_tail):
    # Sizes that leave 1..7 elements past the last full 16-byte vector, and shared masks whose
    # planes are no multiple of the vector width.
    shape = (1, 3, 64 + numel_tail)
    for shared in (False, True):
        x = torch.randn(shape, dtype=torch.float64).to(dtype)
        cpu, gpu = cpu_and_cuda_masks(shape, (5,), 0.5, 3, shared)
        expected = ops.drop_block_apply(x, *cpu, shared)
        assert_equal(ops.drop_block_apply(x.cuda(), *gpu, shared).cpu(), expected)


@requires_cuda
def test_apply_dropped_elements_are_zero_whatever_the_input():
    x = torch.full((2, 3, 16, 16), float("inf"), device="cuda")
    x[0, 0, 0, 0] = float("nan")
    mask, scale = ops.drop_block_mask(x, torch.tensor(5, device="cuda"), p_tensor(0.9, x.device), [3, 3], EPS, False)
    out = ops.drop_block_apply(x, mask, scale, False)
    bits = torch.tensor(list(mask.cpu().numpy().tobytes()), dtype=torch.uint8)
    keep = ((bits[:, None] >> torch.arange(8)) & 1).flatten()[: x.numel()].view(x.shape).bool().cuda()
    assert (~keep).any()
    assert_equal(out[~keep], torch.zeros_like(out[~keep]))
    assert torch.isinf(out[keep & ~torch.isnan(x)]).all()


@requires_cuda
def test_apply_mask_at_odd_byte_offset():
    shape = (2, 3, 10, 10)
    x = torch.randn(shape, device="cuda")
    mask, scale = ops.drop_block_mask(x, torch.tensor(9, device="cuda"), p_tensor(0.3, x.device), [3, 3], EPS, False)
    shifted = torch.empty(mask.numel() + 1, dtype=torch.uint8, device="cuda")[1:]
    shifted.copy_(mask)
    assert_equal(ops.drop_block_apply(x, shifted, scale, False), ops.drop_block_apply(x, mask, scale, False))


@requires_cuda
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("shape", [(0, 3, 5, 5), (2, 0, 5, 5), (2, 3, 0, 5), (2, 3, 5, 0), (0, 2, 4), (1, 1, 0, 2, 2)])
def test_zero_size(shape, shared):
    block = (3,) * (len(shape) - 2)
    cpu, gpu = cpu_and_cuda_masks(shape, block, 0.5, 11, shared)
    assert_same_mask(cpu, gpu)
    assert gpu[1].item() == 1.0
    x = torch.empty(shape, device="cuda")
    out = ops.drop_block_apply(x, *gpu, shared)
    assert out.shape == x.shape and out.device == x.device
    ops.drop_block_apply_(x, *gpu, shared)


@requires_cuda
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize(
    "fn,shape,block",
    [(drop_block1d, (4, 3, 40), 5), (drop_block2d, (4, 3, 20, 20), 5), (drop_block3d, (2, 3, 8, 9, 10), 3)],
)
def test_forward_and_gradient_match_cpu_with_a_cpu_generator(fn, shape, block, shared):
    x_cpu = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    x_gpu = x_cpu.detach().cuda().requires_grad_()
    grad = torch.randn(shape, dtype=torch.float64)
    y_cpu = fn(x_cpu, 0.3, block, shared_channels=shared, generator=torch.Generator().manual_seed(0))
    y_gpu = fn(x_gpu, 0.3, block, shared_channels=shared, generator=torch.Generator().manual_seed(0))
    assert y_gpu.is_cuda and torch.equal(y_gpu.detach().cpu(), y_cpu.detach())
    y_cpu.backward(grad)
    y_gpu.backward(grad.cuda())
    assert_equal(x_gpu.grad.cpu(), x_cpu.grad)


@requires_cuda
def test_inplace_wrapper_matches_out_of_place():
    x = torch.randn(4, 8, 14, 14, device="cuda", dtype=torch.bfloat16)
    expected = drop_block2d(x, 0.2, 3, generator=torch.Generator().manual_seed(1))
    y = x.clone()
    out = drop_block2d(y, 0.2, 3, inplace=True, generator=torch.Generator().manual_seed(1))
    assert out.data_ptr() == y.data_ptr() and torch.equal(y, expected)


@requires_cuda
def test_default_cuda_generator_follows_manual_seed():
    x = torch.randn(4, 8, 14, 14, device="cuda")
    torch.cuda.manual_seed(3)
    a = drop_block2d(x, 0.3, 3)
    b = drop_block2d(x, 0.3, 3)
    torch.cuda.manual_seed(3)
    assert_equal(drop_block2d(x, 0.3, 3), a)
    assert not torch.equal(a, b)


@requires_cuda
def test_cuda_graph_capture_and_replay():
    x = torch.randn(8, 64, 32, 40, device="cuda")  # the mask's count spans several blocks
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch.cuda.graphs asks
        for _ in range(2):
            drop_block2d(x, 0.2, 5)
    torch.cuda.current_stream().wait_stream(side)

    # p lives on the device and is read by the kernels at replay time (torch.tensor(..., device=)
    # inside a capture would be a blocking host-to-device copy, which capture forbids).
    p = torch.full((), 0.2, dtype=torch.float64, device="cuda")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        seed = torch.empty((), dtype=torch.int64, device="cuda").random_()
        mask, scale = ops.drop_block_mask(x, seed, p, [5, 5], EPS, False)
        y = ops.drop_block_apply(x, mask, scale, False)
        z = drop_block2d(x, 0.2, 5)

    outputs = []
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        # The replayed kernels computed the CPU's mask for the seed drawn in this replay.
        expected_mask, expected_scale = ops.drop_block_mask(x.cpu(), seed.cpu(), p.cpu(), [5, 5], EPS, False)
        assert torch.equal(mask.cpu(), expected_mask) and scale.item() == expected_scale.item()
        assert_equal(y.cpu(), ops.drop_block_apply(x.cpu(), expected_mask, expected_scale, False))
        outputs.append(z.clone())
    assert not torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[1], outputs[2])

    # A new p in the same device tensor takes effect on the next replay.
    p.fill_(0.5)
    graph.replay()
    torch.cuda.synchronize()
    expected_mask, _ = ops.drop_block_mask(x.cpu(), seed.cpu(), p_tensor(0.5), [5, 5], EPS, False)
    assert_equal(mask.cpu(), expected_mask)

    torch.cuda.manual_seed(2024)
    graph.replay()
    first = z.clone()
    torch.cuda.manual_seed(2024)
    graph.replay()
    assert_equal(z, first)


# Code the tests below run in a fresh interpreter, by name. These tests only run on a GPU:
# tests/test_static_checks.py compiles every entry in CI and checks that each name it uses is
# bound in it (nothing of this module is there: helpers such as assert_equal are not).
SUBPROCESS_CODE = {
    # The first mask of a process sizes the window kernel's grid from the device's occupancy; a
    # capture must not be the place where that is asked (capture's strictest, "global", mode).
    "capture_as_the_first_use": textwrap.dedent("""
        import torch, dropblock_cuda
        ops = torch.ops.dropblock_cuda
        x = torch.randn(4, 16, 14, 14, device="cuda")
        p = torch.full((), 0.3, dtype=torch.float64, device="cuda")
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="global"):
            seed = torch.empty((), dtype=torch.int64, device="cuda").random_()
            mask, scale = ops.drop_block_mask(x, seed, p, [3, 3], 1e-6, False)
        for _ in range(2):
            graph.replay()
            expected_mask, expected_scale = ops.drop_block_mask(x.cpu(), seed.cpu(), p.cpu(), [3, 3], 1e-6, False)
            assert torch.equal(mask.cpu(), expected_mask) and scale.item() == expected_scale.item()
        # Outside the capture the grid is asked for and cached: the same mask.
        again, _ = ops.drop_block_mask(x, seed, p, [3, 3], 1e-6, False)
        assert torch.equal(again, mask)
        print("ok")
    """),
}


@requires_cuda
def test_capture_as_the_first_use_in_a_process(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_CODE["capture_as_the_first_use"]],
        cwd=tmp_path,
        env=env_finding_package(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


@requires_cuda
def test_non_default_stream():
    x = torch.randn(8, 16, 32, 32, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    seed = torch.full((), 77, dtype=torch.int64, device="cuda")
    p = torch.full((), 0.2, dtype=torch.float64, device="cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(10_000_000)  # keeps the stream busy: a kernel on another stream would run too early
        mask, scale = ops.drop_block_mask(x, seed, p, [7, 7], EPS, True)
        y = ops.drop_block_apply(x, mask, scale, True)
    stream.synchronize()
    expected_mask, expected_scale = ops.drop_block_mask(x.cpu(), torch.tensor(77), p_tensor(0.2), [7, 7], EPS, True)
    assert_equal(mask.cpu(), expected_mask)
    assert_equal(y.cpu(), ops.drop_block_apply(x.cpu(), expected_mask, expected_scale, True))


@requires_cuda
@pytest.mark.parametrize("shared", [False, True], ids=["per_channel", "shared"])
def test_seed_and_p_on_the_host_give_the_device_arguments_mask(shared):
    x = torch.empty(3, 5, 30, 30, device="cuda")
    for seed, p in [(5, 0.3), (-(2**63), 0.1), (2**63 - 1, 1.0), (123, 0.0)]:
        on_device = ops.drop_block_mask(x, torch.tensor(seed, device="cuda"), p_tensor(p, "cuda"), [5, 5], EPS, shared)
        for seed_device, p_device in [("cpu", "cuda"), ("cuda", "cpu"), ("cpu", "cpu")]:
            mixed = ops.drop_block_mask(
                x,
                torch.tensor(seed, device=seed_device),
                p_tensor(p, p_device),
                [5, 5],
                EPS,
                shared,
            )
            assert mixed[0].is_cuda and mixed[1].is_cuda
            assert_same_mask((on_device[0].cpu(), on_device[1].cpu()), mixed)
    with pytest.raises(ValueError, match="p: drop probability"):
        ops.drop_block_mask(x, torch.tensor(1), torch.tensor(1.5, dtype=torch.float64), [5, 5], EPS, shared)
    # A CPU input takes its seed and p from the CPU only.
    x_cpu, p_cpu = torch.empty(3, 5, 30, 30), torch.tensor(0.3, dtype=torch.float64)
    with pytest.raises(ValueError, match="seed: expected a 0-dim int64 tensor on the CPU or on the input's device"):
        ops.drop_block_mask(x_cpu, torch.tensor(1, device="cuda"), p_cpu, [5, 5], EPS, shared)
    with pytest.raises(ValueError, match="p: expected a 0-dim float64 tensor on the CPU or on the input's device"):
        ops.drop_block_mask(x_cpu, torch.tensor(1), p_cpu.cuda(), [5, 5], EPS, shared)


@requires_cuda
def test_a_cuda_generator_serves_a_cpu_input():
    # The key is drawn on the generator's device and moved to the input's: same mask as the
    # CUDA input with an equally seeded CUDA generator.
    x = positive_cpu((2, 3, 20, 20))
    y = drop_block2d(x, 0.3, 5, generator=torch.Generator("cuda").manual_seed(8))
    y_gpu = drop_block2d(x.cuda(), 0.3, 5, generator=torch.Generator("cuda").manual_seed(8))
    assert y.device.type == "cpu" and torch.equal(y, y_gpu.cpu())


@requires_two_gpus
def test_a_generator_on_another_gpu():
    x = positive_cpu((2, 3, 20, 20)).to("cuda:0")
    y = drop_block2d(x, 0.3, 5, generator=torch.Generator("cuda:1").manual_seed(8))
    expected = drop_block2d(x, 0.3, 5, generator=torch.Generator("cuda:0").manual_seed(8))
    assert y.device == x.device and torch.equal(y, expected)


@requires_cuda
def test_capturing_with_a_host_seed_warns():
    x = torch.randn(2, 3, 20, 20, device="cuda")
    g = torch.Generator().manual_seed(0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        drop_block2d(x, 0.3, 5, generator=g)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with pytest.warns(UserWarning, match="seed on the host is captured by value"):
        with torch.cuda.graph(graph):
            drop_block2d(x, 0.3, 5, generator=g)


@requires_two_gpus
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_second_device(dtype):
    torch.cuda.set_device(0)
    x_cpu = torch.randn(4, 8, 24, 24).to(dtype)
    x = x_cpu.to("cuda:1")
    cpu, gpu = cpu_and_cuda_masks(x.shape, (5, 5), 0.2, 31, False, device="cuda:1")
    assert gpu[0].device == x.device and gpu[1].device == x.device
    assert_same_mask(cpu, gpu)
    out = ops.drop_block_apply(x, *gpu, False)
    assert out.device == x.device
    assert_equal(out.cpu(), ops.drop_block_apply(x_cpu, *cpu, False))
    assert torch.cuda.current_device() == 0
    y = drop_block2d(x, 0.2, 5)
    assert y.device == x.device


def unpack_keep(words, first, last):
    """Keep bits [first, last) of a packed mask (as int64 words on the GPU) as a bool tensor."""
    index = torch.arange(first, last, device=words.device)
    return ((words[index >> 6] >> (index & 63)) & 1).bool()


@requires_cuda
@pytest.mark.huge
def test_huge_tensor_over_2_pow_31_elements():
    H, W = 46341, 46342  # H * W = 2_147_534_622 > 2**31
    free, _ = torch.cuda.mem_get_info()
    if free < 20 * 2**30:
        pytest.skip("needs about 20 GiB of free GPU memory")
    shape = (1, 1, H, W)
    seed = 987654321
    # The mask depends on the shape only: an expanded CPU tensor stands in for the input.
    mask_cpu, scale_cpu = ops.drop_block_mask(
        torch.empty((), dtype=torch.bfloat16).expand(shape),
        torch.tensor(seed),
        p_tensor(0.1),
        [7, 7],
        EPS,
        False,
    )
    x = torch.empty(shape, dtype=torch.bfloat16, device="cuda").normal_()
    mask, scale = ops.drop_block_mask(
        x,
        torch.tensor(seed, device="cuda"),
        p_tensor(0.1, x.device),
        [7, 7],
        EPS,
        False,
    )
    assert torch.equal(mask.cpu(), mask_cpu) and scale.item() == scale_cpu.item()

    out = ops.drop_block_apply(x, mask, scale, False)
    words = mask.view(torch.int64)
    s = scale.float()
    zero = torch.zeros((), dtype=torch.bfloat16, device="cuda")
    rows = 2048
    for r0 in range(0, H, rows):
        r1 = min(r0 + rows, H)
        keep = unpack_keep(words, r0 * W, r1 * W).view(r1 - r0, W)
        chunk = x[0, 0, r0:r1]
        expected = torch.where(keep, (chunk.float() * s).bfloat16(), zero)
        assert torch.equal(out[0, 0, r0:r1], expected), f"rows {r0}:{r1}"
    del out

    # The strided path with 64-bit indices: a transposed view, logical index r * H + c of element x[c, r].
    xt = x.transpose(2, 3)
    mask_t, scale_t = ops.drop_block_mask(
        xt,
        torch.tensor(seed, device="cuda"),
        p_tensor(0.1, xt.device),
        [7, 7],
        EPS,
        False,
    )
    out_t = ops.drop_block_apply(xt, mask_t, scale_t, False)
    assert out_t.stride() == xt.stride()
    words_t = mask_t.view(torch.int64)
    s_t = scale_t.float()
    for c0 in range(0, H, rows):
        c1 = min(c0 + rows, H)
        index = (torch.arange(W, device="cuda")[None, :] * H + torch.arange(c0, c1, device="cuda")[:, None]).flatten()
        keep = ((words_t[index >> 6] >> (index & 63)) & 1).bool().view(c1 - c0, W)
        chunk = x[0, 0, c0:c1]
        expected = torch.where(keep, (chunk.float() * s_t).bfloat16(), zero)
        assert torch.equal(out_t[0, 0].transpose(0, 1)[c0:c1], expected), f"columns {c0}:{c1}"
