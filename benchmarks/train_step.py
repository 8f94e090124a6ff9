"""What DropBlock costs inside a real model's training step.

Run ``python -m benchmarks.train_step`` (``--help`` lists the flags). For each model it times a
full training step (forward, cross-entropy, backward, ``optimizer.step()``) with no DropBlock,
with dropblock_cuda (per-channel and ``shared_channels=True``), with torchvision's and with
timm's ``DropBlock2d``, eagerly and under ``torch.compile``, and reports each one's overhead over
the step without DropBlock:

- ``timm_resnet18`` / ``timm_resnet50``: ``timm.create_model(arch, drop_block_rate=p)``, timm's
  placement (stages 3 and 4: block 5 at ``gamma_scale=0.25``, then block 3); ours is that model
  passed through ``dropblock_cuda.convert_dropblock`` (per-channel: timm's modules set to
  ``couple_channels=False`` first);
- ``tv_resnet50`` (and ``tv_resnet18``): torchvision's ResNet with a DropBlock after every block
  of stages 3 and 4, as in the paper (p=0.1, block 7); ours is torchvision's ``DropBlock2d``
  converted by ``convert_dropblock`` (shared: ``shared_channels=True`` set afterwards).

Every DropBlock layer is first checked (``gate.check_dropblock_output``) on an input like
the one it gets in the model (same shape, dtype and strides); a variant that fails is reported,
not timed. The steps of
one model are timed side by side in interleaved rounds (each round runs every (variant, mode)
once, in a rotating order), so that a shared machine's slow spells hit them alike; the overhead of
a variant is the median over the rounds of its step time over the no-DropBlock step of the same
round and mode, minus 1. Also measured: the bytes the DropBlock layers keep for backward
(saved-tensor hooks, eager), the extra bytes the whole step keeps over the no-DropBlock one and,
on CUDA, the step's peak memory.

The DropBlock layers' own cost per step: a step overhead is the difference of two steps that take
170-530 ms on the CPU, where the layers are a small part of a step (ours well under 1%) and the
rounds scatter by +-5-8%, so it cannot tell the implementations apart. So for each variant one
training step of its own (eager) model also runs with hooks that copy, at every site, the layer's
input and the gradient that reaches its output (``capture_site_tensors``: the real tensors, with
their dtype and strides). A "layer pass" is then every site's layer, in train mode, run forward
on that input and backward with that gradient (``layer_pass``; fresh masks each call). The
variants' passes are timed side by side in interleaved rounds of their own, as many as
``--layer-seconds`` holds per model (at least ``--layer-min-rounds``): ``layers_ms`` (median per
step, and the interquartile range) and ``layers_pct_of_step`` (of the no-DropBlock eager step).
Eager only: under ``torch.compile`` the peers' elementwise ops fuse into the neighbouring kernels,
which a layer timed alone does not capture, and a layer compiled alone pays a compiled region's
call cost (guards, the autograd wrapper: about 0.1 ms a site on a 2-core CPU at batch 2, about as
much as the layer itself) that the step pays once per block; compiled, only the step numbers
stand. Timed alone, a layer's input is as warm in the caches as the rounds leave it, not as the
step's previous op does.

Ours against each peer (both mask modes, every model), paired by round, as ours / peer - 1
(``paired_comparisons``): eagerly the layer passes decide (met when the 95% confidence interval
of the median over the rounds is below 0, unresolved when only the median is); compiled the steps
do, and a case is met only when the 75th percentile is below 0,
"unresolved" when only the median is, and not met when the median is not below 0 (``peer_outcome``).

``torch.compile``: ``--compile-scope blocks`` (the default) compiles every residual block
(identical blocks share one graph; the stem and head run eagerly), ``model`` the whole model. On
the CPU only ``tv_resnet18`` (the paper's settings) is compiled by default (``--compile-models``):
on this project's 2-core machine a cold Inductor compile of the five variants of one ResNet-18
takes 1-2 minutes (a ResNet-50's more), so compiling every model would take the command far past
its 3 minutes; on CUDA every model is compiled.

CPU defaults: batch 2 of 224x224 images (the paper's 14x14 and 7x7 maps at stages 3 and 4),
float32, 2 threads, 7 rounds. CUDA defaults: batch 128 (halved until a step fits), bfloat16
autocast, channels_last, cudnn.benchmark, 20 rounds. Both: the layer passes of a model timed for
2.5 s, in at least 50 rounds.

Results: ``train_step.{csv,json,md,png}`` in ``benchmarks/results/`` (``--out``).
"""

import argparse
import copy
import math
import os
import statistics
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

if __package__ in (None, ""):  # python benchmarks/train_step.py: import this folder as the package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[0]))))
    __package__ = "benchmarks"

from . import cli, measure, reporting  # noqa: E402
from .gate import check_dropblock_output  # noqa: E402
from .peers import raise_recompile_limit  # noqa: E402
from .reporting import fmt  # noqa: E402

# The paper's settings, used for the torchvision ResNets (timm models keep timm's own).
PAPER_P, PAPER_BLOCK = 0.1, 7

VARIANTS = OrderedDict(
    [
        # key: (label, masks: per-ch / shared / -)
        ("none", ("no DropBlock", "-")),
        ("ours", ("dropblock_cuda", "per-ch")),
        ("ours_shared", ("dropblock_cuda shared_channels", "shared")),
        ("torchvision", ("torchvision.ops.DropBlock2d", "per-ch")),
        ("timm", ("timm DropBlock2d (default)", "shared")),
        ("timm_per_channel", ("timm DropBlock2d(couple_channels=False)", "per-ch")),
    ]
)
DEFAULT_VARIANTS = ("none", "ours", "ours_shared", "torchvision", "timm")
OURS = ("ours", "ours_shared")
MODES = ("eager", "compile")
CSV_FIELDS = [
    "model",
    "variant",
    "label",
    "masks",
    "mode",
    "device",
    "batch",
    "image_size",
    "dtype",
    "memory_format",
    "status",
    "reason",
    "warning",
    "sites",
    "step_ms",
    "step_min_ms",
    "rounds",
    "overhead_pct",
    "overhead_q25_pct",
    "overhead_q75_pct",
    "layers_ms",
    "layers_q25_ms",
    "layers_q75_ms",
    "layers_rounds",
    "layers_pct_of_step",
    "dropblock_saved_bytes",
    "dropblock_saved_bytes_per_elem",
    "step_saved_extra_bytes",
    "peak_bytes",
    "compile_s",
]
TARGETS = {"eager": 5.0, "compile": 2.0}  # % over the no-DropBlock step, ours, paper's settings


# --------------------------------------------------------------------------------------------
# Models and their DropBlock sites
# --------------------------------------------------------------------------------------------


@dataclass
class Site:
    """Where a DropBlock goes (a module path) and its settings; torchvision's peer, which has no
    gamma_scale, gets ``p * gamma_scale`` (the same seed rate)."""

    path: str
    p: float
    block_size: int
    gamma_scale: float = 1.0


@dataclass
class ModelSpec:
    key: str
    description: str
    native: str  # "timm" or "torchvision": whose DropBlock convert_dropblock converts for ours
    build: Callable[[int, float], Tuple[nn.Module, List[Site]]]  # (classes, p) -> (model without DropBlock, sites)
    paper_settings: bool  # p=0.1, block 7 on the stage 3/4 maps


def _timm_model(arch: str):
    def build(classes: int, p: float):
        import timm
        from timm.layers import DropBlock2d as TimmDropBlock2d

        model = timm.create_model(arch, drop_block_rate=p, num_classes=classes)
        sites = [
            Site(name, m.drop_prob, m.block_size, m.gamma_scale)
            for name, m in model.named_modules()
            if type(m) is TimmDropBlock2d
        ]
        for site in sites:
            model.set_submodule(site.path, nn.Identity())
        return model, sites

    return build


def _torchvision_model(arch):
    """A torchvision ResNet (``arch``: a name in torchvision.models, or a callable of the class count)
    with a DropBlock site after every block of stages 3 and 4."""

    def build(classes: int, p: float):
        import torchvision

        make = getattr(torchvision.models, arch) if isinstance(arch, str) else arch
        model = make(weights=None, num_classes=classes) if isinstance(arch, str) else make(classes)
        sites = []
        for stage in ("layer3", "layer4"):
            layer = getattr(model, stage)
            for i, block in enumerate(list(layer)):
                # After the block (its residual sum and ReLU), as the paper places DropBlock.
                layer[i] = nn.Sequential(OrderedDict([("block", block), ("drop_block", nn.Identity())]))
                sites.append(Site(f"{stage}.{i}.drop_block", p, PAPER_BLOCK))
        return model, sites

    return build


MODELS: Dict[str, ModelSpec] = {
    "timm_resnet18": ModelSpec(
        "timm_resnet18",
        "timm resnet18, drop_block_rate=p (stages 3-4: block 5 at gamma_scale 0.25, block 3)",
        "timm",
        _timm_model("resnet18"),
        False,
    ),
    "timm_resnet50": ModelSpec(
        "timm_resnet50",
        "timm resnet50, drop_block_rate=p (stages 3-4: block 5 at gamma_scale 0.25, block 3)",
        "timm",
        _timm_model("resnet50"),
        False,
    ),
    "tv_resnet50": ModelSpec(
        "tv_resnet50",
        "torchvision resnet50, DropBlock(p, 7) after every stage-3/4 block",
        "torchvision",
        _torchvision_model("resnet50"),
        True,
    ),
    "tv_resnet18": ModelSpec(
        "tv_resnet18",
        "torchvision resnet18, DropBlock(p, 7) after every stage-3/4 block",
        "torchvision",
        _torchvision_model("resnet18"),
        True,
    ),
}
DEFAULT_MODELS = ("timm_resnet18", "timm_resnet50", "tv_resnet18", "tv_resnet50")
CPU_COMPILE_MODELS = ("tv_resnet18",)


def _peer_layer(variant: str, site: Site) -> nn.Module:
    if variant == "none":
        return nn.Identity()
    if variant == "torchvision":
        from torchvision.ops import DropBlock2d as TorchvisionDropBlock2d

        return TorchvisionDropBlock2d(site.p * site.gamma_scale, site.block_size)
    if variant in ("timm", "timm_per_channel"):
        from timm.layers import DropBlock2d as TimmDropBlock2d

        return TimmDropBlock2d(
            drop_prob=site.p,
            block_size=site.block_size,
            gamma_scale=site.gamma_scale,
            couple_channels=variant == "timm",
        )
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")


def build_variant(spec: ModelSpec, base: nn.Module, sites: Sequence[Site], variant: str) -> nn.Module:
    """A copy of ``base`` with ``variant``'s DropBlock at every site; ours through convert_dropblock,
    from the model's own (timm's or torchvision's) modules, as a user converts a model."""
    import dropblock_cuda

    model = copy.deepcopy(base)
    if variant in OURS:
        native = spec.native
        if native == "timm":
            native = "timm" if variant == "ours_shared" else "timm_per_channel"
        for site in sites:
            model.set_submodule(site.path, _peer_layer(native, site))
        model = dropblock_cuda.convert_dropblock(model)
        for site in sites:
            layer = model.get_submodule(site.path)
            if not isinstance(layer, dropblock_cuda.DropBlock2d):
                raise RuntimeError(f"convert_dropblock left {site.path} a {type(layer).__name__}")
            layer.shared_channels = variant == "ours_shared"  # torchvision has no shared mode to convert
    else:
        for site in sites:
            model.set_submodule(site.path, _peer_layer(variant, site))
    return model.train()


def _blocks(model: nn.Module) -> List[nn.Module]:
    """The residual blocks of a (timm or torchvision) ResNet, stage by stage; in the torchvision
    models with sites, a block and its DropBlock."""
    return [block for stage in ("layer1", "layer2", "layer3", "layer4") for block in getattr(model, stage)]


def compiled_copy(model: nn.Module, scope: str, backend: str) -> nn.Module:
    model = copy.deepcopy(model)
    if scope == "model":
        return torch.compile(model, backend=backend, dynamic=False)
    raise_recompile_limit(512)  # one forward code per block class, one graph per (shape, variant)
    for block in _blocks(model):
        block.compile(backend=backend, dynamic=False)  # static: no dynamic-shape kernels across stages
    return model


# --------------------------------------------------------------------------------------------
# Steps and measurements
# --------------------------------------------------------------------------------------------


@dataclass
class Setup:
    device: torch.device
    batch: int
    image_size: int
    classes: int
    autocast: Optional[torch.dtype]
    channels_last: bool
    lr: float = 1e-3


def autocast(setup: Setup) -> torch.autocast:
    """The step's autocast context: ``setup.autocast``'s dtype, or off when it is None (float32)."""
    return torch.autocast(setup.device.type, dtype=setup.autocast or torch.bfloat16, enabled=setup.autocast is not None)


def make_step(model: nn.Module, setup: Setup, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One training step of ``model`` on the batch (x, y): forward and loss (under autocast when
    set), backward, SGD with momentum."""
    optimizer = torch.optim.SGD(model.parameters(), lr=setup.lr, momentum=0.9, weight_decay=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(setup):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    return step


def site_inputs(model: nn.Module, sites: Sequence[Site], setup: Setup, x: torch.Tensor):
    """(layer, stand-in input) of every site: a fresh normal tensor like the input the layer gets in
    a training forward (shape, dtype, device, strides). The real activations would not do for the
    check: ReLU zeroes many of them, and timm's in-place ReLU overwrites the layer's output."""
    seen = []
    hooks = [
        model.get_submodule(s.path).register_forward_hook(
            lambda m, args, out: seen.append((m, torch.randn_like(args[0])))
        )
        for s in sites
    ]
    try:
        with torch.no_grad(), autocast(setup):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def gate(variant: str, model: nn.Module, sites: Sequence[Site], setup: Setup, x: torch.Tensor) -> Tuple[str, str]:
    """("", warnings) when every site's layer gives a valid DropBlock output, at the site's rate, on
    an input like its own; (reason, "") for the first that does not."""
    warnings = []
    shared = VARIANTS[variant][1] == "shared"
    for site, (layer, xin) in zip(sites, site_inputs(model, sites, setup, x)):
        with torch.no_grad():
            yout = layer(xin)
        result = check_dropblock_output(
            xin,
            yout,
            site.p * site.gamma_scale,
            site.block_size,
            shared_channels=shared,
            lenient_upper=variant.startswith("timm"),
        )
        if not result.ok:
            return f"{site.path}: {result.reason}", ""
        if result.warning:
            warnings.append(f"{site.path} {result.warning}")
    if warnings:
        return "", f"{len(warnings)} of {len(sites)} layers drop more than p, e.g. {warnings[0]}"
    return "", ""


def dropblock_saved_bytes(model: nn.Module, sites: Sequence[Site], setup: Setup, x: torch.Tensor) -> Tuple[int, int]:
    """(bytes the DropBlock layers keep for backward, elements they take), each layer called on an
    input like its own (saved-tensor hooks; the input's own storage is not counted)."""
    total, numel = 0, 0
    for layer, xin in site_inputs(model, sites, setup, x):
        total += measure.saved_bytes_for_backward(layer, xin)
        numel += xin.numel()
    return total, numel


def step_saved_bytes(model: nn.Module, setup: Setup, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes the whole forward and loss keep for backward (weights included)."""

    def loss(t):
        with autocast(setup):
            return F.cross_entropy(model(t), y)

    return measure.saved_bytes_for_backward(loss, x)


@dataclass
class SiteTensors:
    """One DropBlock site as a training step saw it: its layer, the input the layer got and the
    gradient that reached the layer's output in the backward (detached copies, with the dtype,
    device and strides they had in the step)."""

    layer: nn.Module
    x: torch.Tensor
    grad: torch.Tensor


def capture_site_tensors(model: nn.Module, sites: Sequence[Site], step: Callable[[], None]) -> List[SiteTensors]:
    """Every site's layer, input and output gradient in one call of ``step`` (a training step of
    ``model``): a forward hook copies the layer's input and registers a hook on its output that
    copies the gradient. Unlike ``site_inputs`` these are the real activations, which is what a
    timing wants (the gate's stand-ins exist because ReLU zeroes real ones). Copied at hook time:
    timm's in-place ReLU after a DropBlock overwrites the layer's output later in the same forward
    (a hook registered before it still gets the gradient of the layer's own output, the ReLU's
    mask applied), and the gradient's buffer is autograd's. ``clone`` keeps a dense tensor's
    strides (channels_last stays channels_last)."""
    inputs: Dict[str, torch.Tensor] = {}
    grads: Dict[str, torch.Tensor] = {}

    def keep(path: str):
        def on_forward(layer, args, out):
            inputs[path] = args[0].detach().clone()
            out.register_hook(lambda g: grads.__setitem__(path, g.detach().clone()))

        return on_forward

    handles = [model.get_submodule(s.path).register_forward_hook(keep(s.path)) for s in sites]
    try:
        step()
    finally:
        for h in handles:
            h.remove()
    missing = [s.path for s in sites if s.path not in inputs or s.path not in grads]
    if missing:
        raise RuntimeError(f"the step gave no input or no output gradient at {', '.join(missing)}")
    return [SiteTensors(model.get_submodule(s.path), inputs[s.path], grads[s.path]) for s in sites]


def layer_pass(captured: Sequence[SiteTensors], setup: Setup) -> measure.Call:
    """``call(i)``: every site's layer once as the step runs it, in train mode: the forward on the
    captured input (under the step's autocast), then the backward of the captured gradient. Each
    call draws fresh masks (the layers draw their own). ``torch.autograd.grad`` rather than
    ``backward()``: in the step the input's gradient goes on to the layer before, it is not
    accumulated into a leaf's ``.grad``."""
    leaves = [(c.layer, c.x.detach().requires_grad_(True), c.grad) for c in captured]

    def call(i: int) -> None:
        for layer, x, grad in leaves:
            with autocast(setup):
                y = layer(x)
            torch.autograd.grad(y, x, grad)

    return call


LAYER_TRIAL_ROUNDS = 5  # untimed rounds that warm the layer passes up and size the timed rounds


def time_layer_passes(
    passes: Dict[str, measure.Call], seconds: float, min_rounds: int, device
) -> Dict[str, List[float]]:
    """Milliseconds of every variant's layer pass in interleaved rounds, as the steps are timed: as
    many rounds as ``seconds`` holds (the round's time taken from ``LAYER_TRIAL_ROUNDS`` untimed
    rounds first), at least ``min_rounds``. A pass is a small fraction of a step, so a model's
    passes get far more rounds than its steps."""
    if not passes:
        return {}
    trial = measure.interleaved_rounds(passes, LAYER_TRIAL_ROUNDS, device)
    round_ms = sum(statistics.median(ms) for ms in trial.values())
    rounds = max(min_rounds, int(seconds * 1e3 / max(round_ms, 1e-6)))
    return measure.interleaved_rounds(passes, rounds, device)


def paired_ratios(times: Sequence[float], base: Sequence[float]) -> List[float]:
    """(time / base time of the same round - 1) in %, round by round."""
    return [100.0 * (t / b - 1.0) for t, b in zip(times, base)]


def ratio_stats(ratios: Sequence[float]) -> Tuple[float, float, float]:
    """Median, 25th and 75th percentile of per-round ratios."""
    return statistics.median(ratios), measure.quantile(ratios, 0.25), measure.quantile(ratios, 0.75)


def overhead_stats(times: Sequence[float], base: Sequence[float]) -> Tuple[float, float, float]:
    """``ratio_stats`` of ``paired_ratios``, in %: a variant's overhead over the no-DropBlock step."""
    return ratio_stats(paired_ratios(times, base))


def _inputs(setup: Setup, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(setup.batch, 3, setup.image_size, setup.image_size, generator=gen)
    y = torch.randint(0, setup.classes, (setup.batch,), generator=gen)
    x = x.to(setup.device)
    if setup.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(setup.device)


def _to_device(model: nn.Module, setup: Setup) -> nn.Module:
    model = model.to(setup.device)
    return model.to(memory_format=torch.channels_last) if setup.channels_last else model


def model_modes(cfg: "Config", key: str) -> List[str]:
    return [m for m in cfg.modes if m == "eager" or cfg.compile_models is None or key in cfg.compile_models]


def measure_model(spec: ModelSpec, cfg: "Config", setup: Setup, progress) -> Tuple[List[dict], List[dict]]:
    """Builds, checks and measures every (variant, mode) of one model: one row each, and the
    comparisons of ours with each peer (``paired_comparisons``)."""
    modes = model_modes(cfg, spec.key)
    torch.manual_seed(cfg.seed)
    base, sites = spec.build(setup.classes, cfg.p)
    x, y = _inputs(setup, cfg.seed)
    rows: Dict[Tuple[str, str], dict] = {}
    steps: Dict[Tuple[str, str], Callable[[], None]] = {}
    models: Dict[str, nn.Module] = {}
    common = {
        "model": spec.key,
        "device": setup.device.type,
        "batch": setup.batch,
        "image_size": setup.image_size,
        "dtype": str(setup.autocast or torch.float32).replace("torch.", ""),
        "memory_format": "channels_last" if setup.channels_last else "contiguous",
        "sites": len(sites),
    }
    for variant in cfg.variants:
        label, masks = VARIANTS[variant]
        for mode in modes:
            rows[(variant, mode)] = dict(
                common, variant=variant, label=label, masks=masks, mode=mode, status="ok", reason="", warning=""
            )
        progress(f"{spec.key} build {variant}")
        try:
            model = _to_device(build_variant(spec, base, sites, variant), setup)
            reason, warning = gate(variant, model, sites, setup, x) if variant != "none" else ("", "")
        except Exception as exc:
            reason, warning = f"build failed: {exc.__class__.__name__}: {exc}"[:300], ""
        if reason:
            for mode in modes:
                rows[(variant, mode)].update(status="FAILED", reason=reason)
            continue
        models[variant] = model
        for mode in modes:
            row = rows[(variant, mode)]
            row["warning"] = warning
            try:
                net = model if mode == "eager" else compiled_copy(model, cfg.compile_scope, cfg.compile_backend)
                step = make_step(net, setup, x, y)
                t0 = time.perf_counter()
                for _ in range(cfg.warmup):  # the first compiles (forward and backward) or warms up
                    step()
                measure.sync(setup.device)
                if mode == "compile":
                    row["compile_s"] = time.perf_counter() - t0
                steps[(variant, mode)] = step
            except Exception as exc:
                row.update(status="ERROR", reason=f"{exc.__class__.__name__}: {exc}"[:300])
            progress(f"{spec.key} {mode} {variant} ready")
    # Each round runs every step once, the order rotated by one from round to round.
    times = measure.interleaved_rounds(
        {key: (lambda i, step=step: step()) for key, step in steps.items()},
        cfg.rounds,
        setup.device,
        on_round=lambda r: progress(f"{spec.key} round {r + 1}/{cfg.rounds}"),
    )
    for (variant, mode), ms in times.items():
        row = rows[(variant, mode)]
        row.update(step_ms=statistics.median(ms), step_min_ms=min(ms), rounds=len(ms))
        base_ms = times.get(("none", mode))
        if base_ms is not None:
            row["overhead_pct"], row["overhead_q25_pct"], row["overhead_q75_pct"] = overhead_stats(ms, base_ms)
        if setup.device.type == "cuda":
            row["peak_bytes"] = measure.peak_bytes(steps[(variant, mode)], setup.device)
    layer_ms = measure_layers(cfg, setup, models, steps, sites, (x, y), rows)
    progress(f"{spec.key} DropBlock layers timed")
    base_step = times.get(("none", "eager"))
    for variant, ms in layer_ms.items():
        median_ms = statistics.median(ms)
        layers = {
            "layers_ms": median_ms,
            "layers_q25_ms": measure.quantile(ms, 0.25),
            "layers_q75_ms": measure.quantile(ms, 0.75),
            "layers_rounds": len(ms),
            "layers_pct_of_step": 100.0 * median_ms / statistics.median(base_step) if base_step else float("nan"),
        }
        for mode in modes:
            rows[(variant, mode)].update(layers)
    base_saved = None
    for variant, model in models.items():  # eager only: compiled graphs save what their partition chose
        saved, numel = dropblock_saved_bytes(model, sites, setup, x) if variant != "none" else (0, 0)
        total = step_saved_bytes(model, setup, x, y)
        base_saved = total if variant == "none" else base_saved
        for mode in modes:
            row = rows[(variant, mode)]
            row["dropblock_saved_bytes"] = saved
            row["dropblock_saved_bytes_per_elem"] = saved / numel if numel else 0.0
            row["step_saved_extra_bytes"] = total - base_saved if base_saved is not None else float("nan")
    del steps, models
    return list(rows.values()), paired_comparisons(spec.key, times, layer_ms)


def measure_layers(
    cfg: "Config",
    setup: Setup,
    models: Dict[str, nn.Module],
    steps: Dict[Tuple[str, str], Callable[[], None]],
    sites: Sequence[Site],
    batch: Tuple[torch.Tensor, torch.Tensor],
    rows: Dict[Tuple[str, str], dict],
) -> Dict[str, List[float]]:
    """Milliseconds of each variant's layer pass (``layer_pass``) in ``time_layer_passes``' rounds,
    on the tensors one training step of that variant's own eager model gave its sites: the timed
    eager step once more, or, where none was timed (``--modes compile``), a step of its own after
    a first one (timm zero-initialises each block's last BN scale, which zeroes the gradient at
    its DropBlocks until a step has moved it). A variant whose capture fails keeps its step rows;
    the failure goes into their warning."""
    passes = {}
    for variant, model in models.items():
        if variant == "none":
            continue
        try:
            step = steps.get((variant, "eager"))
            if step is None:
                step = make_step(model, setup, *batch)
                step()
            passes[variant] = layer_pass(capture_site_tensors(model, sites, step), setup)
        except Exception as exc:
            failure = f"layer cost not measured: {exc.__class__.__name__}: {exc}"[:300]
            for row in rows.values():
                if row["variant"] == variant:
                    row["warning"] = "; ".join(w for w in (row["warning"], failure) if w)
    return time_layer_passes(passes, cfg.layer_seconds, cfg.layer_min_rounds, setup.device)


def paired_comparisons(
    model: str, step_ms: Dict[Tuple[str, str], List[float]], layer_ms: Dict[str, List[float]]
) -> List[dict]:
    """Ours (each mask mode) against each peer of one model, paired by round: the median, 25th
    and 75th percentile of (ours / peer - 1) in %, and the median's 95% confidence interval
    (``measure.median_confidence_interval``), over the rounds of the layer passes (``timed``
    "layers", eager) and of the steps of each mode (``timed`` "step"). Negative: ours cheaper."""
    comparisons = []
    for ours in OURS:
        for peer in VARIANTS:
            if peer in OURS or peer == "none":
                continue
            pairs = [("layers", "eager", layer_ms.get(ours), layer_ms.get(peer))]
            pairs += [("step", mode, step_ms.get((ours, mode)), step_ms.get((peer, mode))) for mode in MODES]
            for timed, mode, mine, theirs in pairs:
                if mine is None or theirs is None:
                    continue
                ratios = paired_ratios(mine, theirs)
                pct, q25, q75 = ratio_stats(ratios)
                ci_lo, ci_hi = measure.median_confidence_interval(ratios)
                comparisons.append(
                    dict(
                        model=model,
                        mode=mode,
                        timed=timed,
                        ours=ours,
                        peer=peer,
                        pct=pct,
                        q25_pct=q25,
                        q75_pct=q75,
                        ci_lo_pct=ci_lo,
                        ci_hi_pct=ci_hi,
                        rounds=len(mine),
                    )
                )
    return comparisons


# --------------------------------------------------------------------------------------------
# Targets and output
# --------------------------------------------------------------------------------------------


# The peer targets, judged on ``paired_comparisons``: eager on the layers' own cost, compiled on
# the step (under torch.compile the peers fuse into their neighbours' kernels, which a layer
# timed alone does not capture).
PEER_TARGETS = {
    "eager": "ours' DropBlock layers cost less than each peer's (eager, every model, both mask modes): "
    "per round, ours' layer pass / the peer's - 1; MET when its median's 95% confidence interval is below 0, "
    "unresolved when only its median is",
    "compile": "the compiled step with ours costs less than with each peer (both mask modes): per round, the step "
    "with ours / the step with the peer - 1; MET when its 75th percentile is below 0, unresolved when only its "
    "median is",
}


def peer_outcome(comparison: dict) -> str:
    """The outcome of one comparison of ``paired_comparisons``: "met", "unresolved" or "not met".
    The layer passes (eager) are timed in many rounds (at least ``--layer-min-rounds``), each a
    small fraction of a step: met when the whole 95% confidence interval of the median of ours /
    peer - 1 is below 0, unresolved when only the median is. A compiled step is timed in a
    handful of rounds (too few for a useful interval: at 7 it is the range), and its noise dwarfs
    DropBlock's share of it: met only when the 75th percentile is below 0 (ours cheaper in three
    rounds of four), unresolved when the median is below 0 but the 75th percentile is not. A
    median at or above 0 is "not met" in both, however wide the range: noise never turns ours
    being slower into "unresolved"."""
    if not comparison["pct"] < 0:
        return "not met"
    bound = comparison["q75_pct"] if comparison["timed"] == "step" else comparison["ci_hi_pct"]
    return "met" if bound < 0 else "unresolved"


def verdict_status(verdict: dict) -> str:
    """A target's word: "not measured", "NOT MET" (any case failed), "UNRESOLVED" (none failed,
    some unresolved) or "MET" (every case met)."""
    if not verdict["measured"]:
        return "not measured"
    if verdict["failed_cases"]:
        return "NOT MET"
    return "UNRESOLVED" if verdict["unresolved_cases"] else "MET"


def _finite(r: dict, key: str) -> bool:
    v = r.get(key)
    return isinstance(v, (int, float)) and math.isfinite(v)


# What the overhead targets (``TARGETS``) are judged on, per mode, and how a verdict names it: the
# eager step's overhead scatters by more than the layers cost (a median of +6.5% came out of rounds
# whose quartiles were -5.7% and +8.8%, for layers that took 0.3% of the step), so eagerly the
# layer passes' share of the step decides and the step overhead is reported; compiled, the layers
# cannot be timed apart from their fused neighbours and the step decides.
OVERHEAD_MEASURES = {
    "eager": (
        "layers_pct_of_step",
        "ours' DropBlock layers take <= {limit:g}% of an eager step (paper's settings; "
        "the layer passes' median / the no-DropBlock eager step)",
    ),
    "compile": ("overhead_pct", "ours adds <= {limit:g}% to a compile step (paper's settings)"),
}


def target_verdicts(rows: List[dict], comparisons: Sequence[dict] = ()) -> List[dict]:
    """This benchmark's targets: ours (both mask modes) costs <= 5% of an eager and <= 2% of a
    compiled step on the models at the paper's settings (``TARGETS``, judged on
    ``OVERHEAD_MEASURES``); ours costs less than each peer in every configuration, in both mask
    modes (``PEER_TARGETS``, ``peer_outcome``). A verdict's ``worst`` is in percentage points of the
    step for the first two, in % of the peer's cost (the largest median of ours / peer - 1) for the
    peer targets (``unit``)."""
    verdicts = []
    for mode, limit in TARGETS.items():
        key, text = OVERHEAD_MEASURES[mode]
        cases = [
            r
            for r in rows
            if r["status"] == "ok"
            and r["variant"] in OURS
            and r["mode"] == mode
            and MODELS[r["model"]].paper_settings
            and _finite(r, key)
        ]
        failed = [r for r in cases if r[key] > limit]
        worst = max(cases, key=lambda r: r[key], default=None)
        verdicts.append(
            {
                "target": text.format(limit=limit),
                "measured": len(cases),
                "met": len(cases) - len(failed),
                "worst": worst[key] if worst else None,
                "worst_case": f"{worst['model']} {worst['variant']}" if worst else "",
                "failed_cases": [f"{r['model']} {r['variant']}" for r in failed],
                "unresolved_cases": [],
                "unit": "pp",
            }
        )
    for mode, target in PEER_TARGETS.items():
        timed = "layers" if mode == "eager" else "step"
        cases = [c for c in comparisons if c["mode"] == mode and c["timed"] == timed]
        outcomes = [(peer_outcome(c), f"{c['model']} {c['ours']} vs {c['peer']}") for c in cases]
        worst = max(cases, key=lambda c: c["pct"], default=None)
        verdicts.append(
            {
                "target": target,
                "measured": len(cases),
                "met": sum(outcome == "met" for outcome, _ in outcomes),
                "worst": worst["pct"] if worst else None,
                "worst_case": f"{worst['model']} {worst['ours']} vs {worst['peer']}" if worst else "",
                "failed_cases": [case for outcome, case in outcomes if outcome == "not met"],
                "unresolved_cases": [case for outcome, case in outcomes if outcome == "unresolved"],
                "unit": "%",
            }
        )
    return verdicts


def _mb(v) -> str:
    return fmt(v / 2**20 if v == v else v, "{:.3g}") if isinstance(v, (int, float)) else "-"


def _with_iqr(median, q25, q75, spec: str = "{:+.1f}") -> str:
    """The cell "median [25th, 75th percentile]", each number formatted with ``spec``."""
    return f"{fmt(median, spec)} [{fmt(q25, spec)}, {fmt(q75, spec)}]"


def markdown(result: dict) -> str:
    env, rows = result["environment"], result["rows"]
    setup = result["setup"]
    layer_rounds = {r["model"]: r["layers_rounds"] for r in rows if "layers_rounds" in r}
    lines = [
        f"Training-step overhead of DropBlock (`python -m benchmarks.train_step`), measured on "
        f"{env['device_name']} ({env['device']}, {env['threads']} threads), torch {env['torch']}, timm "
        f"{env['timm']}, torchvision {env['torchvision']}, commit {env['git_commit']}, {env['timestamp']}, "
        f"{env['wall_s']:.0f} s.",
        "",
        f"Batch {setup['batch']} of {setup['image_size']}x{setup['image_size']} images, "
        f"{setup['dtype']}{' (autocast)' if setup['dtype'] != 'float32' else ''}, {setup['memory_format']}, "
        f"SGD with momentum; {result['config']['rounds']} interleaved rounds; torch.compile ("
        f"{', '.join(result['config']['compile_models'] or result['models'])}): "
        f"{result['config']['compile_scope']} scope, {result['config']['compile_backend']} backend, "
        "timed after its compilation. "
        "overhead = median over the rounds of (step / no-DropBlock step of the same round - 1), "
        "[25th, 75th percentile]. layers = the DropBlock layers' own forward and backward per step, eager: "
        "every site's layer run on the input and the output gradient it had in a training step of that "
        "model, timed in interleaved rounds of their own (rounds: "
        + (", ".join(f"{k} {n}" for k, n in layer_rounds.items()) or "none")
        + "), median [25th, 75th percentile]; % of step = layers / the no-DropBlock eager step. "
        "saved = bytes the DropBlock layers keep for backward (eager), "
        "extra = what the whole step keeps beyond the no-DropBlock step.",
        "",
    ]
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    head = ["model", "implementation", "masks"]
    for m in modes:
        head += [f"{m} ms", f"{m} overhead %"]
    head += ["layers ms", "layers % of step", "DropBlock saved MB (B/el)", "step extra MB"]
    if "compile" in modes:
        head.append("compile s")
    cuda = any(r.get("peak_bytes") == r.get("peak_bytes") and "peak_bytes" in r for r in rows)
    if cuda:
        head += [f"{m} peak MB" for m in modes]
    head.append("note")
    lines.append("| " + " | ".join(head) + " |")
    lines.append(
        "|" + "|".join("---" if h in ("model", "implementation", "masks", "note") else "---:" for h in head) + "|"
    )
    by = {(r["model"], r["variant"], r["mode"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        for variant in dict.fromkeys(r["variant"] for r in rows if r["model"] == model):
            first = next(r for r in rows if r["model"] == model and r["variant"] == variant)
            cells = [model, first["label"], first["masks"]]
            notes = []
            for m in modes:
                r = by.get((model, variant, m), {})
                if r.get("status", "ok") != "ok":
                    notes.append(f"{m}: {r['status']}: {r['reason']}")
                over = (
                    _with_iqr(r["overhead_pct"], r.get("overhead_q25_pct"), r.get("overhead_q75_pct"))
                    if variant != "none" and "overhead_pct" in r
                    else "-"
                )
                cells += [fmt(r.get("step_ms"), "{:.1f}"), over]
            cells.append(
                _with_iqr(first["layers_ms"], first["layers_q25_ms"], first["layers_q75_ms"], "{:.3g}")
                if "layers_ms" in first
                else "-"
            )
            cells.append(fmt(first.get("layers_pct_of_step"), "{:.3g}"))
            saved = first.get("dropblock_saved_bytes", float("nan"))
            cells.append(
                "-"
                if variant == "none"
                else f"{_mb(saved)} ({fmt(first.get('dropblock_saved_bytes_per_elem'), '{:.3g}')})"
            )
            cells.append("-" if variant == "none" else _mb(first.get("step_saved_extra_bytes", float("nan"))))
            if "compile" in modes:
                cells.append(fmt(by.get((model, variant, "compile"), {}).get("compile_s"), "{:.1f}"))
            if cuda:
                cells += [_mb(by.get((model, variant, m), {}).get("peak_bytes", float("nan"))) for m in modes]
            if first.get("warning"):
                notes.append(first["warning"])
            cells.append("; ".join(notes).replace("|", "/"))
            lines.append("| " + " | ".join(cells) + " |")
    lines += comparison_table(result.get("comparisons", []))
    lines += ["", "Targets (reported, not asserted):", ""]
    for v in result["targets"]:
        unit = " pp" if v.get("unit", "pp") == "pp" else "%"
        worst = f"; worst {fmt(v['worst'], '{:+.1f}')}{unit} ({v['worst_case']})" if v["worst"] is not None else ""
        lines.append(
            f"- {verdict_status(v)}: {v['target']}: {v['met']} of {v['measured']} met{worst}"
            + (f"; failed: {', '.join(v['failed_cases'])}" if v["failed_cases"] else "")
            + (f"; unresolved: {', '.join(v['unresolved_cases'])}" if v["unresolved_cases"] else "")
        )
    lines.append("")
    lines.append("Models: " + "; ".join(f"`{k}`: {MODELS[k].description}" for k in result["models"]) + ".")
    for note in result.get("skipped", []):
        lines.append(f"\n- skipped: {note}")
    return "\n".join(lines) + "\n"


def comparison_table(comparisons: Sequence[dict]) -> List[str]:
    """The markdown lines of ours against each peer (``paired_comparisons``), one row per model,
    ours and peer; nothing when there is no comparison."""
    if not comparisons:
        return []
    by = {(c["model"], c["ours"], c["peer"], c["mode"], c["timed"]): c for c in comparisons}
    columns = [
        (mode, timed)
        for mode, timed in (("eager", "layers"), ("eager", "step"), ("compile", "step"))
        if any((c["mode"], c["timed"]) == (mode, timed) for c in comparisons)
    ]
    judged = {("eager", "layers"), ("compile", "step")}  # what the peer targets are judged on
    lines = [
        "",
        "Ours against each peer, paired by round: ours / peer - 1 in %, median [25th, 75th percentile] over "
        "the rounds; negative: ours cheaper. eager layers: the layer passes above (what the eager peer target "
        "is judged on, with the 95% confidence interval of the median); eager step: the eager steps (reported "
        "only: their noise is larger than the layers' cost); compile step: the compiled steps (what the compile "
        "peer target is judged on).",
        "",
        "| model | ours | peer | "
        + " | ".join(f"{mode} {timed} %" + (" | 95% CI" if timed == "layers" else "") for mode, timed in columns)
        + " | outcome |",
        "|---|---|---|" + "".join("---:|---:|" if timed == "layers" else "---:|" for _, timed in columns) + "---|",
    ]
    for model, ours, peer in dict.fromkeys((c["model"], c["ours"], c["peer"]) for c in comparisons):
        cells = [model, ours, peer]
        outcomes = []
        for mode, timed in columns:
            c = by.get((model, ours, peer, mode, timed))
            cells.append(_with_iqr(c["pct"], c["q25_pct"], c["q75_pct"]) if c else "-")
            if timed == "layers":
                cells.append(f"[{fmt(c['ci_lo_pct'], '{:+.1f}')}, {fmt(c['ci_hi_pct'], '{:+.1f}')}]" if c else "-")
            if c and (mode, timed) in judged:
                outcomes.append(f"{mode}: {peer_outcome(c)}")
        lines.append("| " + " | ".join(cells + ["; ".join(outcomes)]) + " |")
    return lines


def _plot_panels(result: dict) -> List[Tuple[str, str, Callable[[dict], Tuple[float, float, float]], Optional[float]]]:
    """(mode, title, row -> (value, 25th, 75th percentile) in %, target line) of each panel: the
    eager layers' share of the step (what the eager target is judged on) where measured, then the
    step overhead of each mode (the compiled one judged, the eager one reported)."""

    def layers(r):
        scale = r["layers_pct_of_step"] / r["layers_ms"]  # the same no-DropBlock step for the quartiles
        return r["layers_pct_of_step"], r["layers_q25_ms"] * scale, r["layers_q75_ms"] * scale

    def step(r):
        return r["overhead_pct"], r["overhead_q25_pct"], r["overhead_q75_pct"]

    rows = result["rows"]
    panels = []
    if any(r["mode"] == "eager" and _finite(r, "layers_pct_of_step") for r in rows):
        panels.append(("eager", "eager: DropBlock layers, % of the step", layers, TARGETS["eager"]))
    for mode in MODES:
        if any(r["mode"] == mode for r in rows):
            judged = OVERHEAD_MEASURES[mode][0] == "overhead_pct"
            panels.append((mode, f"{mode}: step overhead", step, TARGETS[mode] if judged else None))
    return panels


def write_plot(result: dict, path: str) -> bool:
    """Bars per model and implementation, with the 25th-75th percentile: the eager layers' share of
    the step, then the step overhead of each mode (``_plot_panels``); a dashed line where a panel
    holds what a target is judged on. False when matplotlib is missing."""
    plt = reporting.pyplot()
    if plt is None:
        return False
    panels = _plot_panels(result) or [("eager", "eager: step overhead", None, None)]
    variants = [v for v in VARIANTS if v != "none" and any(r["variant"] == v for r in result["rows"])]
    per_mode = {m: list(dict.fromkeys(r["model"] for r in result["rows"] if r["mode"] == m)) for m in MODES}
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(4 + 2.2 * sum(max(1, len(per_mode[p[0]])) for p in panels), 4.8),
        squeeze=False,
        gridspec_kw={"width_ratios": [max(1, len(per_mode[p[0]])) for p in panels]},
    )
    width = 0.8 / max(len(variants), 1)
    for ax, (mode, title, measure_of, limit) in zip(axes[0], panels):
        models = per_mode[mode]
        for variant, xs in zip(variants, reporting.bar_offsets(len(variants), len(models))):
            values, low, high = [], [], []
            for model in models:
                r = next(
                    (
                        r
                        for r in result["rows"]
                        if (r["model"], r["variant"], r["mode"]) == (model, variant, mode) and r["status"] == "ok"
                    ),
                    None,
                )
                try:
                    v, q25, q75 = measure_of(r)
                except (KeyError, TypeError, ZeroDivisionError):  # not measured for this row
                    v, q25, q75 = float("nan"), float("nan"), float("nan")
                values.append(v)
                low.append(v - q25 if v == v else 0.0)
                high.append(q75 - v if v == v else 0.0)
            ax.bar(
                xs,
                values,
                width=width,
                yerr=[low, high],
                capsize=2,
                label=f"{VARIANTS[variant][0]} [{VARIANTS[variant][1]}]",
            )
        if limit is not None:
            ax.axhline(limit, color="gray", linestyle="--", linewidth=0.8)
        ax.set_yscale("symlog", linthresh=2.0, linscale=1.0)  # linear within +-2%, logarithmic beyond
        reporting.style_bar_axis(
            ax,
            models,
            ylabel="% of the no-DropBlock step",
            title=title + (" (dashed: target)" if limit is not None else ""),
            baseline=0.0,
        )
    reporting.legend_below(fig, axes[0][0])
    reporting.save_figure(fig, path, "DropBlock in a training step", result["environment"], rect=(0, 0.1, 1, 0.95))
    return True


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


@dataclass
class Config:
    device: str = "cpu"
    models: Sequence[str] = DEFAULT_MODELS
    variants: Sequence[str] = DEFAULT_VARIANTS
    modes: Sequence[str] = MODES
    batch: Optional[int] = None  # default: 2 on the CPU; 128 on CUDA (halved until a step fits)
    image_size: int = 224  # the paper's: 14x14 and 7x7 maps at stages 3 and 4
    classes: int = 1000
    p: float = PAPER_P
    rounds: Optional[int] = None  # default 7 on the CPU, 20 on CUDA
    warmup: int = 2  # untimed steps of each (variant, mode) before the rounds
    # The DropBlock layers' own cost: each model's layer passes get rounds for about this many
    # seconds in all, at least layer_min_rounds (a pass is a small fraction of a step).
    layer_seconds: float = 2.5
    layer_min_rounds: int = 50
    # The models also measured compiled; None: every model (the CUDA default). CPU default: the
    # paper's settings on ResNet-18 only: on 2 cores a cold Inductor compile of the 5 variants of
    # one ResNet-18 takes 1-2 minutes (ResNet-50s more), which alone fills the command's budget.
    compile_models: Optional[Sequence[str]] = ()
    compile_scope: str = "blocks"
    compile_backend: str = "inductor"
    autocast: Optional[str] = None  # default: bfloat16 on CUDA, off on the CPU
    channels_last: Optional[bool] = None  # default: on for CUDA, off on the CPU
    threads: Optional[int] = None  # CPU default 2
    seed: int = 0
    out: str = reporting.DEFAULT_OUT
    progress: bool = True
    quiet: bool = False


def _fit_batch(cfg: Config, setup: Setup) -> int:
    """The configured batch, halved until a no-DropBlock step of the largest model fits (CUDA)."""
    largest = max(cfg.models, key=lambda k: ("50" in k, k))
    model, _ = MODELS[largest].build(setup.classes, cfg.p)
    model = _to_device(model.train(), setup)
    try:
        while True:
            try:
                make_step(model, setup, *_inputs(setup, cfg.seed))()
                return setup.batch
            except torch.cuda.OutOfMemoryError:
                if setup.batch == 1:
                    raise
                setup.batch //= 2
            finally:  # the step's activations and inputs go back to the device before the next try
                torch.cuda.empty_cache()
    finally:
        del model
        torch.cuda.empty_cache()


def plan(cfg: Config) -> Tuple[Setup, List[str]]:
    """Checks ``cfg``'s names and fills in the device's defaults (in ``cfg``): on CUDA batch 128
    (``_fit_batch`` halves it later until a step fits), bfloat16 autocast, channels_last, every
    model also compiled, 20 rounds; on the CPU batch 2, float32, contiguous, ``CPU_COMPILE_MODELS``,
    7 rounds. Returns the step's setup and notes on what was left out; measures nothing."""
    device = torch.device(cfg.device)
    for name, allowed in (("models", MODELS), ("variants", VARIANTS), ("modes", MODES)):
        for key in getattr(cfg, name):
            if key not in allowed:
                raise SystemExit(f"--{name}: {key!r} is not one of {', '.join(allowed)}")
    cuda = device.type == "cuda"
    if cfg.compile_models == ():
        cfg.compile_models = None if cuda else [k for k in CPU_COMPILE_MODELS if k in cfg.models]
    for key in cfg.compile_models or ():
        if key not in cfg.models:
            raise SystemExit(f"--compile-models: {key!r} is not one of the models measured ({', '.join(cfg.models)})")
    if "none" not in cfg.variants:
        cfg.variants = ["none"] + list(cfg.variants)  # the overheads are over it
    if cfg.rounds is None:
        cfg.rounds = 20 if cuda else 7
    skipped = []
    if "compile" in cfg.modes and not hasattr(torch, "compile"):
        skipped.append("compile: torch.compile not available")
        cfg.modes = [m for m in cfg.modes if m != "compile"]
    autocast = cfg.autocast if cfg.autocast is not None else ("bfloat16" if cuda else "float32")
    setup = Setup(
        device,
        cfg.batch if cfg.batch is not None else (128 if cuda else 2),
        cfg.image_size,
        cfg.classes,
        None if autocast == "float32" else getattr(torch, autocast),
        cfg.channels_last if cfg.channels_last is not None else cuda,
    )
    return setup, skipped


def run_train_step(cfg: Config) -> dict:
    """Measures every model of ``cfg``, writes CSV / JSON / markdown / PNG into ``cfg.out`` and
    returns everything (``rows``, ``targets``, ``environment``, ``files``). The thread count and
    cudnn.benchmark it sets are restored afterwards."""
    wall0 = time.perf_counter()
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    setup, skipped = plan(cfg)
    cuda = device.type == "cuda"
    previous = (torch.get_num_threads(), torch.backends.cudnn.benchmark)
    # Per model: a build and each mode's warm-up per variant, the rounds, the layer passes.
    total = sum(len(cfg.variants) * (1 + len(model_modes(cfg, key))) + cfg.rounds + 1 for key in cfg.models)
    progress = reporting.Progress(total, cfg.progress and not cfg.quiet)
    rows: List[dict] = []
    comparisons: List[dict] = []
    try:
        if device.type == "cpu" or cfg.threads is not None:
            torch.set_num_threads(cfg.threads if cfg.threads is not None else 2)
        threads = torch.get_num_threads()
        if cuda:
            torch.backends.cudnn.benchmark = True  # as fixed-size training runs set it; the warm-up steps tune it
            setup.batch = _fit_batch(cfg, setup)
        for key in cfg.models:
            model_rows, model_comparisons = measure_model(MODELS[key], cfg, setup, progress)
            rows.extend(model_rows)
            comparisons.extend(model_comparisons)
            if cuda:
                torch.cuda.empty_cache()
    finally:
        progress.close()
        torch.set_num_threads(previous[0])
        torch.backends.cudnn.benchmark = previous[1]
    result = {
        **reporting.result_head(cfg, device, threads, wall0),
        "models": list(cfg.models),
        "setup": {
            "batch": setup.batch,
            "image_size": setup.image_size,
            "dtype": str(setup.autocast or torch.float32).replace("torch.", ""),
            "memory_format": "channels_last" if setup.channels_last else "contiguous",
        },
        "skipped": skipped,
        "targets": target_verdicts(rows, comparisons),
        "rows": rows,
        "comparisons": comparisons,
    }
    reporting.write_results(cfg.out, "train_step", result, rows, CSV_FIELDS, markdown(result), write_plot, cfg.quiet)
    return result


QUICK_MODELS = ("tv_resnet18",)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.split("\n\n")[0])
    cli.add_quick(ap, f"one model ({','.join(QUICK_MODELS)}), eager only")
    cli.add_device(ap)
    ap.add_argument(
        "--models",
        type=cli.names,
        default=None,
        help=f"comma-separated, of {', '.join(MODELS)} (default {','.join(DEFAULT_MODELS)}; "
        f"{','.join(QUICK_MODELS)} with --quick)",
    )
    ap.add_argument(
        "--variants",
        type=cli.names,
        default=list(DEFAULT_VARIANTS),
        help=f"comma-separated, of {', '.join(VARIANTS)} (default {','.join(DEFAULT_VARIANTS)})",
    )
    ap.add_argument("--modes", type=cli.names, default=None, help="eager,compile (default both; eager with --quick)")
    ap.add_argument("--batch", type=int, default=None, help="default 2 on the CPU, 128 on CUDA (or what fits)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--p", type=float, default=PAPER_P, help="drop probability (timm's drop_block_rate too)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"interleaved rounds (default 7 CPU, 20 CUDA; {cli.QUICK_REPEATS} with --quick)",
    )
    cli.add_warmup(ap, 2, "steps of each (variant, mode)", quick=1)
    ap.add_argument(
        "--layer-seconds",
        type=float,
        default=None,
        help="seconds of interleaved rounds of the DropBlock layers' own passes, per model (default 2.5; 0.5 "
        "with --quick)",
    )
    ap.add_argument(
        "--layer-min-rounds",
        type=int,
        default=50,
        help="the fewest rounds of the layer passes, whatever --layer-seconds gives (default 50)",
    )
    ap.add_argument(
        "--compile-models",
        type=cli.names,
        default=None,
        help="the models also measured compiled (default: all on CUDA, "
        + ",".join(CPU_COMPILE_MODELS)
        + " on the CPU; 'all' for all)",
    )
    ap.add_argument(
        "--compile-scope",
        choices=("blocks", "model"),
        default="blocks",
        help="torch.compile every residual block (default) or the whole model",
    )
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    ap.add_argument(
        "--autocast",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="autocast dtype (default bfloat16 on CUDA; float32 = off, the CPU default)",
    )
    ap.add_argument(
        "--channels-last",
        dest="channels_last",
        action="store_true",
        default=None,
        help="channels_last model and input (the CUDA default)",
    )
    ap.add_argument("--contiguous", dest="channels_last", action="store_false", help="contiguous (the CPU default)")
    cli.add_threads(ap)
    ap.add_argument("--seed", type=int, default=0, help="of the weights and the batch (default 0)")
    cli.add_output(ap)
    return ap


def config_from_args(argv: Optional[Sequence[str]] = None) -> Config:
    # Without --quick the rounds stay unset: plan() gives the device's default.
    quick = dict(models=list(QUICK_MODELS), modes=["eager"], rounds=cli.QUICK_REPEATS, warmup=1, layer_seconds=0.5)
    args = cli.resolve_defaults(
        build_parser().parse_args(argv),
        quick=quick,
        full=dict(
            models=list(DEFAULT_MODELS), modes=list(MODES), rounds=None, warmup=2, layer_seconds=Config.layer_seconds
        ),
    )
    compile_models = (
        () if args.compile_models is None else (None if args.compile_models == ["all"] else args.compile_models)
    )
    flags = (
        "device models variants modes batch image_size p rounds warmup layer_seconds layer_min_rounds compile_scope"
        " compile_backend autocast channels_last threads seed out"
    )
    return cli.config_of(Config, args, flags, compile_models=compile_models)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.main_of(run_train_step, config_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
