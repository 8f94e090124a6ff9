"""The flags the benchmark commands share: one definition each, so that a flag means one thing in
every command (``python -m benchmarks``, ``benchmarks.gpu_bench``, ``benchmarks.train_step``,
``benchmarks.regularisation``).

``--quick`` is everywhere a smoke run: ``QUICK_REPEATS`` timed repeats (rounds, seeds) and the
smallest set of cases that still runs every code path of the command; it shows that the command
works on a machine, its numbers are not the ones to quote. It changes defaults only: a flag
given explicitly keeps its value (``resolve_defaults``).
"""

import argparse
from typing import Any, Callable, List, Optional, Sequence

from .reporting import DEFAULT_OUT

QUICK_REPEATS = 3


def names(text: str) -> List[str]:
    """A comma-separated list of names, blanks dropped."""
    return [v.strip() for v in text.split(",") if v.strip()]


def ints(text: str) -> List[int]:
    """A comma-separated list of whole numbers."""
    return [int(v) for v in names(text)]


def add_quick(ap: argparse.ArgumentParser, cases: str) -> None:
    """--quick; ``cases``: what this command's smallest set of cases is."""
    ap.add_argument(
        "--quick", action="store_true", help=f"smoke run: {QUICK_REPEATS} repeats and {cases} (numbers not to quote)"
    )


def resolve_defaults(args: argparse.Namespace, full: dict, quick: dict) -> argparse.Namespace:
    """Fills in every flag of ``full`` left unset (None): from ``quick`` under --quick (where it
    has the key), else from ``full``. Returns ``args``."""
    for key, value in full.items():
        if getattr(args, key) is None:
            setattr(args, key, quick.get(key, value) if args.quick else value)
    return args


def add_device(ap: argparse.ArgumentParser, default: str = "cpu", cpu_note: str = "") -> None:
    other = "cuda[:i]" if default == "cpu" else "cpu" + (f" ({cpu_note})" if cpu_note else "")
    ap.add_argument("--device", default=default, help=f"{default} (default) or {other}")


def add_warmup(ap: argparse.ArgumentParser, default: int, what: str = "calls", quick: Optional[int] = None) -> None:
    """--warmup; with ``quick`` the flag is left unset (None) for ``resolve_defaults``."""
    shown = f"default {default}" + (f", {quick} with --quick" if quick is not None else "")
    ap.add_argument(
        "--warmup",
        type=int,
        default=None if quick is not None else default,
        help=f"untimed {what} before each measurement is timed ({shown})",
    )


def add_threads(ap: argparse.ArgumentParser, default: Optional[int] = None, note: str = "CPU default 2") -> None:
    ap.add_argument("--threads", type=int, default=default, help=f"torch threads per process ({note})")


def add_output(ap: argparse.ArgumentParser, progress: bool = True) -> None:
    """--out and, for the commands that draw a progress bar, --no-progress."""
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default benchmarks/results)")
    if progress:
        ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def config_of(config: Callable, args: argparse.Namespace, flags: str, **fields) -> Any:
    """A command's configuration, ``config`` (its Config class) called with each of ``flags``
    (space-separated names) as ``args`` holds it, ``progress`` as --no-progress says, and
    ``fields``: the values that are not a flag's under its own name."""
    values = {name: getattr(args, name) for name in flags.split()}
    return config(**values, progress=not args.no_progress, **fields)


def main_of(run: Callable, config_from_args: Callable, argv: Optional[Sequence[str]] = None) -> int:
    """A benchmark command's ``main``: ``run`` on the configuration ``argv`` gives; status 0."""
    run(config_from_args(argv))
    return 0
