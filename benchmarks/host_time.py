"""Host time per eager call: what the CPU spends to issue one DropBlock forward, against F.dropout.

On a small map the kernels take less than the Python, the dispatcher and the autograd node around
them, so the host time is the cost of a layer (and on CUDA, whether the host can keep the device
busy). Each case is timed as ``--calls`` back-to-back calls per turn, the turns of all cases
interleaved round after round (``measure.interleaved_rounds``), so that the slow spells of a
shared machine hit every case alike; the table gives the median over rounds of the microseconds
per call and the ratio to ``F.dropout`` on the same input, device and grad mode (the issue's
target: at most 1.5x). Cases: ``F.dropout``, ``nn.Dropout`` (a module's own overhead),
``drop_block2d`` and ``DropBlock2d``, each on an input with and without requires_grad (forward
only: the backward is not timed), in training mode.
"""

import argparse
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

import dropblock_cuda

from . import cli
from .measure import interleaved_rounds, median, quantile, ratio

BASELINE = "F.dropout"


class Row(NamedTuple):
    device: str
    call: str
    grad: bool
    us: float  # median microseconds per call
    spread: float  # (q75 - q25) / median of the per-round values: how noisy the machine was
    vs_dropout: float  # us / the same device's and grad mode's F.dropout


def cases(x: torch.Tensor, p: float, block_size: int) -> Dict[str, object]:
    """The calls timed, each a function of no argument, on ``x`` (one of them per grad mode)."""
    dropout = torch.nn.Dropout(p).train()
    module = dropblock_cuda.DropBlock2d(p, block_size).train()
    return {
        BASELINE: lambda: F.dropout(x, p, True),
        "nn.Dropout": lambda: dropout(x),
        "drop_block2d": lambda: dropblock_cuda.drop_block2d(x, p, block_size),
        "DropBlock2d": lambda: module(x),
    }


def _repeat(call, calls: int) -> None:
    # Each output dropped before the next call, with its autograd graph: the time of a call includes
    # freeing what it made, as in a training step, and no list of live outputs slows Python's GC.
    for _ in range(calls):
        call()


def measure_device(
    device: str, shape: Sequence[int], p: float, block_size: int, rounds: int, calls: int, warmup_rounds: int = 1
) -> List[Row]:
    x = torch.randn(*shape, device=device)
    timed = {}
    for grad in (False, True):
        for name, call in cases(x.clone().requires_grad_(grad), p, block_size).items():
            timed[(name, grad)] = lambda i, call=call: _repeat(call, calls)
    times = interleaved_rounds(timed, rounds, device, warmup_rounds=warmup_rounds)
    us = {key: [t * 1e3 / calls for t in samples] for key, samples in times.items()}
    rows = []
    for (name, grad), samples in us.items():
        mid = median(samples)
        spread = ratio(quantile(samples, 0.75) - quantile(samples, 0.25), mid)
        rows.append(Row(device, name, grad, mid, spread, ratio(mid, median(us[(BASELINE, grad)]))))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    lines = [f"{'device':8} {'call':14} {'grad':5} {'us/call':>9} {'IQR/med':>8} {'x F.dropout':>12}"]
    for r in rows:
        lines.append(f"{r.device:8} {r.call:14} {str(r.grad):5} {r.us:9.2f} {r.spread:8.2f} {r.vs_dropout:12.2f}")
    return "\n".join(lines)


def devices(requested: str) -> List[str]:
    if requested == "all":
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [requested]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.host_time", description=__doc__.split("\n\n")[0])
    cli.add_quick(ap, "20 calls per turn")
    ap.add_argument("--device", default="all", help="all (default: cpu, and cuda if available), cpu or cuda[:i]")
    ap.add_argument("--shape", type=cli.ints, default=[1, 1, 8, 8], help="input shape (default 1,1,8,8)")
    ap.add_argument("--p", type=float, default=0.1, help="drop probability (default 0.1)")
    ap.add_argument("--block-size", type=int, default=3, help="block size (default 3)")
    ap.add_argument(
        "--rounds", type=int, default=None, help=f"interleaved rounds (default 21; {cli.QUICK_REPEATS} with --quick)"
    )
    ap.add_argument("--calls", type=int, default=None, help="calls per turn (default 1000; 20 with --quick)")
    cli.add_threads(ap, note="default: torch's")
    return ap


def config_from_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return cli.resolve_defaults(
        build_parser().parse_args(argv),
        full=dict(rounds=21, calls=1000),
        quick=dict(rounds=cli.QUICK_REPEATS, calls=20),
    )


def run(args: argparse.Namespace) -> List[Row]:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = []
    for device in devices(args.device):
        rows += measure_device(device, args.shape, args.p, args.block_size, args.rounds, args.calls)
    print(
        f"host time per eager training forward, input {tuple(args.shape)} float32, p={args.p}, "
        f"block {args.block_size}, median of {args.rounds} rounds of {args.calls} calls, "
        f"{torch.get_num_threads()} threads"
    )
    print(format_table(rows))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.main_of(run, config_from_args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
