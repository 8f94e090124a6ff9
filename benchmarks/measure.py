"""The measurements every benchmark of this folder makes: time, memory and their summaries.

- ``time_calls``: warm-up calls, then samples of one or more calls each; CUDA events on a CUDA
  device (the device time, the host never waits between samples), the host clock elsewhere.
- ``interleaved_rounds``: several calls timed side by side, each once per round, so that the slow
  spells of a shared machine hit all of them alike and their ratios stay honest.
- ``saved_bytes_for_backward`` (saved-tensor hooks), ``held_and_peak_bytes`` and ``peak_bytes``
  (the CUDA allocator's counters).
- ``geomean``, ``quantile``, ``median``: the one definition of each used in every report.

Every timing function takes ``call(i)``, ``i`` the running index of the call, so that a caller
can rotate its inputs (``inputs[i % len(inputs)]``) and keep the working set larger than a cache.
"""

import fractions
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

Call = Callable[[int], object]


def sync(device) -> None:
    """Waits for the device's queued work (a no-op on the CPU): a host clock read after it is honest."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """How ``time_calls`` times one call.

    ``warmup`` untimed calls first (caches, lazy initialisation, autotuning); then up to
    ``repeats`` samples of ``calls`` calls each, every sample reported in milliseconds per call.
    On the host clock a measurement stops early after ``max_time_s`` seconds once ``min_repeats``
    samples are in (a slow implementation on a small CPU); CUDA events are read only at the end,
    so a CUDA measurement always takes every sample.
    """

    repeats: int
    warmup: int = 1
    calls: int = 1
    max_time_s: float = math.inf
    min_repeats: int = 3


def time_calls(call: Call, timing: Timing, device="cpu") -> List[float]:
    """Milliseconds per call of each sample of ``call``, timed as ``timing`` says."""
    device = torch.device(device)
    index = 0
    for _ in range(timing.warmup):
        call(index)
        index += 1
    sync(device)
    if device.type == "cuda":
        events = []
        for _ in range(timing.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(timing.calls):
                call(index)
                index += 1
            end.record()
            events.append((start, end))
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) / timing.calls for start, end in events]
    samples: List[float] = []
    begin = time.perf_counter()
    for _ in range(timing.repeats):
        t0 = time.perf_counter()
        for _ in range(timing.calls):
            call(index)
            index += 1
        samples.append((time.perf_counter() - t0) * 1e3 / timing.calls)
        if len(samples) >= timing.min_repeats and time.perf_counter() - begin > timing.max_time_s:
            break
    return samples


def interleaved_rounds(
    calls: Mapping[Hashable, Call],
    rounds: int,
    device="cpu",
    *,
    warmup_rounds: int = 0,
    calls_per_turn: int = 1,
    dropped_per_turn: int = 0,
    rotate: bool = True,
    on_round: Optional[Callable[[int], None]] = None,
) -> Dict[Hashable, List[float]]:
    """Milliseconds of every call of every key, timed in rounds: each round gives every key a turn
    of ``calls_per_turn`` back-to-back calls, and keeps all but the first ``dropped_per_turn`` of
    them (the first call of a turn pays for the caches the previous key left cold). With
    ``rotate`` the order shifts by one from round to round, so that no key always follows the same
    one. ``warmup_rounds`` untimed rounds come first. Call ``i`` of a key's turn in round ``r``
    (warm-up rounds counted) is ``call(r * calls_per_turn + i)``; ``on_round(r)`` after every
    timed round. Host clock, with the device synchronised around each call."""
    keys = list(calls)
    times: Dict[Hashable, List[float]] = {key: [] for key in keys}
    for r in range(warmup_rounds + rounds):
        shift = (r - warmup_rounds) % len(keys) if rotate and keys and r >= warmup_rounds else 0
        for key in keys[shift:] + keys[:shift]:
            for i in range(calls_per_turn):
                sync(device)
                t0 = time.perf_counter()
                calls[key](r * calls_per_turn + i)
                sync(device)
                if r >= warmup_rounds and i >= dropped_per_turn:
                    times[key].append((time.perf_counter() - t0) * 1e3)
        if on_round is not None and r >= warmup_rounds:
            on_round(r - warmup_rounds)
    return times


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


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


def held_and_peak_bytes(fn: Callable, x: torch.Tensor) -> Tuple[int, int]:
    """(bytes allocated and still held after the forward ``fn(x)``, not counting the output; peak
    bytes of a forward + backward above the starting allocation). CUDA only."""
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


def peak_bytes(call: Callable[[], object], device) -> int:
    """Peak CUDA memory of one ``call()`` above what was allocated before it
    (``torch.cuda.max_memory_allocated``)."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    call()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


def _is_number(v) -> bool:
    return v is not None and v == v


def geomean(values: Iterable[Optional[float]]) -> float:
    """Geometric mean of the positive numbers among ``values`` (None, NaN and <= 0 left out); NaN if none."""
    kept = [v for v in values if _is_number(v) and v > 0]
    return math.exp(sum(map(math.log, kept)) / len(kept)) if kept else float("nan")


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values``, linear between the order statistics; NaN if empty."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median_confidence_interval(values: Sequence[float], confidence: float = 0.95) -> Tuple[float, float]:
    """A distribution-free interval that holds the median of the distribution ``values`` were
    drawn from with probability at least ``confidence``: the order statistics x_(j) and
    x_(n+1-j), j the largest rank with P(Binomial(n, 1/2) < j) <= (1 - confidence) / 2 (the
    sign-test interval; it assumes independent draws, nothing about their distribution). (-inf,
    inf) when n is too small for any such j (fewer than 6 values at 95%)."""
    ordered = sorted(values)
    n = len(ordered)
    # In integers, exactly (2^-n underflows past a thousand rounds): ways = 2^n P(Binomial < j + 1).
    tail = fractions.Fraction((1.0 - confidence) / 2.0).limit_denominator(10**9)
    j, ways, term = 0, 0, 1  # term = C(n, j)
    while n and j < n // 2:
        ways += term
        if ways * tail.denominator > tail.numerator * 2**n:
            break
        term = term * (n - j) // (j + 1)
        j += 1
    if j == 0:
        return float("-inf"), float("inf")
    return ordered[j - 1], ordered[n - j]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(numerator: Optional[float], denominator: Optional[float]) -> float:
    """numerator / denominator, NaN when either is missing or NaN or the denominator is 0."""
    if not (_is_number(numerator) and _is_number(denominator)) or not denominator:
        return float("nan")
    return numerator / denominator
