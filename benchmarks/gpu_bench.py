"""GPU timing of the DropBlock ops against a device-to-device copy (the bandwidth floor).

    python -m benchmarks.gpu_bench [--out DIR] [--batch 128] [--blocks 7,3] [--quick] [--compile {default,static,off}]

(``--device cpu``: a dry run of the script on the CPU kernels, for its tests.)

ResNet-50 stage shapes (256x56x56, 512x28x28, 1024x14x14, 2048x7x7) at batch 128, float32 and
bfloat16, p=0.1, blocks 7 and 3, one mask per channel. For each case:
  * forward (drop_block2d: key draw + mask + apply), eagerly and replayed from a CUDA graph; the
    mask alone; the forward with a mask shared by the channels; the mask and the forward with
    the other mask path (scatter) forced;
  * the forward on channels_last memory (the tiled apply) and on a transposed view (H and W
    swapped: the strided apply);
  * backward (= drop_block_apply on a gradient, also on channels_last memory) and
    forward+backward through autograd;
  * the device time of each kernel of a forward and of a forward+backward (profiler);
  * a device-to-device copy of the input (the floor), and the ratios to it;
  * torchvision.ops.drop_block2d when it is importable, and forward+backward of torch.compile of
    it (of the corrected article reference, benchmarks/reference_dropblock.py, without
    torchvision), compiled outside timing;
  * the bytes autograd saves per input element;
then the performance targets (``TARGETS``: bounds on the ratios over the copy and over the peers),
each marked met or not with its worst measured ratio, and the host time of an eager call. CUDA
events around batches of calls (``measure.time_calls``), median over repeats after warm-up,
inputs rotated so that the working set exceeds the L2 cache. Writes gpu_bench.json,
gpu_bench.md and targets.txt (one line per target, for gpu_check.sh's summary) into --out after
every case; prints the table last.
"""

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
import types
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import torch

if __package__ in (None, ""):  # python benchmarks/gpu_bench.py: import this folder as the package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[0]))))
    __package__ = "benchmarks"

from . import cli, measure  # noqa: E402
from .measure import Timing  # noqa: E402

SHAPES = [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BLOCKS = (7, 3)
P, EPS = 0.1, 1e-6


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_bench", description=__doc__.splitlines()[0])
    cli.add_quick(parser, "batch 8, 2 calls per repeat")
    cli.add_device(parser, "cuda", "a dry run of the script on the CPU kernels")
    cli.add_output(parser, progress=False)
    parser.add_argument("--batch", type=int, default=None, help="default 128, 8 with --quick")
    parser.add_argument(
        "--blocks", default=list(BLOCKS), type=cli.ints, help="block sizes, comma-separated (default 7,3)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"timed batches per measurement, the median taken (default 9, {cli.QUICK_REPEATS} with --quick)",
    )
    parser.add_argument("--calls", type=int, default=None, help="calls per timed batch (default 5, 2 with --quick)")
    cli.add_warmup(parser, 3, quick=1)
    parser.add_argument("--no-torchvision", action="store_true")
    parser.add_argument(
        "--compiled-only",
        action="store_true",
        help="only the copy, our forward+backward and the compiled peer's (a step of its own "
        "in gpu_check.sh, where compiling takes most of the time)",
    )
    parser.add_argument(
        "--compile",
        choices=("default", "static", "off"),
        default="default",
        help="torch.compile of the peer: torch.compile's defaults (dynamic shapes from the "
        "second shape on: least compile time), static shapes (one compile per case), or off",
    )
    return parser


def parse_args(argv=None):
    return cli.resolve_defaults(
        build_parser().parse_args(argv),
        full=dict(batch=128, repeats=9, calls=5, warmup=3),
        quick=dict(batch=8, repeats=cli.QUICK_REPEATS, calls=2, warmup=1),
    )


@dataclass(frozen=True)
class Run:
    """How every case is measured: the timing, the L2 size its inputs must exceed, the device
    ("cpu": a dry run), and whether only the compiled peer's comparison is taken."""

    timing: Timing
    l2_bytes: int
    device: str = "cuda"
    compiled_only: bool = False


@dataclass(frozen=True)
class Subjects:
    """What a case times: our ops and function, and the peers (None: not measured)."""

    ops: Any  # torch.ops.dropblock_cuda
    drop_block2d: Callable
    torchvision: Optional[Callable] = None  # torchvision.ops.drop_block2d
    compiled: Optional[Callable] = None  # compiled_peer's: fn(x, p, block_size)


@dataclass(frozen=True)
class Case:
    shape: Tuple[int, ...]  # (N, C, H, W)
    dtype: torch.dtype
    block: int = BLOCKS[0]


@dataclass
class Inputs:
    """A case's rotated inputs and what our forward needs besides (key, p, the masks of the backward)."""

    xs: List[torch.Tensor]
    masks: list
    seed: torch.Tensor
    p: torch.Tensor

    @property
    def buffers(self) -> int:
        return len(self.xs)


def _release(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def median_ms(fn, buffers, run: Run) -> float:
    """Median milliseconds per call of fn(i), i rotating over `buffers` inputs."""
    return statistics.median(measure.time_calls(lambda i: fn(i % buffers), run.timing, run.device))


def time_graph(fn, buffers, repeats):
    """Median milliseconds per call of fn(i) replayed from a CUDA graph: the GPU time alone, no
    host launch overhead (which an eager call of a small tensor may not hide)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(buffers):
            fn(i)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(buffers):
            fn(i)
    # The replay of all `buffers` calls is one sample; no warm-up left to do after the capture's.
    samples = measure.time_calls(lambda i: graph.replay(), Timing(repeats=repeats, warmup=1), "cuda")
    graph = None  # free the captured graph before the next measurement
    return statistics.median(samples) / buffers


def host_microseconds_per_call(fn, calls=50, repeats=7, device="cuda"):
    """Host time per call of fn() on a tiny CUDA tensor: what an eager call costs the CPU. The GPU
    first spins in a sleep kernel, so the timed calls only enqueue (a full launch queue would
    make the host wait for the GPU and time the kernels instead); median over repeats. On the CPU
    (a dry run) the calls' whole time."""
    on_cuda = torch.device(device).type == "cuda"
    for _ in range(20):
        fn()
    measure.sync(device)
    samples = []
    for _ in range(repeats):
        if on_cuda:
            torch.cuda._sleep(50_000_000)  # tens of ms at GPU clocks: longer than the calls below
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
        measure.sync(device)
    return statistics.median(samples)


def short_kernel_name(name):
    """A profiler kernel name without namespaces, template or function arguments:
    'void dropblock::cuda::(anonymous namespace)::apply_contiguous_kernel<float, 4, false>(...)' ->
    'apply_contiguous_kernel'; 'Memcpy DtoD (Device -> Device)' -> 'Memcpy DtoD'."""
    kept, depth = [], 0
    for ch in name.replace("(anonymous namespace)", ""):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif depth == 0:
            kept.append(ch)
    head = "".join(kept).split("(")[0].strip()
    if "::" in head:
        head = head.split("::")[-1]
    elif head.startswith("void "):
        head = head[len("void ") :]
    return head.strip() or name


def kernel_microseconds(fn, buffers, calls=5, device="cuda"):
    """Device microseconds per call of fn(i), per kernel (memsets and copies included), from the
    profiler: where a forward's time goes (the key draw, the mask, the apply pass). With
    device="cpu" (a dry run), host microseconds per operator."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    on_cuda = device == "cuda"
    for i in range(buffers):
        fn(i)
    measure.sync(device)
    with profile(activities=[ProfilerActivity.CUDA if on_cuda else ProfilerActivity.CPU]) as prof:
        for i in range(calls):
            fn(i % buffers)
        measure.sync(device)
    times = {}
    for event in prof.key_averages():
        if on_cuda:
            total = getattr(event, "self_device_time_total", None)
            if total is None:  # older torch
                total = getattr(event, "self_cuda_time_total", 0)
        else:
            total = event.self_cpu_time_total
        if event.device_type == (DeviceType.CUDA if on_cuda else DeviceType.CPU) and total > 0:
            name = short_kernel_name(event.key)
            times[name] = times.get(name, 0.0) + total / calls
    return dict(sorted(times.items(), key=lambda item: -item[1]))


def forward_backward(forward, leaves, grads):
    """fn(i): forward(leaves[i]) and its gradient, for median_ms and the profiler."""

    def fwd_bwd(i):
        torch.autograd.grad(forward(leaves[i]), leaves[i], grads[i % 2])

    return fwd_bwd


def profile_kernels(result, drop_block2d, device="cuda"):
    """Where a case's time goes: the device time per kernel of our forward and forward+backward.
    main runs this after every case is timed, since a profiler session may leave CUPTI attached
    (TEARDOWN_CUPTI=0) and slow the eager timings that follow it."""
    shape, dtype, block = tuple(result["shape"]), getattr(torch, result["dtype"]), result["block"]
    xs = [torch.randn(shape, device=device, dtype=dtype) for _ in range(result["buffers"])]
    leaves = [x.detach().requires_grad_() for x in xs]
    grads = [torch.randn_like(x) for x in xs[:2]]
    ours = lambda x: drop_block2d(x, P, block)  # noqa: E731
    passes = (("forward", lambda i: ours(xs[i])), ("fwd_bwd", forward_backward(ours, leaves, grads)))
    for name, fn in passes:
        try:
            result[f"{name}_kernels_us"] = kernel_microseconds(fn, len(xs), device=device)
        except Exception as exc:  # report, and keep the other numbers
            result[f"{name}_kernels_error"] = repr(exc)[:300]
    xs = leaves = grads = None  # free them (the closures above are done with them)
    _release(device)


def saved_bytes_per_element(fn, x):
    """Bytes autograd keeps for backward in fn(x), per element of x (x's own storage not counted)."""
    return measure.saved_bytes_for_backward(fn, x) / x.numel()


@contextlib.contextmanager
def mask_kernel(name):
    """Forces one CUDA mask path ("window", "scatter"; "auto": the geometry decides) inside the block."""
    previous = torch.ops.dropblock_cuda._set_cuda_mask_kernel(name)
    try:
        yield
    finally:
        torch.ops.dropblock_cuda._set_cuda_mask_kernel(previous)


def compiled_peer(mode, tv_drop_block2d=None):
    """torch.compile of torchvision.ops.drop_block2d, or of the corrected article reference without
    torchvision, called as fn(x, p, block_size); None when mode is "off"."""
    if mode == "off":
        return None
    from .peers import raise_recompile_limit
    from .reference_dropblock import drop_block2d_reference

    # One compiled function for all cases: the default recompiles for a new dtype and then
    # compiles dynamic shapes; "static" compiles every case (more than the default limit of 8).
    raise_recompile_limit(64)
    peer = tv_drop_block2d if tv_drop_block2d is not None else drop_block2d_reference
    return torch.compile(lambda x, p, block: peer(x, p, block, eps=EPS), dynamic=False if mode == "static" else None)


def case_inputs(case: Case, subjects: Subjects, run: Run) -> Inputs:
    bytes_per_tensor = math.prod(case.shape) * torch.tensor([], dtype=case.dtype).element_size()
    # Enough distinct inputs that one pass over them exceeds the L2 cache three times over.
    buffers = min(max(2, math.ceil(3 * run.l2_bytes / bytes_per_tensor)), 8)
    xs = [torch.randn(case.shape, device=run.device, dtype=case.dtype) for _ in range(buffers)]
    seed = torch.tensor(12345, device=run.device)
    p = torch.tensor(P, dtype=torch.float64)  # on the host, as drop_block2d passes it eagerly
    masks = [subjects.ops.drop_block_mask(x, seed, p, [case.block, case.block], EPS, False) for x in xs]
    return Inputs(xs, masks, seed, p)


def bench_case(case: Case, subjects: Subjects, run: Run) -> dict:
    """Every measurement of one case (``run.compiled_only``: the copy and the forward+backward of
    ours and of the compiled peer only); one result dict, the keys of the table and targets."""
    numel, block = math.prod(case.shape), case.block
    inputs = case_inputs(case, subjects, run)
    xs, buffers = inputs.xs, inputs.buffers
    outs = [torch.empty_like(x) for x in xs]
    result = {
        "shape": list(case.shape),
        "dtype": str(case.dtype).replace("torch.", ""),
        "block": block,
        "numel": numel,
        "buffers": buffers,
    }

    result["copy_ms"] = median_ms(lambda i: outs[i].copy_(xs[i]), buffers, run)
    if not run.compiled_only:
        measure_ours(result, inputs, subjects, run, block)
    grads = [torch.randn_like(x) for x in xs[:2]]
    leaves = [x.detach().requires_grad_() for x in xs]
    ours = lambda x: subjects.drop_block2d(x, P, block)  # noqa: E731
    result["fwd_bwd_ms"] = median_ms(forward_backward(ours, leaves, grads), buffers, run)
    result["saved_bytes_per_element"] = saved_bytes_per_element(ours, xs[0])
    if subjects.torchvision is not None and not run.compiled_only:
        torchvision = lambda x: subjects.torchvision(x, P, block)  # noqa: E731
        result["torchvision_forward_ms"] = median_ms(lambda i: torchvision(xs[i]), buffers, run)
        result["torchvision_fwd_bwd_ms"] = median_ms(forward_backward(torchvision, leaves, grads), buffers, run)
        result["torchvision_saved_bytes_per_element"] = saved_bytes_per_element(torchvision, xs[0])
    if subjects.compiled is not None:
        compiled_fwd_bwd = forward_backward(lambda x: subjects.compiled(x, P, block), leaves, grads)
        try:
            started = time.perf_counter()
            compiled_fwd_bwd(0)  # compiles forward and backward (or reuses a dynamic-shape compile)
            measure.sync(run.device)
            result["compiled_first_call_s"] = time.perf_counter() - started
            result["compiled_fwd_bwd_ms"] = median_ms(compiled_fwd_bwd, buffers, run)
        except Exception as exc:  # report, and keep the other numbers
            result["compiled_error"] = repr(exc)[:300]
    copy = result["copy_ms"]
    for key in (
        "forward",
        "forward_shared",
        "forward_graph",
        "transposed_forward",
        "backward",
        "mask",
        "fwd_bwd",
        "torchvision_forward",
        "torchvision_fwd_bwd",
        "compiled_fwd_bwd",
    ):
        if f"{key}_ms" in result:
            result[f"{key}_over_copy"] = result[f"{key}_ms"] / copy
    for peer in ("torchvision_fwd_bwd", "compiled_fwd_bwd"):
        if f"{peer}_ms" in result:
            result[f"{peer}_speedup"] = result[f"{peer}_ms"] / result["fwd_bwd_ms"]
    # Effective bandwidth of the copy: read + write.
    result["copy_gbps"] = 2 * xs[0].numel() * xs[0].element_size() / (copy * 1e-3) / 1e9
    xs = outs = inputs = leaves = grads = None  # free them (the closures above are done with them)
    _release(run.device)
    return result


def measure_ours(result: dict, inputs: Inputs, subjects: Subjects, run: Run, block: int) -> None:
    """Our forward (eager, shared mask, scatter mask path, graph replay, channels_last memory, a
    transposed view), mask and backward passes, into ``result``."""
    xs, masks, seed, p, buffers = inputs.xs, inputs.masks, inputs.seed, inputs.p, inputs.buffers
    ops, drop_block2d = subjects.ops, subjects.drop_block2d
    ours = lambda x: drop_block2d(x, P, block)  # noqa: E731
    mask = lambda x: ops.drop_block_mask(x, seed, p, [block, block], EPS, False)  # noqa: E731
    result["forward_ms"] = median_ms(lambda i: ours(xs[i]), buffers, run)
    result["mask_ms"] = median_ms(lambda i: mask(xs[i]), buffers, run)
    # One mask per sample, shared by the channels (timm's default): a smaller mask, the same pass.
    result["forward_shared_ms"] = median_ms(lambda i: drop_block2d(xs[i], P, block, shared_channels=True), buffers, run)
    # The other mask path (the shapes here take the window kernel): the same mask, its cost.
    with mask_kernel("scatter"):
        result["mask_scatter_ms"] = median_ms(lambda i: mask(xs[i]), buffers, run)
        result["forward_scatter_ms"] = median_ms(lambda i: ours(xs[i]), buffers, run)
    try:
        result["forward_graph_ms"] = time_graph(lambda i: ours(xs[i]), buffers, run.timing.repeats)
    except Exception as exc:  # report, and keep the eager numbers
        result["forward_graph_error"] = repr(exc)
    # H and W swapped, a view: the strided apply (slices, transposes), against the contiguous copy.
    result["transposed_forward_ms"] = median_ms(lambda i: ours(xs[i].transpose(2, 3)), buffers, run)
    result["backward_ms"] = median_ms(lambda i: ops.drop_block_apply(xs[i], *masks[i], False), buffers, run)
    # The forward and the backward pass over channels_last memory (the tiled kernel), against a
    # copy of that memory.
    xs_cl = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    outs_cl = [torch.empty_like(x) for x in xs_cl]
    result["channels_last_copy_ms"] = median_ms(lambda i: outs_cl[i].copy_(xs_cl[i]), buffers, run)
    result["channels_last_forward_ms"] = median_ms(lambda i: ours(xs_cl[i]), buffers, run)
    result["channels_last_backward_ms"] = median_ms(
        lambda i: ops.drop_block_apply(xs_cl[i], *masks[i], False), buffers, run
    )
    for key in ("channels_last_forward", "channels_last_backward"):
        result[f"{key}_over_copy"] = result[f"{key}_ms"] / result["channels_last_copy_ms"]
    xs_cl = outs_cl = None  # free them (the closures above are done with them)


# (header, result key, format) of the table's columns.
COLUMNS = [
    ("copy", "copy_ms", "{:.3f}"),
    ("fwd", "forward_ms", "{:.3f}"),
    ("fwd/copy", "forward_over_copy", "{:.2f}"),
    ("fwd graph", "forward_graph_ms", "{:.3f}"),
    ("graph/copy", "forward_graph_over_copy", "{:.2f}"),
    ("mask", "mask_ms", "{:.3f}"),
    ("mask/fp32 copy", "mask_over_fp32_copy", "{:.3f}"),
    ("shared fwd/copy", "forward_shared_over_copy", "{:.2f}"),
    ("mask scatter", "mask_scatter_ms", "{:.3f}"),
    ("fwd scatter", "forward_scatter_ms", "{:.3f}"),
    ("bwd", "backward_ms", "{:.3f}"),
    ("bwd/copy", "backward_over_copy", "{:.2f}"),
    ("cl fwd/copy", "channels_last_forward_over_copy", "{:.2f}"),
    ("cl bwd/copy", "channels_last_backward_over_copy", "{:.2f}"),
    ("transposed fwd/copy", "transposed_forward_over_copy", "{:.2f}"),
    ("fwd+bwd", "fwd_bwd_ms", "{:.3f}"),
    ("tv fwd", "torchvision_forward_ms", "{:.3f}"),
    ("tv fwd+bwd", "torchvision_fwd_bwd_ms", "{:.3f}"),
    ("compiled fwd+bwd", "compiled_fwd_bwd_ms", "{:.3f}"),
    ("x tv", "torchvision_fwd_bwd_speedup", "{:.1f}"),
    ("x compiled", "compiled_fwd_bwd_speedup", "{:.2f}"),
    ("saved B/el", "saved_bytes_per_element", "{:.3f}"),
    ("tv saved B/el", "torchvision_saved_bytes_per_element", "{:.3f}"),
]

# The performance targets: (name, result key, comparison, bound, the cases it is for). The
# ResNet-50 stages 1 and 2 are the shapes of 256 and 512 channels.
TARGETS = [
    ("forward <= 1.15x copy, stages 1-2", "forward_over_copy", "<=", 1.15, lambda r: r["shape"][1] <= 512),
    ("forward <= 1.4x copy, stages 3-4", "forward_over_copy", "<=", 1.4, lambda r: r["shape"][1] > 512),
    ("backward <= 1.1x copy", "backward_over_copy", "<=", 1.1, None),
    ("mask <= 0.05x the fp32 copy", "mask_over_fp32_copy", "<=", 0.05, None),
    ("channels_last forward <= 1.3x copy", "channels_last_forward_over_copy", "<=", 1.3, None),
    ("transposed view forward <= 2x copy", "transposed_forward_over_copy", "<=", 2.0, None),
    ("fwd+bwd >= 10x torchvision", "torchvision_fwd_bwd_speedup", ">=", 10.0, None),
    ("fwd+bwd faster than torch.compile of it", "compiled_fwd_bwd_speedup", ">", 1.0, None),
    # One bit per element, plus the 8-byte scale.
    ("saved <= 1/8 byte per element", "saved_bytes_over_one_bit", "<=", 1.0, None),
]
COMPARE = {"<=": lambda v, bound: v <= bound, ">=": lambda v, bound: v >= bound, ">": lambda v, bound: v > bound}


def case_name(r):
    return "{} {} b{}".format("x".join(map(str, r["shape"])), r["dtype"], r.get("block", "?"))


def add_cross_case_ratios(results):
    """Ratios that need two cases: the mask's time over the float32 copy of the same shape (the
    mask does not depend on the dtype); and the saved bytes over 1 bit per element plus the 8 of
    the scale. Added to the results in place (again and again: the same values)."""
    fp32_copy = {tuple(r["shape"]): r["copy_ms"] for r in results if r["dtype"] == "float32" and "copy_ms" in r}
    for r in results:
        if "mask_ms" in r and tuple(r["shape"]) in fp32_copy:
            r["mask_over_fp32_copy"] = r["mask_ms"] / fp32_copy[tuple(r["shape"])]
        if "saved_bytes_per_element" in r:
            r["saved_bytes_over_one_bit"] = r["saved_bytes_per_element"] / (0.125 + 8.0 / r["numel"])


def target_verdicts(results):
    """Per target: the cases measured, how many met it, the worst value and its case, the failed cases."""
    add_cross_case_ratios(results)
    verdicts = []
    for name, key, op, bound, applies in TARGETS:
        measured = [r for r in results if key in r and (applies is None or applies(r))]
        failed = [r for r in measured if not COMPARE[op](r[key], bound)]
        worst = (max if op == "<=" else min)(measured, key=lambda r: r[key]) if measured else None
        verdicts.append(
            {
                "target": name,
                "key": key,
                "measured": len(measured),
                "met": len(measured) - len(failed),
                "worst": worst[key] if worst else None,
                "worst_case": case_name(worst) if worst else None,
                "failed_cases": [case_name(r) for r in failed],
            }
        )
    return verdicts


# The host-side target: an eager forward's host time per call over F.dropout's.
HOST_TARGET = ("host time per eager forward <= 1.5x F.dropout's", 1.5)


def targets_text(results, device_name, host_overhead=None):
    """One line per target for a summary: MET / NOT MET / NOT MEASURED, cases met, the worst ratio;
    then the host time per call against F.dropout's, when `host_overhead` (main's) holds both."""
    lines = [f"targets on {device_name} (gpu_bench; ratios over a device-to-device copy of the same tensor):"]
    for v in target_verdicts(results):
        if not v["measured"]:
            lines.append(f"  NOT MEASURED  {v['target']}")
            continue
        verdict = "MET" if v["met"] == v["measured"] else "NOT MET"
        lines.append(
            f"  {verdict:12s}  {v['target']}: {v['met']} of {v['measured']} cases, worst {v['worst']:.3g}"
            f" ({v['worst_case']})"
        )
    name, bound = HOST_TARGET
    ours, dropout = (host_overhead or {}).get("forward_us"), (host_overhead or {}).get("dropout_forward_us")
    if ours and dropout:
        verdict = "MET" if ours / dropout <= bound else "NOT MET"
        lines.append(f"  {verdict:12s}  {name}: {ours / dropout:.3g} ({ours:.1f} us against {dropout:.1f} us)")
    else:
        lines.append(f"  NOT MEASURED  {name}")
    return "\n".join(lines) + "\n"


def markdown(results, device_name):
    add_cross_case_ratios(results)
    lines = [
        f"# DropBlock GPU benchmark ({device_name})",
        "",
        f"p={P}, per-channel masks; times are medians in ms; ratios are over a device-to-device copy.",
        "fwd graph: the forward replayed from a CUDA graph (GPU time without host launch overhead);"
        " shared fwd: the forward with one mask per sample (shared_channels=True);"
        " mask scatter / fwd scatter: the mask and the eager forward with the scatter mask kernels forced"
        " (these shapes take the window kernel by default);"
        " mask/fp32 copy: the mask over the float32 copy of the same shape;"
        " cl fwd, cl bwd: the forward and drop_block_apply on channels_last memory, over a copy of that memory;"
        " transposed fwd: the forward of x.transpose(2, 3) (the strided apply);"
        " x tv / x compiled: how many times faster our forward+backward is than torchvision's and than"
        " torch.compile of torchvision's.",
        "",
        "| shape | dtype | block | " + " | ".join(header for header, _, _ in COLUMNS) + " |",
        "|" + "---|" * (len(COLUMNS) + 3),
    ]
    for r in results:
        cells = [fmt.format(r[key]) if key in r else "-" for _, key, fmt in COLUMNS]
        lines.append(
            "| {} | {} | {} | {} |".format(
                "x".join(map(str, r["shape"])), r["dtype"], r.get("block", "-"), " | ".join(cells)
            )
        )
    lines += [
        "",
        "Device time per call by kernel (us, from the profiler):",
        "",
        "| shape | dtype | block | pass | kernels |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        for name in ("forward", "fwd_bwd"):
            kernels = r.get(f"{name}_kernels_us")
            if kernels:
                cells = ", ".join(f"{kernel} {us:.1f}" for kernel, us in kernels.items())
                lines.append(
                    "| {} | {} | {} | {} | {} |".format(
                        "x".join(map(str, r["shape"])), r["dtype"], r.get("block", "-"), name, cells
                    )
                )
    lines += ["", "| target | met | worst | failed cases |", "|---|---|---|---|"]
    for v in target_verdicts(results):
        met = f"{v['met']} of {v['measured']}" if v["measured"] else "not measured"
        worst = f"{v['worst']:.3g} ({v['worst_case']})" if v["measured"] else "-"
        lines.append(f"| {v['target']} | {met} | {worst} | {', '.join(v['failed_cases']) or '-'} |")
    return "\n".join(lines) + "\n"


def write_results(out, meta, results, device_name):
    """Writes gpu_bench.json, gpu_bench.md and targets.txt into `out`; returns the markdown."""
    meta = dict(meta, targets=target_verdicts(results))
    with open(os.path.join(out, "gpu_bench.json"), "w") as fh:
        json.dump({"meta": meta, "results": results}, fh, indent=2)
    table = markdown(results, device_name)
    table += (
        "\nHost time per eager call on a 1x1x8x8 tensor (us): "
        + ", ".join(f"{k} {v:.1f}" for k, v in meta["host_overhead"].items())
        + "\n"
    )
    with open(os.path.join(out, "gpu_bench.md"), "w") as fh:
        fh.write(table)
    with open(os.path.join(out, "targets.txt"), "w") as fh:
        fh.write(targets_text(results, device_name, meta.get("host_overhead")))
    return table


def host_overhead(drop_block2d, device="cuda"):
    """Host microseconds per eager call on a 1x1x8x8 CUDA tensor, ours and torch's dropout."""
    x = torch.randn(1, 1, 8, 8, device=device)
    leaf = x.clone().requires_grad_()
    calls = {
        "forward_us": lambda: drop_block2d(x, P, 3),
        "forward_grad_us": lambda: drop_block2d(leaf, P, 3),
        "dropout_forward_us": lambda: torch.nn.functional.dropout(x, P),
        "dropout_forward_grad_us": lambda: torch.nn.functional.dropout(leaf, P),
    }
    return {name: host_microseconds_per_call(fn, device=device) for name, fn in calls.items()}


def device_properties(device):
    """The GPU's name and L2 size; for a dry run on the CPU a stand-in with a small "L2" (inputs
    rotated over two buffers)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_properties(device)
    return types.SimpleNamespace(name="CPU dry run", L2_cache_size=2**16)


def main(argv=None):
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device", file=sys.stderr)
        return 2
    import dropblock_cuda
    from dropblock_cuda import drop_block2d

    tv_drop_block2d = None
    if not args.no_torchvision:
        try:
            from torchvision.ops import drop_block2d as tv_drop_block2d
        except Exception as exc:  # torchvision missing or built for another torch
            print(f"gpu_bench: torchvision.ops.drop_block2d unavailable ({exc})", file=sys.stderr)
    subjects = Subjects(
        torch.ops.dropblock_cuda, drop_block2d, tv_drop_block2d, compiled_peer(args.compile, tv_drop_block2d)
    )
    props = device_properties(args.device)
    l2_bytes = getattr(props, "L2_cache_size", 50 * 2**20)
    run = Run(
        Timing(repeats=args.repeats, warmup=args.warmup, calls=args.calls), l2_bytes, args.device, args.compiled_only
    )
    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    overhead = host_overhead(drop_block2d, args.device)
    print(
        "gpu_bench: host time per eager call (1x1x8x8): " + ", ".join(f"{k} {v:.1f}" for k, v in overhead.items()),
        flush=True,
    )
    meta = {
        "device": props.name,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "extension_cuda": dropblock_cuda.cuda_version(),
        "l2_bytes": l2_bytes,
        "p": P,
        "block_sizes": args.blocks,
        "shared_channels": False,
        "host_overhead": overhead,
        "compile": args.compile,
        "args": vars(args),
    }
    results = []
    # float32 first: the bfloat16 cases' mask is compared with the float32 copy of their shape.
    cases = [
        Case((args.batch, *chw), dtype, block) for dtype in DTYPES.values() for chw in SHAPES for block in args.blocks
    ]
    for case in cases:
        r = bench_case(case, subjects, run)
        results.append(r)
        nan = float("nan")
        print(
            f"gpu_bench: {case_name(r)}: copy {r['copy_ms']:.3f} ms, "
            f"forward {r.get('forward_over_copy', nan):.2f}x (graph {r.get('forward_graph_over_copy', nan):.2f}x), "
            f"backward {r.get('backward_over_copy', nan):.2f}x, fwd+bwd {r['fwd_bwd_ms']:.3f} ms "
            f"(x{r.get('torchvision_fwd_bwd_speedup', nan):.1f} over torchvision, "
            f"x{r.get('compiled_fwd_bwd_speedup', nan):.2f} over compiled)",
            flush=True,
        )
        # Written after every case, so that a run cut short by its time limit still leaves its numbers.
        meta["seconds"] = time.time() - started
        table = write_results(args.out, meta, results, props.name)
    if not args.compiled_only:
        for r in results:
            if r["block"] != args.blocks[0]:
                continue  # where the time goes, for the first block size only: the profiler is slow to run
            profile_kernels(r, drop_block2d, device=args.device)
            meta["seconds"] = time.time() - started
            table = write_results(args.out, meta, results, props.name)
        print("gpu_bench: kernel times profiled", flush=True)
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
