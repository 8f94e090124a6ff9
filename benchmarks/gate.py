"""The correctness gate of the benchmarks: is a tensor a valid DropBlock output of its input?

An implementation is timed only once its output on the very tensor it is timed on passes
``check_dropblock_output``: a fast wrong answer is reported as FAILED, never as a speedup.
"""

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch


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


def drop_fraction_tolerance(shape: Sequence[int], p: float, block_size: Optional[int], shared_channels: bool) -> float:
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


def check_dropblock_output(
    x: torch.Tensor,
    y: torch.Tensor,
    p: float,
    block_size: Optional[int] = None,
    *,
    shared_channels: bool = False,
    lenient_upper: bool = False,
) -> GateResult:
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
            return GateResult(
                False, f"{bad} kept values are not input*s for one s (y/x spans {lo:.6g}..{hi:.6g})", frac, scale
            )
        if scale <= 0:
            return GateResult(False, f"scale {scale:.6g} is not positive", frac, scale)
        expected = 1.0 / (1.0 - frac)
        if abs(scale / expected - 1.0) > 1e-3 + 2.0 * _dtype_eps(x.dtype):
            return GateResult(False, f"scale {scale:.6g} != 1/(1 - drop fraction) = {expected:.6g}", frac, scale)
    tol = drop_fraction_tolerance(tuple(x.shape), p, block_size, shared_channels)
    if frac < p - tol:
        return GateResult(False, f"drop fraction {frac:.4f} < p - tol = {p - tol:.4f}", frac, scale)
    if frac > p + tol:
        if not lenient_upper:
            return GateResult(False, f"drop fraction {frac:.4f} > p + tol = {p + tol:.4f}", frac, scale)
        return GateResult(True, "", frac, scale, warning=f"drops {frac:.3f} (p={p:g})")
    return GateResult(True, "", frac, scale)
