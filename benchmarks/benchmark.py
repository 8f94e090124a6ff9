"""Side-by-side benchmark of dropblock_cuda against other DropBlock implementations.

Run ``python -m benchmarks`` (or ``python benchmarks/benchmark.py``); ``--help`` lists the flags.

Every implementation is first checked on the tensor it is timed on (``check_dropblock_output``):
an implementation whose output is not a valid DropBlock output is reported as FAILED and not
timed. Ratios compare like with like: implementations with one mask per (sample, channel) are
compared with ``dropblock_cuda``'s per-channel mode, implementations that share one mask across
the channels of a sample with its ``shared_channels=True`` mode.
"""

import argparse
import csv
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

try:  # python -m benchmarks / import benchmarks.benchmark
    from .reference_dropblock import drop_block2d_reference
except ImportError:  # python benchmarks/benchmark.py
    from reference_dropblock import drop_block2d_reference

RESNET50_STAGES = ((256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7))
DEFAULT_BLOCK_SIZES = (3, 5, 7)
DEFAULT_DTYPES = ("float32", "bfloat16")
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
HEADLINE = {"shape": (32, 64, 56, 56), "dtype": "float32", "p": 0.1, "block_size": 7, "threads": 2}
HEADLINE_TARGETS = {
    "per_channel_fwd_over_floor": ("<=", 4.0),
    "shared_fwd_over_floor": ("<=", 1.5),
    "torchvision_fwdbwd_over_ours": (">=", 20.0),
}
ROTATION_BYTES = 100 * 2**20  # inputs are cycled through so that their total exceeds this (L2 and more)
MAX_COPIES = 32

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


# --------------------------------------------------------------------------------------------
# Correctness gate
# --------------------------------------------------------------------------------------------

@dataclass
class GateResult:
    ok: bool
    reason: str = ""
    drop_frac: float = float("nan")
    scale: float = float("nan")
    # Set when the drop fraction is outside the strict tolerance but the implementation was checked
    # leniently (peers whose seeds are expanded with max-pool padding drop more than p).
    warning: str = ""

    def __bool__(self) -> bool:
        return self.ok


def _dtype_eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def drop_fraction_tolerance(shape: Sequence[int], p: float, block_size: Optional[int],
                            shared_channels: bool) -> float:
    """Allowed |drop fraction - p|: 0.5 p for the gamma approximation (overlapping blocks, edges),
    plus 5 standard deviations of a drop fraction made of roughly independent block-sized units."""
    n, c, h, w = shape
    planes = n if shared_channels else n * c
    if block_size is None:
        units_per_plane = h * w
    else:
        units_per_plane = math.ceil(h / min(block_size, h)) * math.ceil(w / min(block_size, w))
    n_eff = max(planes * units_per_plane, 1)
    return 0.5 * p + 5.0 * math.sqrt(p * (1.0 - p) / n_eff)


def check_dropblock_output(x: torch.Tensor, y: torch.Tensor, p: float, block_size: Optional[int] = None,
                           *, shared_channels: bool = False, lenient_upper: bool = False) -> GateResult:
    """Whether ``y`` is a valid DropBlock output of ``x`` at drop probability ``p``.

    Valid means: same shape and dtype, finite, every element either exactly 0 or ``x * s`` for one
    scale ``s`` common to the whole tensor (within the dtype's rounding), ``s`` equal to
    ``1 / (1 - drop fraction)`` (the rescaling keeps the mean), and the drop fraction within
    ``drop_fraction_tolerance`` of ``p``. With ``lenient_upper`` a drop fraction above the tolerance
    is only a warning (for implementations known to drop more, e.g. seeds padded by max pool).
    """
    if not isinstance(y, torch.Tensor):
        return GateResult(False, f"output is a {type(y).__name__}, not a Tensor")
    if y.shape != x.shape:
        return GateResult(False, f"output shape {tuple(y.shape)} != input shape {tuple(x.shape)}")
    if y.dtype != x.dtype:
        return GateResult(False, f"output dtype {y.dtype} != input dtype {x.dtype}")
    xd = x.detach().to(torch.float64)
    yd = y.detach().to(torch.float64)
    if not torch.isfinite(yd).all():
        return GateResult(False, "output has non-finite values")
    if p == 0.0:
        same = torch.equal(xd, yd)
        return GateResult(same, "" if same else "p=0 must return the input unchanged", 0.0, 1.0)
    nonzero_in = xd != 0
    if (yd[~nonzero_in] != 0).any():
        return GateResult(False, "nonzero output where the input is zero")
    kept = (yd != 0) & nonzero_in
    n_in = int(nonzero_in.sum())
    n_kept = int(kept.sum())
    if n_in == 0:
        return GateResult(False, "input is all zeros; cannot check")
    frac = 1.0 - n_kept / n_in
    scale = float("nan")
    rtol = 4.0 * _dtype_eps(x.dtype)
    if n_kept:
        ratios = yd[kept] / xd[kept]
        scale = float(ratios.median())
        err = (yd[kept] - xd[kept] * scale).abs()
        bound = rtol * (xd[kept] * scale).abs()
        bad = int((err > bound).sum())
        if bad:
            lo, hi = float(ratios.min()), float(ratios.max())
            return GateResult(False, f"{bad} kept values are not input*s for one s "
                                     f"(y/x spans {lo:.6g}..{hi:.6g})", frac, scale)
        if scale <= 0:
            return GateResult(False, f"scale {scale:.6g} is not positive", frac, scale)
        expected = 1.0 / (1.0 - frac)
        if abs(scale / expected - 1.0) > 1e-3 + 2.0 * _dtype_eps(x.dtype):
            return GateResult(False, f"scale {scale:.6g} != 1/(1 - drop fraction) = {expected:.6g}",
                              frac, scale)
    tol = drop_fraction_tolerance(tuple(x.shape), p, block_size, shared_channels)
    if frac < p - tol:
        return GateResult(False, f"drop fraction {frac:.4f} < p - tol = {p - tol:.4f}", frac, scale)
    if frac > p + tol:
        if not lenient_upper:
            return GateResult(False, f"drop fraction {frac:.4f} > p + tol = {p + tol:.4f}", frac, scale)
        return GateResult(True, "", frac, scale, warning=f"drops {frac:.3f} (p={p:g})")
    return GateResult(True, "", frac, scale)


# --------------------------------------------------------------------------------------------
# Implementations
# --------------------------------------------------------------------------------------------

@dataclass
class Impl:
    key: str
    label: str
    # True: one mask per sample shared by its channels; False: one per (sample, channel);
    # None: not DropBlock (the floor).
    shared: Optional[bool]
    # make(p, block_size, dtype, device) -> fn(x) -> y. Called once per configuration.
    make: Callable
    note: str = ""
    lenient_upper: bool = False  # expands seeds with max-pool padding: may drop more than p
    compiled: bool = False

    @property
    def masks(self) -> str:
        return {True: "shared", False: "per-ch", None: "-"}[self.shared]


def _floor_impl(device: torch.device) -> Impl:
    if device.type == "cuda":
        def make(p, block_size, dtype, dev):
            return lambda x: torch.empty_like(x).copy_(x)
        return Impl("floor", "floor: device copy y.copy_(x)", None, make,
                    "memory-bound lower bound, not DropBlock")

    def make(p, block_size, dtype, dev):
        s = 1.0 / (1.0 - p) if p < 1.0 else 1.0
        return lambda x: x * s
    return Impl("floor", "floor: x * s", None, make, "memory-bound lower bound, not DropBlock")


def raise_recompile_limit(limit: int) -> None:
    """Lets dynamo keep at least `limit` compiled variants of one function (the config was
    renamed from cache_size_limit to recompile_limit)."""
    import torch._dynamo.config as dynamo_config
    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    if hasattr(dynamo_config, name):
        setattr(dynamo_config, name, max(getattr(dynamo_config, name), limit))


class _CompiledReference:
    """torch.compile of the corrected article reference, compiled in the untimed first calls.

    Default (torch.compile's default, ``dynamic=None``): one compiled function for the whole run;
    dynamo recompiles for a new dtype, block size or requires_grad, and from the second shape on
    compiles dynamic-shape kernels (slower kernels, far less compile time). ``static=True``: a
    static-shape compile for every configuration (faster kernels; a minute or two more of
    compiling on a small CPU when the inductor cache is cold).
    """

    def __init__(self, static: bool = False):
        self.static = static
        self.fn = None

    def make(self, p, block_size, dtype, device):
        if self.fn is None:
            raise_recompile_limit(256)
            self.fn = torch.compile(drop_block2d_reference, dynamic=False if self.static else None)
        fn = self.fn
        return lambda x: fn(x, p, block_size)


def build_impls(device: torch.device, include_compiled: bool = True,
                compile_static: bool = False) -> Tuple[List[Impl], List[str]]:
    """The implementations available here, and notes on those skipped."""
    impls: List[Impl] = [_floor_impl(device)]
    skipped: List[str] = []
    try:
        import dropblock_cuda
    except Exception as exc:  # pragma: no cover - the package under test
        raise RuntimeError(f"dropblock_cuda does not import: {exc}") from exc

    impls.append(Impl("ours", "dropblock_cuda", False,
                      lambda p, b, dt, dev: (lambda x: dropblock_cuda.drop_block2d(x, p, b))))
    impls.append(Impl("ours_shared", "dropblock_cuda shared_channels", True,
                      lambda p, b, dt, dev: (lambda x: dropblock_cuda.drop_block2d(x, p, b, shared_channels=True))))
    impls.append(Impl("article", "article module, corrected (eager)", False,
                      lambda p, b, dt, dev: (lambda x: drop_block2d_reference(x, p, b)),
                      "benchmarks/reference_dropblock.py"))
    if include_compiled:
        if hasattr(torch, "compile"):
            compiled = _CompiledReference(static=compile_static)
            label = "article corrected, torch.compile" + (" (static)" if compile_static else "")
            note = ("static shapes, compiled per configuration" if compile_static else
                    "torch.compile defaults: dynamic shapes after the second shape") + ", outside timing"
            impls.append(Impl("article_compiled", label, False, compiled.make, note, compiled=True))
        else:
            skipped.append("article_compiled: torch.compile not available")
    else:
        skipped.append("article_compiled: disabled (--no-compile)")

    try:
        import torchvision.ops
        impls.append(Impl("torchvision", "torchvision.ops.drop_block2d", False,
                          lambda p, b, dt, dev: (lambda x: torchvision.ops.drop_block2d(x, p, b)),
                          "odd block sizes only"))
    except Exception as exc:
        skipped.append(f"torchvision: not available ({exc.__class__.__name__}: {exc})")

    try:
        from timm.layers import DropBlock2d as TimmDropBlock2d

        def timm_make(couple):
            def make(p, b, dt, dev):
                module = TimmDropBlock2d(drop_prob=p, block_size=b, couple_channels=couple).train()
                return module
            return make
        try:
            TimmDropBlock2d(drop_prob=0.1, block_size=3, couple_channels=False)
            impls.append(Impl("timm", "timm DropBlock2d(couple_channels=False)", False, timm_make(False),
                              "seeds on the whole map, max-pool padding", lenient_upper=True))
            impls.append(Impl("timm_shared", "timm DropBlock2d (default, couple_channels=True)", True,
                              timm_make(True), "timm's default shares the mask across channels",
                              lenient_upper=True))
        except TypeError:
            skipped.append("timm: this timm version has no couple_channels argument")
    except Exception as exc:
        skipped.append(f"timm: not available ({exc.__class__.__name__}: {exc})")

    try:
        from dropblock import DropBlock2D as PkgDropBlock2D
        impls.append(Impl("dropblock_pkg", "dropblock pkg DropBlock2D", True,
                          lambda p, b, dt, dev: PkgDropBlock2D(drop_prob=p, block_size=b).train(),
                          "shares the mask across channels; mask drawn on the CPU; gamma = p/block^2",
                          lenient_upper=True))
    except Exception as exc:
        skipped.append(f"dropblock (pip package): not available ({exc.__class__.__name__}: {exc})")
    return impls, skipped


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(call: Callable[[torch.Tensor], None], inputs: Sequence[torch.Tensor], device: torch.device,
                warmup: int, repeats: int, max_time_s: float, min_repeats: int = 3) -> List[float]:
    """Milliseconds of each of up to `repeats` calls, cycling through `inputs`."""
    n = len(inputs)
    for i in range(warmup):
        call(inputs[i % n])
    _sync(device)
    times: List[float] = []
    if device.type == "cuda":
        pairs = []
        for i in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call(inputs[(warmup + i) % n])
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in pairs]
    begin = time.perf_counter()
    for i in range(repeats):
        t0 = time.perf_counter()
        call(inputs[(warmup + i) % n])
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= min_repeats and time.perf_counter() - begin > max_time_s:
            break
    return times


def saved_bytes_for_backward(fn: Callable, x: torch.Tensor) -> int:
    """Bytes the autograd graph of ``fn(x)`` keeps for backward: the storages of the tensors saved
    for backward, each counted once, not counting the input's own storage."""
    xg = x.detach().requires_grad_(True)
    input_ptr = xg.untyped_storage().data_ptr()
    seen: Dict[Tuple[str, int], int] = {}

    def pack(t):
        try:
            storage = t.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
        except Exception:  # e.g. a tensor subclass without storage
            ptr, nbytes = id(t), t.numel() * t.element_size()
        if ptr != input_ptr or nbytes == 0:
            seen[(str(t.device), ptr)] = nbytes
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(xg)
    del y
    return sum(seen.values())


def gpu_held_bytes(fn: Callable, x: torch.Tensor) -> Tuple[int, int]:
    """(bytes allocated and still held after the forward, not counting the output; peak bytes of a
    forward + backward above the starting allocation). CUDA only."""
    device = x.device
    xg = x.detach().requires_grad_(True)
    g = torch.ones_like(x)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    y = fn(xg)
    torch.cuda.synchronize(device)
    held = torch.cuda.memory_allocated(device) - before
    if y.untyped_storage().data_ptr() != xg.untyped_storage().data_ptr():
        held -= y.untyped_storage().nbytes()
    y.backward(g)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del y, xg
    return held, peak


def _make_inputs(shape, dtype, device, seed) -> List[torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype=dtype, device=device)
    nbytes = x.numel() * x.element_size()
    copies = max(1, min(MAX_COPIES, math.ceil(ROTATION_BYTES / max(nbytes, 1))))
    return [x] + [x.clone() for _ in range(copies - 1)]


def _fmt_shape(shape) -> str:
    return "x".join(str(s) for s in shape)


def measure_config(impls: Sequence[Impl], shape, dtype: torch.dtype, block_size: int, p: float,
                   device: torch.device, repeats: int, warmup: int, max_time_s: float, seed: int = 0,
                   section: str = "sweep", modes: Optional[Dict[str, Sequence[str]]] = None,
                   progress: Optional[Callable[[str], None]] = None) -> List[dict]:
    """Gate, time and measure every implementation on one (shape, dtype, block size).

    ``modes`` optionally maps an impl key to the subset of ("fwd", "fwdbwd") to time.
    """
    inputs = _make_inputs(shape, dtype, device, seed)
    x0 = inputs[0]
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype=dtype, device=device)
    numel = x0.numel()
    rows = []
    for impl in impls:
        if progress:
            progress(f"{_fmt_shape(shape)} {str(dtype).replace('torch.', '')} b{block_size} {impl.key}")
        want = tuple(modes.get(impl.key, ())) if modes is not None else ("fwd", "fwdbwd")
        row = {
            "section": section, "device": device.type, "shape": _fmt_shape(shape), "batch": shape[0],
            "dtype": str(dtype).replace("torch.", ""), "block_size": block_size, "p": p,
            "impl": impl.key, "label": impl.label, "masks": impl.masks, "status": "ok", "reason": "",
            "warning": "", "drop_frac": float("nan"), "scale": float("nan"),
            "fwd_ms": float("nan"), "fwdbwd_ms": float("nan"), "fwd_min_ms": float("nan"),
            "fwdbwd_min_ms": float("nan"), "fwd_repeats": 0, "fwdbwd_repeats": 0,
            "saved_bytes_per_elem": float("nan"), "gpu_held_bytes_per_elem": float("nan"),
            "gpu_peak_bytes_per_elem": float("nan"), "compile_s": float("nan"), "note": impl.note,
        }
        rows.append(row)
        if not want:
            row["status"] = "skipped"
            row["reason"] = "not part of this measurement"
            continue
        try:
            fn = impl.make(p, block_size, dtype, device)
            t0 = time.perf_counter()
            y = fn(x0)
            _sync(device)
            first_call_s = time.perf_counter() - t0
        except Exception as exc:
            row["status"] = "SKIPPED" if impl.compiled else "FAILED"
            row["reason"] = f"{'compile' if impl.compiled else 'call'} failed: {exc.__class__.__name__}: {exc}"[:300]
            continue
        if impl.shared is not None:
            gate = check_dropblock_output(x0, y, p, block_size, shared_channels=impl.shared,
                                          lenient_upper=impl.lenient_upper)
            row["drop_frac"], row["scale"], row["warning"] = gate.drop_frac, gate.scale, gate.warning
            if not gate.ok:
                row["status"] = "FAILED"
                row["reason"] = gate.reason
                continue
        del y

        def fwd(x, fn=fn):
            return fn(x)

        def fwdbwd(x, fn=fn):
            xg = x.detach().requires_grad_(True)
            fn(xg).backward(grad)

        try:
            if impl.compiled:  # compile the training graph too, outside the timing
                t0 = time.perf_counter()
                fwdbwd(x0)
                _sync(device)
                row["compile_s"] = first_call_s + time.perf_counter() - t0
            for mode, call in (("fwd", fwd), ("fwdbwd", fwdbwd)):
                if mode in want:
                    times = _time_calls(call, inputs, device, warmup, repeats, max_time_s)
                    row[f"{mode}_ms"], row[f"{mode}_min_ms"] = statistics.median(times), min(times)
                    row[f"{mode}_repeats"] = len(times)
        except Exception as exc:
            row["status"] = "SKIPPED" if impl.compiled else "ERROR"
            row["reason"] = f"{exc.__class__.__name__}: {exc}"[:300]
            continue
        try:
            row["saved_bytes_per_elem"] = saved_bytes_for_backward(fn, x0) / numel
        except Exception as exc:
            _warn(row, f"saved-bytes: {exc.__class__.__name__}")
        if device.type == "cuda":
            try:
                held, peak = gpu_held_bytes(fn, x0)
                row["gpu_held_bytes_per_elem"] = held / numel
                row["gpu_peak_bytes_per_elem"] = peak / numel
            except Exception as exc:
                _warn(row, f"gpu-mem: {exc.__class__.__name__}")
    _add_ratios(rows)
    del inputs, grad
    return rows


def _warn(row: dict, text: str) -> None:
    row["warning"] = f"{row['warning']}; {text}" if row["warning"] else text


def _add_ratios(rows: List[dict]) -> None:
    """ratio_* = impl time / comparable dropblock_cuda time (> 1: ours is faster); vs_floor = impl
    time / floor time. Per-channel impls compare with 'ours', shared ones with 'ours_shared'."""
    by_key = {r["impl"]: r for r in rows}
    floor = by_key.get("floor")
    for r in rows:
        base = None
        if r["masks"] == "per-ch":
            base = by_key.get("ours")
        elif r["masks"] == "shared":
            base = by_key.get("ours_shared")
        r["compared_with"] = base["impl"] if base else ""
        for mode in ("fwd", "fwdbwd"):
            t = r[f"{mode}_ms"]
            b = base[f"{mode}_ms"] if base else float("nan")
            f = floor[f"{mode}_ms"] if floor else float("nan")
            r[f"{mode}_vs_ours"] = t / b if b and b == b and t == t else float("nan")
            r[f"{mode}_vs_floor"] = t / f if f and f == f and t == t else float("nan")


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------

def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10, cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except Exception:
        return "unknown"


def _version(module_name: str) -> str:
    try:
        import importlib.metadata as md
        return md.version(module_name)
    except Exception:
        return "not installed"


def environment(device: torch.device, threads: int) -> dict:
    return {
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "timm": _version("timm"),
        "dropblock": _version("dropblock"),
        "dropblock_cuda": _version("dropblock_cuda"),
        "python": platform.python_version(),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "git_commit": git_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

CSV_FIELDS = ["section", "device", "shape", "batch", "dtype", "block_size", "p", "impl", "label", "masks",
              "status", "reason", "warning", "drop_frac", "scale", "fwd_ms", "fwd_min_ms", "fwd_repeats",
              "fwd_vs_ours", "fwd_vs_floor", "fwdbwd_ms", "fwdbwd_min_ms", "fwdbwd_repeats", "fwdbwd_vs_ours",
              "fwdbwd_vs_floor", "compared_with", "saved_bytes_per_elem", "gpu_held_bytes_per_elem",
              "gpu_peak_bytes_per_elem", "compile_s", "note"]


def _num(v, fmt="{:.2f}") -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return fmt.format(v)


def _row_cells(r: dict) -> List[str]:
    status = r["status"]
    if status != "ok":
        note = f"{status}: {r['reason']}"
    else:
        note = r["warning"]
    return [r["label"], r["masks"], _num(r["fwd_ms"], "{:.3f}"), _num(r["fwd_vs_ours"]), _num(r["fwd_vs_floor"]),
            _num(r["fwdbwd_ms"], "{:.3f}"), _num(r["fwdbwd_vs_ours"]), _num(r["fwdbwd_vs_floor"]),
            _num(r["saved_bytes_per_elem"], "{:.3g}"), _num(r["drop_frac"], "{:.3f}"), note]


TABLE_HEAD = ["implementation", "masks", "fwd ms", "fwd/ours", "fwd/floor", "f+b ms", "f+b/ours",
              "f+b/floor", "saved B/el", "drop", "note"]


def format_table(rows: List[dict]) -> str:
    """Terminal table, one block per configuration."""
    out = []
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault((r["section"], r["shape"], r["dtype"], r["block_size"], r["p"]), []).append(r)
    for (section, shape, dtype, block, p), group in groups.items():
        cells = [_row_cells(r) for r in group]
        widths = [max(len(TABLE_HEAD[i]), *(len(c[i]) for c in cells)) for i in range(len(TABLE_HEAD) - 1)]
        title = f"[{section}] {shape} {dtype} block {block} p={p:g}"
        out.append(title)
        line = "  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(TABLE_HEAD, widths)))
        out.append(line + "  note")
        for c in cells:
            out.append("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths)))
                       + ("  " + c[-1] if c[-1] else ""))
        out.append("")
    return "\n".join(out)


def format_headline(headline: dict) -> str:
    if not headline:
        return ""
    lines = [f"Headline ({_fmt_shape(headline['shape'])} {headline['dtype']}, p={headline['p']}, "
             f"block {headline['block_size']}, {headline['threads']} threads, {headline['device']}):"]
    for name, value in headline["ratios"].items():
        op, target = HEADLINE_TARGETS.get(name, (None, None))
        verdict = ""
        if op is not None and value == value:
            met = value <= target if op == "<=" else value >= target
            verdict = f"  (target {op} {target:g}: {'met' if met else 'NOT met'})"
        lines.append(f"  {name:34s} {_num(value)}   (of min times: {_num(headline['ratios_of_min_times'][name])})"
                     f"{verdict}")
    for k, v in headline["times_ms"].items():
        lines.append(f"  {k:34s} {_num(v, '{:.3f}')} ms")
    return "\n".join(lines)


def write_csv(rows: List[dict], path: str) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow(r)


def _json_clean(obj):
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, dict):
        return {k: _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    return obj


def write_json(result: dict, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(_json_clean(result), fh, indent=1)


def _geomean(values) -> float:
    values = [v for v in values if v is not None and v == v and v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def _summary_note(group: List[dict]) -> str:
    notes = []
    bad = [r for r in group if r["status"] != "ok"]
    if bad:
        notes.append(f"{bad[0]['status']} x{len(bad)}: {bad[0]['reason']}")
    heavy = [r for r in group if r["status"] == "ok" and "drops" in r["warning"]]
    if heavy:
        worst = max(heavy, key=lambda r: r["drop_frac"])
        notes.append(f"drops more than p in {len(heavy)} configs (up to {worst['drop_frac']:.2f} at "
                     f"{worst['shape']} block {worst['block_size']}, p={worst['p']:g})")
    return "; ".join(notes)


def summarize(rows: List[dict]) -> List[dict]:
    """Per (dtype, implementation) of the sweep: geometric-mean ratio to ours of forward and of
    forward + backward, median saved bytes per element, and how many configurations passed."""
    out = []
    keys = []
    for r in rows:
        if r["section"] == "sweep" and r["impl"] not in ("ours", "ours_shared", "floor"):
            if (r["dtype"], r["impl"]) not in keys:
                keys.append((r["dtype"], r["impl"]))
    for dtype, impl in keys:
        group = [r for r in rows if r["section"] == "sweep" and r["dtype"] == dtype and r["impl"] == impl]
        ok = [r for r in group if r["status"] == "ok"]
        saved = [r["saved_bytes_per_elem"] for r in ok if r["saved_bytes_per_elem"] == r["saved_bytes_per_elem"]]
        out.append({"dtype": dtype, "impl": impl, "label": group[0]["label"], "masks": group[0]["masks"],
                    "fwd": _geomean(r["fwd_vs_ours"] for r in ok), "fwdbwd": _geomean(r["fwdbwd_vs_ours"] for r in ok),
                    "saved": statistics.median(saved) if saved else float("nan"), "ok": len(ok),
                    "total": len(group), "note": _summary_note(group)})
    return out


def write_markdown(result: dict, path: str) -> None:
    env = result["environment"]
    lines = [f"Measured on {env['device_name']} ({env['device']}, {env['threads']} threads), torch {env['torch']}, "
             f"commit {env['git_commit']}. Times are medians in ms; `/ours` is the time over dropblock_cuda's "
             "(per-channel rows vs its default mode, shared rows vs `shared_channels=True`; > 1 means "
             "dropblock_cuda is faster); `/floor` is over the floor "
             f"({'a device-to-device copy' if env['device'] == 'cuda' else '`x * s`'}); saved B/el = bytes kept "
             "for backward per input element.", ""]
    headline = result.get("headline")
    if headline:
        lines.append(f"**Headline** ({_fmt_shape(headline['shape'])} {headline['dtype']}, p={headline['p']}, "
                     f"block {headline['block_size']}, {headline['threads']} threads):")
        lines.append("")
        lines.append("| ratio | of median times | of min times | target |")
        lines.append("|---|---:|---:|---|")
        for name, value in headline["ratios"].items():
            op, target = HEADLINE_TARGETS.get(name, ("", ""))
            lines.append(f"| {name} | {_num(value)} | {_num(headline['ratios_of_min_times'][name])} | {op} {target} |")
        lines.append("")
    summary = summarize(result["rows"])
    if summary:
        lines.append("**Summary**: speedup of dropblock_cuda over each implementation (its time / ours, "
                     "geometric mean over the shapes and block sizes of the sweep; like with like):")
        lines.append("")
        lines.append("| dtype | implementation | masks | forward | forward + backward | saved B/el | passed | note |")
        lines.append("|---|---|---|---:|---:|---:|---:|---|")
        for s in summary:
            lines.append(f"| {s['dtype']} | {s['label']} | {s['masks']} | {_num(s['fwd'])} | {_num(s['fwdbwd'])} "
                         f"| {_num(s['saved'], '{:.3g}')} | {s['ok']}/{s['total']} | {s['note'].replace('|', '/')} |")
        lines.append("")
        lines.append("**All measurements:**")
        lines.append("")
    head = ["shape", "dtype", "block"] + TABLE_HEAD
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" if i < 5 or i == len(head) - 1 else "---:" for i in range(len(head))) + "|")
    for r in result["rows"]:
        if r["section"] != "sweep":
            continue
        cells = [r["shape"], r["dtype"], str(r["block_size"])] + _row_cells(r)
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    if result.get("skipped"):
        lines.append("")
        lines.extend(f"- skipped: {s}" for s in result["skipped"])
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def write_plot(rows: List[dict], path: str, env: Optional[dict] = None) -> bool:
    """Speedup of dropblock_cuda over each implementation per shape (geometric mean over block sizes),
    one panel per (dtype, forward / forward+backward). Returns False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return False
    sweep = [r for r in rows if r["section"] == "sweep" and r["status"] == "ok"
             and r["impl"] not in ("ours", "ours_shared", "floor")]
    dtypes = sorted({r["dtype"] for r in sweep}) or ["float32"]
    shapes = []
    for r in rows:
        if r["section"] == "sweep" and r["shape"] not in shapes:
            shapes.append(r["shape"])
    impls = []
    for r in sweep:
        if r["impl"] not in [i for i, _ in impls]:
            impls.append((r["impl"], f"{r['label']} [{r['masks']}]"))
    modes = (("fwd", "forward"), ("fwdbwd", "forward + backward"))
    fig, axes = plt.subplots(len(dtypes), 2, figsize=(13, 4.2 * len(dtypes)), squeeze=False)
    width = 0.8 / max(len(impls), 1)
    for di, dtype in enumerate(dtypes):
        for mi, (mode, mode_name) in enumerate(modes):
            ax = axes[di][mi]
            for ii, (key, label) in enumerate(impls):
                values = []
                for shape in shapes:
                    ratios = [r[f"{mode}_vs_ours"] for r in sweep
                              if r["impl"] == key and r["dtype"] == dtype and r["shape"] == shape
                              and r[f"{mode}_vs_ours"] == r[f"{mode}_vs_ours"] and r[f"{mode}_vs_ours"] > 0]
                    values.append(math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan"))
                xs = [s + (ii - (len(impls) - 1) / 2) * width for s in range(len(shapes))]
                ax.bar(xs, values, width=width, label=label)
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_yscale("log")
            ax.set_xticks(range(len(shapes)))
            ax.set_xticklabels(shapes, fontsize=8)
            ax.set_ylabel("speedup of dropblock_cuda (x)")
            ax.set_title(f"{dtype}, {mode_name}", fontsize=10)
            ax.grid(axis="y", which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8)
    title = "dropblock_cuda speedup over other DropBlock implementations (geomean over block sizes)"
    if env:
        title += f"\n{env.get('device_name', '')}, torch {env.get('torch', '')}, {env.get('threads', '')} threads"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

@dataclass
class Config:
    device: str = "cpu"
    dtypes: Sequence[str] = DEFAULT_DTYPES
    shapes: Sequence[Tuple[int, ...]] = RESNET50_STAGES  # (C, H, W) or (N, C, H, W)
    block_sizes: Sequence[int] = DEFAULT_BLOCK_SIZES
    batch: Optional[int] = None  # default: 2 on CPU, 32 on CUDA
    p: float = 0.1
    repeats: Optional[int] = None
    warmup: int = 1
    max_time_s: float = 0.6  # per (implementation, mode), CPU; at least 3 repeats are kept
    threads: Optional[int] = None
    out: str = DEFAULT_OUT
    headline: bool = True
    headline_repeats: Optional[int] = None
    compile: bool = True
    compile_static: bool = False
    progress: bool = True
    quiet: bool = False
    seed: int = 0
    only: Optional[Sequence[str]] = None  # restrict to these impl keys (floor/ours always kept)


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.bar = None
        self.enabled = enabled
        self.count = 0
        self.total = total
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit="impl", dynamic_ncols=True, file=sys.stderr)
            except Exception:
                self.bar = None

    def __call__(self, desc: str) -> None:
        self.count += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description(desc)
            self.bar.update(1)
        else:
            print(f"[{self.count}/{self.total}] {desc}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _retime_interleaved(impls: Sequence[Impl], rows_by_impl: Dict[str, dict], modes: Dict[str, Sequence[str]],
                        shape, dtype: torch.dtype, device: torch.device, seed: int, rounds: int) -> None:
    """Times every (implementation, mode) of the headline in rounds, all of them in turn in every
    round, and overwrites the rows' medians and minima: on a shared CPU the slow spells then hit
    every implementation alike, which keeps the ratios honest."""
    inputs = _make_inputs(shape, dtype, device, seed)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype=dtype, device=device)
    calls = {}
    for impl in impls:
        row = rows_by_impl.get(impl.key)
        if row is None or row["status"] != "ok":
            continue
        fn = impl.make(HEADLINE["p"], HEADLINE["block_size"], dtype, device)
        for mode in modes.get(impl.key, ()):
            if mode == "fwd":
                calls[(impl.key, mode)] = lambda x, fn=fn: fn(x)
            else:
                calls[(impl.key, mode)] = lambda x, fn=fn: fn(x.detach().requires_grad_(True)).backward(grad)
    times = {key: [] for key in calls}
    for r in range(rounds + 1):  # the first round warms up
        for key, call in calls.items():
            # Back to back within a round, as a timing loop would run them: the first call of
            # each turn pays for the caches the previous implementation left cold, and is dropped.
            for i in range(3):
                x = inputs[(3 * r + i) % len(inputs)]
                t0 = time.perf_counter()
                call(x)
                if r >= 1 and i >= 1:
                    times[key].append((time.perf_counter() - t0) * 1e3)
    for (impl_key, mode), ms in times.items():
        row = rows_by_impl[impl_key]
        row[f"{mode}_ms"] = statistics.median(ms)
        row[f"{mode}_min_ms"] = min(ms)
        row[f"{mode}_repeats"] = len(ms)


def run_headline(impls: Sequence[Impl], device: torch.device, repeats: int, warmup: int, max_time_s: float,
                 seed: int, progress=None) -> Tuple[dict, List[dict]]:
    """Issue 2's measurement: forward of ours (per-channel and shared) vs the floor, forward+backward of
    ours vs torchvision and the corrected article module."""
    shape, dtype = HEADLINE["shape"], DTYPES[HEADLINE["dtype"]]
    modes = {"floor": ("fwd",), "ours": ("fwd", "fwdbwd"), "ours_shared": ("fwd",),
             "torchvision": ("fwdbwd",), "article": ("fwdbwd",)}
    chosen = [i for i in impls if i.key in modes]
    # The ratios are the point of this measurement: more warm-up and repeats than the sweep.
    rows = measure_config(chosen, shape, dtype, HEADLINE["block_size"], HEADLINE["p"], device,
                          max(repeats, 9), max(warmup, 3), max(max_time_s, 1.5), seed, section="headline", modes=modes,
                          progress=progress)
    by = {r["impl"]: r for r in rows}
    if device.type == "cpu":
        _retime_interleaved(chosen, by, modes, shape, dtype, device, seed, rounds=max(repeats, 11))

    def t(key, mode, stat="ms"):
        r = by.get(key)
        return r[f"{mode}_{stat}"] if r and r["status"] == "ok" else float("nan")

    def ratios_of(stat):
        return {
            "per_channel_fwd_over_floor": t("ours", "fwd", stat) / t("floor", "fwd", stat),
            "shared_fwd_over_floor": t("ours_shared", "fwd", stat) / t("floor", "fwd", stat),
            "torchvision_fwdbwd_over_ours": t("torchvision", "fwdbwd", stat) / t("ours", "fwdbwd", stat),
            "article_fwdbwd_over_ours": t("article", "fwdbwd", stat) / t("ours", "fwdbwd", stat),
        }

    ratios = ratios_of("ms")
    # The same ratios from the fastest run of each: less sensitive to a loaded machine.
    ratios_min = ratios_of("min_ms")
    times = {
        "floor fwd": t("floor", "fwd"), "ours fwd": t("ours", "fwd"), "ours shared fwd": t("ours_shared", "fwd"),
        "ours fwd+bwd": t("ours", "fwdbwd"), "torchvision fwd+bwd": t("torchvision", "fwdbwd"),
        "article corrected fwd+bwd": t("article", "fwdbwd"),
    }
    failed = {r["impl"]: f"{r['status']}: {r['reason']}" for r in rows if r["status"] not in ("ok",)}
    headline = {"shape": list(shape), "dtype": HEADLINE["dtype"], "p": HEADLINE["p"],
                "block_size": HEADLINE["block_size"], "threads": torch.get_num_threads(), "device": device.type,
                "ratios": ratios, "ratios_of_min_times": ratios_min, "times_ms": times,
                "targets": {k: list(v) for k, v in HEADLINE_TARGETS.items()}, "not_ok": failed}
    return headline, rows


def run_benchmark(cfg: Config) -> dict:
    """Run the benchmark described by ``cfg``, write CSV / JSON / Markdown / PNG into ``cfg.out``
    and return everything measured (``rows``, ``headline``, ``environment``, ``files``)."""
    wall0 = time.perf_counter()
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    threads = cfg.threads if cfg.threads is not None else 2
    if device.type == "cpu" or cfg.threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    batch = cfg.batch if cfg.batch is not None else (32 if device.type == "cuda" else 2)
    repeats = cfg.repeats if cfg.repeats is not None else (50 if device.type == "cuda" else 7)
    headline_repeats = cfg.headline_repeats if cfg.headline_repeats is not None else max(3, min(repeats, 7))
    max_time_s = cfg.max_time_s if device.type == "cpu" else float("inf")

    impls, skipped = build_impls(device, include_compiled=cfg.compile, compile_static=cfg.compile_static)
    if cfg.only:
        keep = set(cfg.only) | {"floor", "ours", "ours_shared"}
        impls = [i for i in impls if i.key in keep]
    shapes = [tuple(s) if len(s) == 4 else (batch,) + tuple(s) for s in cfg.shapes]
    configs = [(dt, b, s) for dt in cfg.dtypes for b in cfg.block_sizes for s in shapes]
    total = len(configs) * len(impls) + (5 if cfg.headline else 0)
    progress = _Progress(total, cfg.progress and not cfg.quiet)

    rows: List[dict] = []
    headline = {}
    try:
        if cfg.headline:
            headline, hrows = run_headline(impls, device, headline_repeats, cfg.warmup, max_time_s, cfg.seed,
                                           progress)
            rows.extend(hrows)
        for dt, b, s in configs:
            rows.extend(measure_config(impls, s, DTYPES[dt], b, cfg.p, device, repeats, cfg.warmup,
                                       max_time_s, cfg.seed, progress=progress))
    finally:
        progress.close()

    env = environment(device, threads)
    env["wall_s"] = round(time.perf_counter() - wall0, 2)
    result = {"environment": env, "config": _json_clean(asdict(cfg)), "batch": batch, "repeats": repeats,
              "impls": [{"key": i.key, "label": i.label, "masks": i.masks, "note": i.note} for i in impls],
              "skipped": skipped, "headline": headline, "summary": summarize(rows), "rows": rows}
    os.makedirs(cfg.out, exist_ok=True)
    files = {"csv": os.path.join(cfg.out, "results.csv"), "json": os.path.join(cfg.out, "results.json"),
             "markdown": os.path.join(cfg.out, "results.md"), "png": os.path.join(cfg.out, "speedup.png")}
    write_csv(rows, files["csv"])
    write_markdown(result, files["markdown"])
    if not write_plot(rows, files["png"], env):
        skipped.append("plot: matplotlib not installed")
        files.pop("png")
    result["files"] = files
    env["wall_s"] = round(time.perf_counter() - wall0, 2)
    write_json(result, files["json"])
    if not cfg.quiet:
        print(format_table(rows))
        summary = summarize(rows)
        if summary:
            print("Summary: speedup of dropblock_cuda (impl time / ours, geomean over the sweep)")
            for item in summary:
                print(f"  {item['dtype']:9s} {item['label'] + ' [' + item['masks'] + ']':58s} "
                      f"fwd {_num(item['fwd']):>7s}x  fwd+bwd {_num(item['fwdbwd']):>7s}x  "
                      f"saved {_num(item['saved'], '{:.3g}'):>6s} B/el  ok {item['ok']}/{item['total']}"
                      + (f"  {item['note']}" if item["note"] else ""))
        if headline:
            print(format_headline(headline))
        for s in skipped:
            print(f"skipped: {s}")
        print(f"device: {env['device_name']}; torch {env['torch']}; threads {threads}; commit {env['git_commit']}")
        print(f"wrote {', '.join(files.values())}  (wall {env['wall_s']:.1f} s)")
    return result


def _parse_shapes(text: str) -> List[Tuple[int, ...]]:
    shapes = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item.lower() in ("resnet50", "resnet"):
            shapes.extend(RESNET50_STAGES)
            continue
        dims = tuple(int(d) for d in item.lower().split("x"))
        if len(dims) not in (3, 4):
            raise argparse.ArgumentTypeError(f"shape {item!r}: expected CxHxW or NxCxHxW")
        shapes.append(dims)
    return shapes


def _parse_ints(text: str) -> List[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _parse_dtypes(text: str) -> List[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    for n in names:
        if n not in DTYPES:
            raise argparse.ArgumentTypeError(f"dtype {n!r}: expected one of {', '.join(DTYPES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="one shape (256x56x56), float32, block 7, few repeats, plus the headline")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    ap.add_argument("--dtype", type=_parse_dtypes, default=None,
                    help="comma-separated dtypes (default float32,bfloat16)")
    ap.add_argument("--shapes", type=_parse_shapes, default=None,
                    help="comma-separated CxHxW or NxCxHxW (default: ResNet-50 stages)")
    ap.add_argument("--block-sizes", type=_parse_ints, default=None, help="comma-separated (default 3,5,7)")
    ap.add_argument("--batch", type=int, default=None, help="batch for CxHxW shapes (default 2 CPU, 32 CUDA)")
    ap.add_argument("--p", type=float, default=0.1, help="drop probability (default 0.1)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 7 CPU, 50 CUDA)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1)")
    ap.add_argument("--max-time", type=float, default=0.6,
                    help="CPU: stop repeating one measurement after this many seconds (min 3 repeats)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU default 2)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default benchmarks/results)")
    ap.add_argument("--no-headline", action="store_true", help="skip the issue-2 headline measurement")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile implementation")
    ap.add_argument("--compile-static", action="store_true",
                    help="torch.compile with static shapes, once per configuration (more compile time)")
    ap.add_argument("--only", default=None, help="comma-separated implementation keys to keep")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def config_from_args(argv: Optional[Sequence[str]] = None) -> Config:
    args = build_parser().parse_args(argv)
    cfg = Config(device=args.device, p=args.p, warmup=args.warmup, max_time_s=args.max_time,
                 threads=args.threads, out=args.out, headline=not args.no_headline, compile=not args.no_compile,
                 compile_static=args.compile_static,
                 progress=not args.no_progress, seed=args.seed, batch=args.batch, repeats=args.repeats,
                 only=[v.strip() for v in args.only.split(",")] if args.only else None)
    if args.quick:
        cfg.shapes, cfg.dtypes, cfg.block_sizes = [RESNET50_STAGES[0]], ["float32"], [7]
        cfg.repeats = args.repeats if args.repeats is not None else 3
        cfg.headline_repeats = cfg.repeats
        cfg.max_time_s = min(cfg.max_time_s, 0.3)
    if args.dtype is not None:
        cfg.dtypes = args.dtype
    if args.shapes is not None:
        cfg.shapes = args.shapes
    if args.block_sizes is not None:
        cfg.block_sizes = args.block_sizes
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    run_benchmark(config_from_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
