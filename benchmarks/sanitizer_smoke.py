"""A small forward + backward of every CUDA code path, for compute-sanitizer (memcheck, racecheck).

    compute-sanitizer --tool memcheck python benchmarks/sanitizer_smoke.py

Covers the mask kernels (both paths, window and scatter; 1d/2d/3d, per-channel and shared, wide
blocks, ragged word tails, a count over several blocks, keys on the device and on the host) and
the apply kernels (every dtype, contiguous with each vector width (offsets of 1, 2 and 4
elements), channels_last tiles, strided, in place). Exits non-zero when a result differs from the
CPU kernels. `--device cpu` runs the same on the CPU kernels (a dry run of the script itself, done
by tests/test_gpu_check.py); `--quick` keeps float32 only (enough for racecheck). It stays a
script, not a pytest file: compute-sanitizer runs it as one short process (benchmarks/gpu_check.sh).
"""

import argparse
import sys

import torch


def probability(p, device):
    """The drop probability as the ops take it: a float64 scalar tensor."""
    return torch.tensor(p, dtype=torch.float64, device=device)


def main(device="cuda", quick=False):
    if device == "cuda" and not torch.cuda.is_available():
        print("sanitizer_smoke: no CUDA device", file=sys.stderr)
        return 2
    import dropblock_cuda

    ops = torch.ops.dropblock_cuda
    fns = {1: dropblock_cuda.drop_block1d, 2: dropblock_cuda.drop_block2d, 3: dropblock_cuda.drop_block3d}
    cases = [
        ((2, 3, 37), (5,)),
        ((2, 3, 130), (60,)),
        ((2, 3, 13, 11), (3, 3)),
        ((2, 3, 5, 6, 7), (2, 3, 3)),
        # channels-last tiles (16+ channels, more than one channel tile, 3-d), several count blocks
        ((2, 20, 70), (5,)),
        ((1, 300, 5, 13), (3, 3)),
        ((2, 16, 3, 5, 7), (2, 2, 2)),
        ((4, 64, 40, 40), (7, 7)),
        # blocks that reach back further than a mask window: the scatter kernels by default
        ((1, 2, 40, 300), (30, 3)),
    ]
    channels_last = {
        3: lambda t: t.transpose(1, 2).contiguous().transpose(1, 2),
        4: lambda t: t.contiguous(memory_format=torch.channels_last),
        5: lambda t: t.contiguous(memory_format=torch.channels_last_3d),
    }
    failures = 0

    def check(same, what):
        nonlocal failures
        if not same:
            failures += 1
            print(f"sanitizer_smoke: MISMATCH {what}", flush=True)

    for shape, block in cases:
        # quick (for racecheck, which only watches shared memory: the mask kernels, the block sums
        # and the channels-last tiles): one element type.
        for dtype in (torch.float32,) if quick else (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            for shared in (False, True):
                x_cpu = torch.randn(shape, dtype=torch.float64).to(dtype)
                x = x_cpu.to(device).requires_grad_()
                y = fns[len(block)](x, 0.3, block, shared_channels=shared)
                y.backward(torch.ones_like(y))
                # A key from a CPU generator reaches the kernels by value.
                fns[len(block)](
                    x.detach(), 0.3, block, shared_channels=shared, generator=torch.Generator().manual_seed(5)
                )
                seed = 1234
                m_cpu, s_cpu = ops.drop_block_mask(
                    x_cpu, torch.tensor(seed), probability(0.3, x_cpu.device), list(block), 1e-6, shared
                )
                seed_gpu = torch.tensor(seed, device=device)
                p_gpu = probability(0.3, device)
                for kernel in ("scatter", "window", "auto"):  # both mask paths; the default's mask is used below
                    ops._set_cuda_mask_kernel(kernel)
                    m, s = ops.drop_block_mask(x.detach(), seed_gpu, p_gpu, list(block), 1e-6, shared)
                    check(
                        torch.equal(m.cpu(), m_cpu),
                        f"mask {shape} block {block} {dtype} shared={shared} kernel={kernel}",
                    )
                expected = ops.drop_block_apply(x_cpu, m_cpu, s_cpu, shared)
                views = {
                    "contiguous": x.detach(),
                    "transposed": x.detach().transpose(-1, 0).contiguous().transpose(-1, 0),
                    "channels_last": channels_last[len(shape)](x.detach()),
                    # 1, 2 and 4 elements past an aligned address: every narrower vector width.
                    **{
                        f"offset{k}": torch.empty(x.numel() + k, dtype=dtype, device=device)[k:]
                        .view(shape)
                        .copy_(x.detach())
                        for k in (1, 2, 4)
                    },
                }
                for view, v in views.items():
                    case = f"{shape} {dtype} shared={shared} {view}"
                    check(torch.equal(ops.drop_block_apply(v, m, s, shared).cpu(), expected), f"apply {case}")
                    w = v.clone()
                    ops.drop_block_apply_(w, m, s, shared)
                    check(torch.equal(w.cpu(), expected), f"apply_ {case}")
    # Zero-size inputs.
    for shape in ((0, 3, 4, 4), (2, 0, 4, 4)):
        for shared in (False, True):
            x = torch.empty(shape, device=device)
            m, s = ops.drop_block_mask(
                x, torch.tensor(1, device=device), probability(0.3, x.device), [3, 3], 1e-6, shared
            )
            ops.drop_block_apply(x, m, s, shared)
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"sanitizer_smoke: {'OK' if failures == 0 else f'{failures} mismatches'}")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cpu: the same script on the CPU kernels (a dry run, for CI)")
    parser.add_argument("--quick", action="store_true", help="float32 only (racecheck: shared memory is dtype-blind)")
    args = parser.parse_args()
    sys.exit(main(args.device, args.quick))
