"""Side-by-side benchmark of dropblock_cuda against other DropBlock implementations.

Run ``python -m benchmarks`` (or ``python benchmarks/benchmark.py``); ``--help`` lists the flags.

Every implementation is first checked on the tensor it is timed on (``gate.check_dropblock_output``):
an implementation whose output is not a valid DropBlock output is reported as FAILED and not
timed. Ratios compare like with like: implementations with one mask per (sample, channel) are
compared with ``dropblock_cuda``'s per-channel mode, implementations that share one mask across
the channels of a sample with its ``shared_channels=True`` mode.

This module is the sweep, the headline and the command; the pieces are modules of their own:
``peers`` (the implementations), ``gate`` (the correctness check), ``measure`` (timing and
memory), ``report`` (this benchmark's tables, summary and plot), ``environment``,
``reporting`` (the writers every benchmark shares) and ``cli`` (the shared flags).
"""

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

if __package__ in (None, ""):  # python benchmarks/benchmark.py: import this folder as the package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[0]))))
    __package__ = "benchmarks"

from . import cli, measure, reporting  # noqa: E402
from .gate import check_dropblock_output  # noqa: E402
from .measure import Timing  # noqa: E402
from .peers import Impl, build_impls, mask_op_impl  # noqa: E402
from .report import (
    CSV_FIELDS,
    HEADLINE_TARGETS,
    fmt_shape,
    format_headline,
    format_summary,  # noqa: E402
    format_table,
    summarize,
    write_markdown,
    write_plot,
)

RESNET50_STAGES = ((256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7))
DEFAULT_BLOCK_SIZES = (3, 5, 7)
DEFAULT_DTYPES = ("float32", "bfloat16")
DEFAULT_OUT = reporting.DEFAULT_OUT
# The headline: one ResNet stage-1-like tensor at the paper's settings, where the targets
# (report.HEADLINE_TARGETS) are the ratios this project promises (README): our forward against
# the memory-bound floor, in both mask modes, and torchvision's forward+backward against ours.
HEADLINE = {"shape": (32, 64, 56, 56), "dtype": "float32", "p": 0.1, "block_size": 7, "threads": 2}
ROTATION_BYTES = 100 * 2**20  # inputs are cycled through so that their total exceeds this (L2 and more)
MAX_COPIES = 32

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One configuration: what every implementation is gated and timed on."""

    shape: Tuple[int, ...]  # (N, C, H, W)
    dtype: torch.dtype
    block_size: int
    p: float
    seed: int = 0  # of the inputs and the gradient


def _make_inputs(shape, dtype, device, seed) -> List[torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype=dtype, device=device)
    nbytes = x.numel() * x.element_size()
    copies = max(1, min(MAX_COPIES, math.ceil(ROTATION_BYTES / max(nbytes, 1))))
    return [x] + [x.clone() for _ in range(copies - 1)]


def _make_grad(shape, dtype, device, seed) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype=dtype, device=device)


def measure_config(
    impls: Sequence[Impl],
    case: Case,
    device: torch.device,
    timing: Timing,
    *,
    section: str = "sweep",
    modes: Optional[Dict[str, Sequence[str]]] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> List[dict]:
    """Gate, time and measure every implementation on one case.

    ``modes`` optionally maps an impl key to the subset of ("fwd", "fwdbwd") to time.
    """
    shape, dtype, block_size, p = case.shape, case.dtype, case.block_size, case.p
    inputs = _make_inputs(shape, dtype, device, case.seed)
    x0 = inputs[0]
    grad = _make_grad(shape, dtype, device, case.seed)
    numel = x0.numel()
    rows = []
    for impl in impls:
        if progress:
            progress(f"{fmt_shape(shape)} {str(dtype).replace('torch.', '')} b{block_size} {impl.key}")
        want = tuple(modes.get(impl.key, ())) if modes is not None else ("fwd", "fwdbwd")
        row = {
            "section": section,
            "device": device.type,
            "shape": fmt_shape(shape),
            "batch": shape[0],
            "dtype": str(dtype).replace("torch.", ""),
            "block_size": block_size,
            "p": p,
            "impl": impl.key,
            "label": impl.label,
            "masks": impl.masks,
            "status": "ok",
            "reason": "",
            "warning": "",
            "drop_frac": float("nan"),
            "scale": float("nan"),
            "fwd_ms": float("nan"),
            "fwdbwd_ms": float("nan"),
            "fwd_min_ms": float("nan"),
            "fwdbwd_min_ms": float("nan"),
            "fwd_repeats": 0,
            "fwdbwd_repeats": 0,
            "saved_bytes_per_elem": float("nan"),
            "gpu_held_bytes_per_elem": float("nan"),
            "gpu_peak_bytes_per_elem": float("nan"),
            "compile_s": float("nan"),
            "note": impl.note,
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
            measure.sync(device)
            first_call_s = time.perf_counter() - t0
        except Exception as exc:
            row["status"] = "SKIPPED" if impl.compiled else "FAILED"
            row["reason"] = f"{'compile' if impl.compiled else 'call'} failed: {exc.__class__.__name__}: {exc}"[:300]
            continue
        if impl.shared is not None:
            gate = check_dropblock_output(
                x0, y, p, block_size, shared_channels=impl.shared, lenient_upper=impl.lenient_upper
            )
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
                measure.sync(device)
                row["compile_s"] = first_call_s + time.perf_counter() - t0
            for mode, call in (("fwd", fwd), ("fwdbwd", fwdbwd)):
                if mode in want:
                    times = measure.time_calls(lambda i, call=call: call(inputs[i % len(inputs)]), timing, device)
                    row[f"{mode}_ms"], row[f"{mode}_min_ms"] = statistics.median(times), min(times)
                    row[f"{mode}_repeats"] = len(times)
        except Exception as exc:
            row["status"] = "SKIPPED" if impl.compiled else "ERROR"
            row["reason"] = f"{exc.__class__.__name__}: {exc}"[:300]
            continue
        try:
            row["saved_bytes_per_elem"] = measure.saved_bytes_for_backward(fn, x0) / numel
        except Exception as exc:
            _warn(row, f"saved-bytes: {exc.__class__.__name__}")
        if device.type == "cuda":
            try:
                held, peak = measure.held_and_peak_bytes(fn, x0)
                row["gpu_held_bytes_per_elem"] = held / numel
                row["gpu_peak_bytes_per_elem"] = peak / numel
            except Exception as exc:
                _warn(row, f"gpu-mem: {exc.__class__.__name__}")
    _add_ratios(rows)
    inputs = grad = None  # free them (the closures above are done with them)
    return rows


def _warn(row: dict, text: str) -> None:
    row["warning"] = f"{row['warning']}; {text}" if row["warning"] else text


def _retime_config_interleaved(
    impls: Sequence[Impl], rows: List[dict], case: Case, device: torch.device, rounds: int
) -> None:
    """A sweep configuration's times again, every (implementation, mode) in turn in every round, as
    the headline's (the compiled one keeps its own: a new compiled function would compile again).
    Timed one after the other, a slow spell of a shared CPU lands on one implementation and flips
    the like-with-like ratios of a row; interleaved, it hits all of them alike."""
    by = {r["impl"]: r for r in rows}
    modes = {i.key: ("fwd", "fwdbwd") for i in impls if not i.compiled}
    _retime_interleaved([i for i in impls if not i.compiled], by, modes, case, device, rounds=rounds)
    _add_ratios(rows)


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
            r[f"{mode}_vs_ours"] = measure.ratio(r[f"{mode}_ms"], base[f"{mode}_ms"] if base else None)
            r[f"{mode}_vs_floor"] = measure.ratio(r[f"{mode}_ms"], floor[f"{mode}_ms"] if floor else None)


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


def _retime_interleaved(
    impls: Sequence[Impl],
    rows_by_impl: Dict[str, dict],
    modes: Dict[str, Sequence[str]],
    case: Case,
    device: torch.device,
    rounds: int,
) -> None:
    """Times every (implementation, mode) of `modes` in rounds, all of them in turn in every
    round, and overwrites the rows' medians and minima: on a shared CPU the slow spells then hit
    every implementation alike, which keeps the ratios honest."""
    inputs = _make_inputs(case.shape, case.dtype, device, case.seed)
    grad = _make_grad(case.shape, case.dtype, device, case.seed)
    calls = {}
    for impl in impls:
        row = rows_by_impl.get(impl.key)
        if row is None or row["status"] != "ok":
            continue
        fn = impl.make(case.p, case.block_size, case.dtype, device)
        for mode in modes.get(impl.key, ()):
            if mode == "fwd":
                calls[(impl.key, mode)] = lambda i, fn=fn: fn(inputs[i % len(inputs)])
            else:
                calls[(impl.key, mode)] = lambda i, fn=fn: fn(
                    inputs[i % len(inputs)].detach().requires_grad_(True)
                ).backward(grad)
    # Three calls back to back within a turn, as a timing loop would run them: the first call of
    # each turn pays for the caches the previous implementation left cold, and is dropped.
    times = measure.interleaved_rounds(
        calls, rounds, device, warmup_rounds=1, calls_per_turn=3, dropped_per_turn=1, rotate=False
    )
    for (impl_key, mode), ms in times.items():
        row = rows_by_impl[impl_key]
        row[f"{mode}_ms"] = statistics.median(ms)
        row[f"{mode}_min_ms"] = min(ms)
        row[f"{mode}_repeats"] = len(ms)


def run_headline(
    impls: Sequence[Impl],
    device: torch.device,
    *,
    repeats: int,
    warmup: int,
    max_time_s: float,
    seed: int,
    progress=None,
) -> Tuple[dict, List[dict]]:
    """The headline measurement (``HEADLINE``, ``HEADLINE_TARGETS``): forward of ours (per-channel
    and shared) vs the floor, forward+backward of ours vs torchvision and the corrected article
    module. ``repeats``, ``warmup`` and ``max_time_s`` are the sweep's: the headline takes more."""
    case = Case(tuple(HEADLINE["shape"]), DTYPES[HEADLINE["dtype"]], HEADLINE["block_size"], HEADLINE["p"], seed)
    modes = {
        "floor": ("fwd",),
        "ours": ("fwd", "fwdbwd"),
        "ours_shared": ("fwd",),
        "torchvision": ("fwdbwd",),
        "article": ("fwdbwd",),
        "ours_mask": ("fwd",),
    }
    chosen = [i for i in impls if i.key in modes] + [mask_op_impl()]
    # The ratios are the point of this measurement: more warm-up and repeats than the sweep.
    timing = Timing(repeats=max(repeats, 9), warmup=max(warmup, 3), max_time_s=max(max_time_s, 1.5))
    rows = measure_config(chosen, case, device, timing, section="headline", modes=modes, progress=progress)
    by = {r["impl"]: r for r in rows}
    if device.type == "cpu":
        _retime_interleaved(chosen, by, modes, case, device, rounds=max(repeats, 11))
    shape = case.shape

    def t(key, mode, stat="ms"):
        r = by.get(key)
        return r[f"{mode}_{stat}"] if r and r["status"] == "ok" else float("nan")

    def ratios_of(stat):
        return {
            "per_channel_fwd_over_floor": t("ours", "fwd", stat) / t("floor", "fwd", stat),
            "shared_fwd_over_floor": t("ours_shared", "fwd", stat) / t("floor", "fwd", stat),
            "torchvision_fwdbwd_over_ours": t("torchvision", "fwdbwd", stat) / t("ours", "fwdbwd", stat),
            "article_fwdbwd_over_ours": t("article", "fwdbwd", stat) / t("ours", "fwdbwd", stat),
            "mask_op_over_floor": t("ours_mask", "fwd", stat) / t("floor", "fwd", stat),
        }

    ratios = ratios_of("ms")
    # The same ratios from the fastest run of each: less sensitive to a loaded machine.
    ratios_min = ratios_of("min_ms")
    times = {
        "floor fwd": t("floor", "fwd"),
        "ours fwd": t("ours", "fwd"),
        "ours shared fwd": t("ours_shared", "fwd"),
        "ours fwd+bwd": t("ours", "fwdbwd"),
        "torchvision fwd+bwd": t("torchvision", "fwdbwd"),
        "article corrected fwd+bwd": t("article", "fwdbwd"),
        "ours mask op alone": t("ours_mask", "fwd"),
    }
    failed = {r["impl"]: f"{r['status']}: {r['reason']}" for r in rows if r["status"] not in ("ok",)}
    headline = {
        "shape": list(shape),
        "dtype": HEADLINE["dtype"],
        "p": HEADLINE["p"],
        "block_size": HEADLINE["block_size"],
        "threads": torch.get_num_threads(),
        "device": device.type,
        "ratios": ratios,
        "ratios_of_min_times": ratios_min,
        "times_ms": times,
        "targets": {k: list(v) for k, v in HEADLINE_TARGETS.items()},
        "not_ok": failed,
    }
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
    progress = reporting.Progress(total, cfg.progress and not cfg.quiet, unit="impl")

    rows: List[dict] = []
    headline = {}
    try:
        if cfg.headline:
            headline, hrows = run_headline(
                impls,
                device,
                repeats=headline_repeats,
                warmup=cfg.warmup,
                max_time_s=max_time_s,
                seed=cfg.seed,
                progress=progress,
            )
            rows.extend(hrows)
        timing = Timing(repeats=repeats, warmup=cfg.warmup, max_time_s=max_time_s)
        for dt, b, s in configs:
            case = Case(s, DTYPES[dt], b, cfg.p, cfg.seed)
            config_rows = measure_config(impls, case, device, timing, progress=progress)
            if device.type == "cpu":
                _retime_config_interleaved(impls, config_rows, case, device, rounds=repeats)
            rows.extend(config_rows)
    finally:
        progress.close()

    result = {
        **reporting.result_head(cfg, device, threads, wall0),
        "batch": batch,
        "repeats": repeats,
        "impls": [{"key": i.key, "label": i.label, "masks": i.masks, "note": i.note} for i in impls],
        "skipped": skipped,
        "headline": headline,
        "summary": summarize(rows),
        "rows": rows,
    }
    env = result["environment"]
    os.makedirs(cfg.out, exist_ok=True)
    files = {
        "csv": os.path.join(cfg.out, "results.csv"),
        "json": os.path.join(cfg.out, "results.json"),
        "markdown": os.path.join(cfg.out, "results.md"),
        "png": os.path.join(cfg.out, "speedup.png"),
    }
    reporting.write_csv(rows, files["csv"], CSV_FIELDS)
    write_markdown(result, files["markdown"])
    if not write_plot(rows, files["png"], env):
        skipped.append("plot: matplotlib not installed")
        files.pop("png")
    result["files"] = files
    env["wall_s"] = round(time.perf_counter() - wall0, 2)
    reporting.write_json(result, files["json"])
    if not cfg.quiet:
        print(format_table(rows))
        summary = summarize(rows)
        if summary:
            print(format_summary(summary))
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


def _parse_dtypes(text: str) -> List[str]:
    names = cli.names(text)
    for n in names:
        if n not in DTYPES:
            raise argparse.ArgumentTypeError(f"dtype {n!r}: expected one of {', '.join(DTYPES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    cli.add_quick(ap, "one shape (256x56x56), float32, block 7, plus the headline")
    cli.add_device(ap)
    ap.add_argument(
        "--dtype", type=_parse_dtypes, default=None, help="comma-separated dtypes (default float32,bfloat16)"
    )
    ap.add_argument(
        "--shapes",
        type=_parse_shapes,
        default=None,
        help="comma-separated CxHxW or NxCxHxW (default: ResNet-50 stages)",
    )
    ap.add_argument("--block-sizes", type=cli.ints, default=None, help="comma-separated (default 3,5,7)")
    ap.add_argument("--batch", type=int, default=None, help="batch for CxHxW shapes (default 2 CPU, 32 CUDA)")
    ap.add_argument("--p", type=float, default=0.1, help="drop probability (default 0.1)")
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"timed repeats (default 7 CPU, 50 CUDA; {cli.QUICK_REPEATS} with --quick)",
    )
    cli.add_warmup(ap, 1)
    ap.add_argument(
        "--max-time",
        type=float,
        default=None,
        help="CPU: stop repeating one measurement after this many seconds, min 3 repeats (default 0.6, "
        "0.3 with --quick)",
    )
    cli.add_threads(ap)
    cli.add_output(ap)
    ap.add_argument(
        "--no-headline",
        action="store_true",
        help="skip the headline (our forward over the floor, torchvision's forward+backward over ours)",
    )
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile implementation")
    ap.add_argument(
        "--compile-static",
        action="store_true",
        help="torch.compile with static shapes, once per configuration (more compile time)",
    )
    ap.add_argument("--only", type=cli.names, default=None, help="comma-separated implementation keys to keep")
    ap.add_argument("--seed", type=int, default=0, help="of the inputs (default 0)")
    return ap


def config_from_args(argv: Optional[Sequence[str]] = None) -> Config:
    # Without --quick the repeats stay unset: run_benchmark gives the device's default.
    args = cli.resolve_defaults(
        build_parser().parse_args(argv),
        full=dict(repeats=None, max_time=0.6),
        quick=dict(repeats=cli.QUICK_REPEATS, max_time=0.3),
    )
    cfg = cli.config_of(
        Config,
        args,
        "device p warmup threads out compile_static seed batch repeats",
        max_time_s=args.max_time,
        headline=not args.no_headline,
        compile=not args.no_compile,
        only=args.only or None,
    )
    if args.quick:
        cfg.shapes, cfg.dtypes, cfg.block_sizes = [RESNET50_STAGES[0]], ["float32"], [7]
        cfg.headline_repeats = cfg.repeats
    if args.dtype is not None:
        cfg.dtypes = args.dtype
    if args.shapes is not None:
        cfg.shapes = args.shapes
    if args.block_sizes is not None:
        cfg.block_sizes = args.block_sizes
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.main_of(run_benchmark, config_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
