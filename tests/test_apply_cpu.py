"""The CPU apply kernels bit for bit, on masks made here (not drawn by the mask law).

Contiguous input, per-channel or shared mask, out of place and in place, and the kept runs of a
shared mask in channels-last memory: on a CPU with AVX-512 these run csrc/cpu/apply_cpu_avx512.cpp;
DROPBLOCK_CPU_APPLY=generic runs the generic kernels of apply_cpu.cpp instead, and the two must
agree on every bit, NaN payloads included. Sizes sit around the kernels' edges: 8 or 16 lanes a
vector, 64 bits a mask word, plane sizes below, at and past both, one sample, one channel, and
starts off a vector's alignment.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import env_finding_package, ops

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}

# (N, C, *spatial): plane sizes 1, 5, 15/16/17, 63/64/65, 99, 120, 127/128/129, and 1089 (C = 1).
SHAPES = [
    (1, 1, 1),
    (2, 3, 1, 1),
    (2, 3, 5),
    (2, 5, 15),
    (2, 5, 16),
    (2, 5, 17),
    (1, 1, 63),
    (1, 1, 64),
    (1, 1, 65),
    (2, 4, 9, 7),
    (3, 7, 8, 8),
    (2, 3, 13, 5),
    (2, 70, 9, 11),
    (2, 3, 4, 5, 6),
    (1, 2, 127),
    (4, 2, 128),
    (1, 2, 129),
    (1, 1, 33, 33),
    (3, 40, 7, 7),
]
OFFSETS = [0, 1, 3]  # elements past the start of a fresh allocation: unaligned vectors


def bits_of(x):
    return x.view(INT_VIEW[x.element_size()])


def specials(dtype):
    """Values the kernels must carry exactly: signed zeros, infinities, NaNs with payloads, the
    extremes and subnormals of the type, as raw bits of `dtype`."""
    if dtype == torch.float16:
        raw = [0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFE55, 0x7BFF, 0x0001, 0x83FF, 0x3C00]
    elif dtype == torch.bfloat16:
        raw = [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x7F81, 0xFFC1, 0x7F7F, 0x0001, 0x807F, 0x3F80]
    elif dtype == torch.float32:
        raw = [
            0x00000000,
            0x80000000,
            0x7F800000,
            0xFF800000,
            0x7FC00000,
            0x7F800001,
            0xFFC12345,
            0x7F7FFFFF,
            0x00000001,
            0x807FFFFF,
            0x3F800000,
        ]
    else:
        raw = [
            0,
            1 << 63,
            0x7FF0 << 48,
            0xFFF0 << 48,
            0x7FF8 << 48,
            (0x7FF0 << 48) | 1,
            0x7FFF_FFFF_FFFF_FFFF,
            0x7FEF_FFFF_FFFF_FFFF,
            1,
            0x8000_0000_0000_0001,
            0x3FF0 << 48,
        ]
    int_dtype = INT_VIEW[torch.empty((), dtype=dtype).element_size()]
    wrap = {torch.int16: 1 << 16, torch.int32: 1 << 32, torch.int64: 1 << 64}[int_dtype]
    signed = [v - wrap if v >= wrap // 2 else v for v in raw]
    return torch.tensor(signed, dtype=int_dtype).view(dtype)


def make_input(shape, dtype, offset, seed):
    """Random values (and the specials, repeated) in contiguous memory `offset` elements into a buffer."""
    g = torch.Generator().manual_seed(seed)
    numel = int(np.prod(shape))
    values = (torch.randn(numel, generator=g, dtype=torch.float64) * 100).to(dtype)
    extra = specials(dtype)
    where = torch.randperm(numel, generator=g)[: min(numel, 3 * len(extra))]
    values[where] = extra.repeat(3)[: len(where)]
    buffer = torch.zeros(numel + offset, dtype=dtype)
    return buffer[offset:].view(shape).copy_(values.view(shape))


def make_mask(shape, shared, kind, seed):
    """A packed keep mask for `shape`: random bits, all kept, all dropped, or runs (blocks of keeps
    and drops of random lengths, as DropBlock masks look)."""
    planes = shape[0] if shared else shape[0] * shape[1]
    bits = planes * int(np.prod(shape[2:]))
    words = (bits + 63) // 64
    rng = np.random.default_rng(seed)
    if kind == "random":
        keep = rng.random(words * 64) < 0.7
    elif kind == "ones":
        keep = np.ones(words * 64, dtype=bool)
    elif kind == "zeros":
        keep = np.zeros(words * 64, dtype=bool)
    else:
        runs = rng.integers(1, 40, size=words * 64)
        keep = np.repeat(np.arange(len(runs)) % 2 == 0, runs)[: words * 64]
    # The bits past the last element are set in the random kinds: the kernels must ignore them.
    return torch.from_numpy(np.packbits(keep, bitorder="little")), bits


def expected_of(x, mask, bits, scale, shared):
    keep = np.unpackbits(mask.numpy(), bitorder="little")[:bits].astype(bool)
    keep = torch.from_numpy(keep)
    if shared:
        keep = keep.view(x.shape[0], 1, *x.shape[2:]).expand(x.shape)
    else:
        keep = keep.view(x.shape)
    opmath = torch.float64 if x.dtype == torch.float64 else torch.float32
    product = (x.to(opmath) * torch.tensor(scale, dtype=torch.float64).to(opmath)).to(x.dtype)
    return keep, torch.where(keep, product, torch.zeros((), dtype=x.dtype))


def cases():
    """(name, input, mask, scale tensor, shared) over the shapes, dtypes, offsets, masks and scales."""
    out = []
    for i, shape in enumerate(SHAPES):
        for dtype in DTYPES:
            for shared in (False, True):
                offset = OFFSETS[(i + DTYPES.index(dtype)) % len(OFFSETS)]
                kind = ("random", "runs", "ones", "zeros")[(i + shared) % 4] if i % 3 == 0 else "random"
                mask, _ = make_mask(shape, shared, kind, seed=i)
                scale = (1.0, 1.2345678901234, 3e4)[i % 3]  # 3e4 overflows half: kept values become inf
                name = f"{tuple(shape)}-{str(dtype)[6:]}-{'shared' if shared else 'per_channel'}-off{offset}-{kind}"
                out.append(
                    (
                        name,
                        make_input(shape, dtype, offset, seed=i),
                        mask,
                        torch.tensor(scale, dtype=torch.float64),
                        shared,
                    )
                )
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shared", [False, True], ids=["per_channel", "shared"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_contiguous_apply_is_the_rounded_product_where_kept_and_plus_zero_where_dropped(shape, shared, dtype):
    for offset in OFFSETS:
        for kind in ("random", "runs", "ones", "zeros"):
            x = make_input(shape, dtype, offset, seed=len(shape) + offset)
            mask, bits = make_mask(shape, shared, kind, seed=offset)
            scale = torch.tensor(1.2345678901234, dtype=torch.float64)
            keep, expected = expected_of(x, mask, bits, scale.item(), shared)
            y = ops.drop_block_apply(x, mask, scale, shared)
            inplace = x.clone()
            ops.drop_block_apply_(inplace, mask, scale, shared)
            for out in (y, inplace):
                # Dropped: +0 bit for bit. Kept: the product, bit for bit where it is a number
                # (torch's own conversions disagree on the bits of a NaN: that is checked below).
                assert bool((bits_of(out)[~keep] == 0).all()), (kind, offset)
                number = ~torch.isnan(expected)
                assert torch.equal(bits_of(out)[number], bits_of(expected)[number]), (kind, offset)
                assert bool(torch.isnan(out[torch.isnan(expected)]).all()), (kind, offset)


def test_nan_products_are_c10s_nan():
    # Kept NaNs come out as c10's scalar conversions make them, whatever the input's payload:
    # 0x7FC0 for bfloat16, sign | 0x7E00 for half; float and double keep the (quieted) payload.
    for dtype, nan_bits in ((torch.bfloat16, [0x7FC0] * 4), (torch.float16, [0x7E00, 0x7E00, 0xFE00, 0x7E00])):
        raw = {torch.bfloat16: [0x7FC0, 0x7F81, 0xFFC1, 0x7FFF], torch.float16: [0x7E00, 0x7C01, 0xFE55, 0x7FFF]}[dtype]
        x = torch.tensor([v - (1 << 16) if v >= 1 << 15 else v for v in raw] * 25, dtype=torch.int16).view(dtype)
        x = x.view(1, 1, 100)
        mask = torch.full((16,), 255, dtype=torch.uint8)
        y = ops.drop_block_apply(x, mask, torch.tensor(2.0, dtype=torch.float64), False)
        expected = torch.tensor([v - (1 << 16) if v >= 1 << 15 else v for v in nan_bits] * 25, dtype=torch.int16)
        assert torch.equal(bits_of(y).flatten(), expected)
    x = torch.tensor([0x7F800001, 0x7FC12345, 0xFF812345 - (1 << 32)], dtype=torch.int32).view(torch.float32).repeat(30)
    y = ops.drop_block_apply(
        x.view(1, 1, 90), torch.full((16,), 255, dtype=torch.uint8), torch.tensor(3.0, dtype=torch.float64), False
    )
    quieted = torch.tensor([0x7FC00001, 0x7FC12345, 0xFFC12345 - (1 << 32)], dtype=torch.int32).repeat(30)
    assert torch.equal(bits_of(y).flatten(), quieted)


RUN_GENERIC = """
import sys
import torch
import dropblock_cuda  # noqa: F401
ops = torch.ops.dropblock_cuda
cases = torch.load(sys.argv[1])
outputs = []
for name, x, mask, scale, shared in cases:
    inplace = x.clone()
    ops.drop_block_apply_(inplace, mask, scale, shared)
    channels_last = x.movedim(1, -1).contiguous().movedim(-1, 1)
    outputs.append((ops.drop_block_apply(x, mask, scale, shared), inplace,
                    ops.drop_block_apply(channels_last, mask, scale, shared)))
torch.save(outputs, sys.argv[2])
"""


def test_avx512_and_generic_kernels_agree_bit_for_bit(tmp_path):
    # Where the CPU has no AVX-512 both runs take the generic kernels and agree trivially.
    all_cases = cases()
    torch.save(all_cases, tmp_path / "cases.pt")
    run = subprocess.run(
        [sys.executable, "-c", RUN_GENERIC, str(tmp_path / "cases.pt"), str(tmp_path / "out.pt")],
        env=env_finding_package(DROPBLOCK_CPU_APPLY="generic"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    generic = torch.load(tmp_path / "out.pt")
    for (name, x, mask, scale, shared), (y_generic, inplace_generic, cl_generic) in zip(all_cases, generic):
        y = ops.drop_block_apply(x, mask, scale, shared)
        inplace = x.clone()
        ops.drop_block_apply_(inplace, mask, scale, shared)
        channels_last = ops.drop_block_apply(x.movedim(1, -1).contiguous().movedim(-1, 1), mask, scale, shared)
        assert torch.equal(bits_of(y), bits_of(y_generic)), name
        assert torch.equal(bits_of(inplace), bits_of(inplace_generic)), name
        assert torch.equal(bits_of(inplace), bits_of(y)), name
        # Channels last: the generic tiles, whose shared runs of kept positions take the AVX-512 kernel.
        assert torch.equal(bits_of(channels_last).contiguous(), bits_of(y)), name
        assert torch.equal(bits_of(cl_generic).contiguous(), bits_of(y)), name


def test_the_layouts_agree_with_the_contiguous_kernel():
    # channels_last and strided inputs take the generic kernels: the same bits as the contiguous one.
    for name, x, mask, scale, shared in cases()[::5]:
        y = ops.drop_block_apply(x, mask, scale, shared)
        for other in (x.movedim(1, -1).contiguous().movedim(-1, 1), x.transpose(-1, 0).contiguous().transpose(-1, 0)):
            assert torch.equal(bits_of(ops.drop_block_apply(other, mask, scale, shared)).contiguous(), bits_of(y)), name


@pytest.mark.parametrize("value, ok", [("auto", True), ("", True), ("generic", True), ("avx2", False)])
def test_the_kernel_setting_is_checked(value, ok, tmp_path):
    code = (
        "import torch, dropblock_cuda\n"
        "x = torch.ones(2, 3, 5)\n"
        "try:\n"
        "    y = torch.ops.dropblock_cuda.drop_block_apply(x, torch.full((8,), 255, dtype=torch.uint8),"
        " torch.tensor(2.0, dtype=torch.float64), False)\n"
        "    print('ok', float(y.sum()))\n"
        "except ValueError as e:\n"
        "    print('ValueError', e)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=env_finding_package(DROPBLOCK_CPU_APPLY=value),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    if ok:
        assert run.stdout.startswith("ok 60.0"), run.stdout
    else:
        assert "DROPBLOCK_CPU_APPLY: expected 'auto' or 'generic', got 'avx2'" in run.stdout, run.stdout


def test_the_backward_of_a_shared_mask_is_the_apply_of_the_gradient():
    # The backward runs the same contiguous shared kernel on the incoming gradient.
    x = make_input((2, 6, 7, 7), torch.float32, 0, seed=5).nan_to_num().requires_grad_(True)
    mask, bits = make_mask((2, 6, 7, 7), True, "runs", seed=5)
    scale = torch.tensor(1.5, dtype=torch.float64)
    grad = torch.randn(2, 6, 7, 7, generator=torch.Generator().manual_seed(6))
    ops.drop_block_apply(x, mask, scale, True).backward(grad)
    keep, expected = expected_of(grad, mask, bits, 1.5, True)
    assert torch.equal(x.grad, expected)
