"""The registry of the implementations the main benchmark compares: the floor, dropblock_cuda in
its two mask modes, the seed article's module (corrected; eager and under torch.compile),
torchvision's ``drop_block2d``, timm's ``DropBlock2d`` and the ``dropblock`` pip package.

``build_impls`` returns those importable here, and a note for each one left out. Each ``Impl``
says which of dropblock_cuda's modes it is compared with (``shared``): one mask per (sample,
channel), or one per sample shared by its channels.
"""

import itertools
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch

from .reference_dropblock import drop_block2d_reference


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

        return Impl("floor", "floor: device copy y.copy_(x)", None, make, "memory-bound lower bound, not DropBlock")

    def make(p, block_size, dtype, dev):
        s = 1.0 / (1.0 - p) if p < 1.0 else 1.0
        return lambda x: x * s

    return Impl("floor", "floor: x * s", None, make, "memory-bound lower bound, not DropBlock")


# Keys the mask-op timing cycles through: far more draws than a branch predictor can learn.
MASK_KEYS = 1024


def mask_op_impl() -> Impl:
    """dropblock_cuda's mask op alone: the packed keep mask and the scale of a training forward, with
    no data read or written. A fresh key every call: with a fixed one the CPU's branch predictors
    learn the draws and flatter it. The keys are made before the timing (a cycle of ``MASK_KEYS``
    distinct ones), since making a tensor is not the op's cost: a ``torch.tensor`` per call took
    13 us here with warm caches, and 0.12 ms in the headline's conditions, after the other
    implementations have streamed their data through the caches (2026-12-02, 1 thread, medians of
    300 calls), which was a third of what the timing charged to the mask. Timed in the headline
    only."""
    import dropblock_cuda  # noqa: F401  (registers the op)

    def make(p, block_size, dtype, dev):
        op = torch.ops.dropblock_cuda.drop_block_mask
        probability = torch.tensor(p, dtype=torch.float64, device=dev)
        keys = itertools.cycle([torch.tensor((k * 0x9E3779B97F4A7C15) % 2**63) for k in range(1, MASK_KEYS + 1)])

        def fn(x):
            return op(x, next(keys), probability, [block_size, block_size], 1e-6, False)

        return fn

    return Impl("ours_mask", "dropblock_cuda mask op alone", None, make, "no data touched: the mask's own cost")


def raise_recompile_limit(limit: int) -> None:
    """Lets dynamo keep at least `limit` compiled variants of one function (the config was
    renamed from cache_size_limit to recompile_limit)."""
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    if hasattr(dynamo_config, name):
        setattr(dynamo_config, name, max(getattr(dynamo_config, name), limit))


class CompiledReference:
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


def build_impls(
    device: torch.device, *, include_compiled: bool = True, compile_static: bool = False
) -> Tuple[List[Impl], List[str]]:
    """The implementations available here, and notes on those skipped."""
    impls: List[Impl] = [_floor_impl(device)]
    skipped: List[str] = []
    try:
        import dropblock_cuda
    except Exception as exc:  # pragma: no cover - the package under test
        raise RuntimeError(f"dropblock_cuda does not import: {exc}") from exc

    impls.append(
        Impl("ours", "dropblock_cuda", False, lambda p, b, dt, dev: lambda x: dropblock_cuda.drop_block2d(x, p, b))
    )
    impls.append(
        Impl(
            "ours_shared",
            "dropblock_cuda shared_channels",
            True,
            lambda p, b, dt, dev: lambda x: dropblock_cuda.drop_block2d(x, p, b, shared_channels=True),
        )
    )
    impls.append(
        Impl(
            "article",
            "article module, corrected (eager)",
            False,
            lambda p, b, dt, dev: lambda x: drop_block2d_reference(x, p, b),
            "benchmarks/reference_dropblock.py",
        )
    )
    if include_compiled:
        if hasattr(torch, "compile"):
            compiled = CompiledReference(static=compile_static)
            label = "article corrected, torch.compile" + (" (static)" if compile_static else "")
            note = (
                "static shapes, compiled per configuration"
                if compile_static
                else "torch.compile defaults: dynamic shapes after the second shape"
            ) + ", outside timing"
            impls.append(Impl("article_compiled", label, False, compiled.make, note, compiled=True))
        else:
            skipped.append("article_compiled: torch.compile not available")
    else:
        skipped.append("article_compiled: disabled (--no-compile)")

    try:
        import torchvision.ops

        impls.append(
            Impl(
                "torchvision",
                "torchvision.ops.drop_block2d",
                False,
                lambda p, b, dt, dev: lambda x: torchvision.ops.drop_block2d(x, p, b),
                "odd block sizes only",
            )
        )
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
            impls.append(
                Impl(
                    "timm",
                    "timm DropBlock2d(couple_channels=False)",
                    False,
                    timm_make(False),
                    "seeds on the whole map, max-pool padding",
                    lenient_upper=True,
                )
            )
            impls.append(
                Impl(
                    "timm_shared",
                    "timm DropBlock2d (default, couple_channels=True)",
                    True,
                    timm_make(True),
                    "timm's default shares the mask across channels",
                    lenient_upper=True,
                )
            )
        except TypeError:
            skipped.append("timm: this timm version has no couple_channels argument")
    except Exception as exc:
        skipped.append(f"timm: not available ({exc.__class__.__name__}: {exc})")

    try:
        from dropblock import DropBlock2D as PkgDropBlock2D

        impls.append(
            Impl(
                "dropblock_pkg",
                "dropblock pkg DropBlock2D",
                True,
                lambda p, b, dt, dev: PkgDropBlock2D(drop_prob=p, block_size=b).train(),
                "shares the mask across channels; mask drawn on the CPU; gamma = p/block^2",
                lenient_upper=True,
            )
        )
    except Exception as exc:
        skipped.append(f"dropblock (pip package): not available ({exc.__class__.__name__}: {exc})")
    return impls, skipped
