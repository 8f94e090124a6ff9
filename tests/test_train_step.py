"""The training-step benchmark (benchmarks/train_step.py) on tiny sizes.

No timing assertions: the driver runs, builds what it says, writes valid files and gives numbers
in range; its CUDA settings and batch fitting are checked without a GPU.
"""

import csv
import importlib.util
import json
import math
import random
from pathlib import Path

import pytest
import torch
from benchmark_helpers import assert_png, quiet_config

import dropblock_cuda
from benchmarks import measure
from benchmarks import train_step as ts

pytest.importorskip("timm")
pytest.importorskip("torchvision")


def _layers(model):
    return [m for m in model.modules() if isinstance(m, dropblock_cuda.DropBlock2d)]


def _tiny(tmp_path, **fields):
    """An eager run of batch 2, 10 classes, one round, no warm-up, one thread, 3 rounds of the layer
    passes (unless `fields` say otherwise)."""
    tiny = dict(modes=["eager"], batch=2, classes=10, rounds=1, warmup=0, threads=1, layer_seconds=0.0)
    tiny["layer_min_rounds"] = 3
    return quiet_config(ts.Config, tmp_path, tiny, **fields)


def test_timm_variants_are_converted_with_timms_settings():
    from timm.layers import DropBlock2d as TimmDropBlock2d
    from torchvision.ops import DropBlock2d as TorchvisionDropBlock2d

    spec = ts.MODELS["timm_resnet18"]
    base, sites = spec.build(10, 0.1)
    # timm's placement: the first conv's BN of every stage-3 block (block 5 at a quarter of the rate),
    # then stage 4 (block 3).
    assert [(s.path, s.block_size, s.gamma_scale) for s in sites] == [
        ("layer3.0.drop_block", 5, 0.25),
        ("layer3.1.drop_block", 5, 0.25),
        ("layer4.0.drop_block", 3, 1.0),
        ("layer4.1.drop_block", 3, 1.0),
    ]
    assert not any(isinstance(m, TimmDropBlock2d) for m in base.modules())  # the no-DropBlock model
    for variant, shared in (("ours", False), ("ours_shared", True)):
        model = ts.build_variant(spec, base, sites, variant)
        layers = [model.get_submodule(s.path) for s in sites]
        assert all(type(m) is dropblock_cuda.DropBlock2d and m.training for m in layers)
        assert [(m.p, m.block_size, m.gamma_scale, m.shared_channels) for m in layers] == [
            (0.1, s.block_size, s.gamma_scale, shared) for s in sites
        ]
    timm_model = ts.build_variant(spec, base, sites, "timm_per_channel")
    assert [(m.couple_channels, m.gamma_scale) for m in timm_model.modules() if isinstance(m, TimmDropBlock2d)] == [
        (False, 0.25),
        (False, 0.25),
        (False, 1.0),
        (False, 1.0),
    ]
    tv = ts.build_variant(spec, base, sites, "torchvision")
    # torchvision has no gamma_scale: the same seed rate is p * gamma_scale.
    assert [m.p for m in tv.modules() if isinstance(m, TorchvisionDropBlock2d)] == [0.025, 0.025, 0.1, 0.1]
    assert base.get_submodule("layer3.0.drop_block").__class__ is torch.nn.Identity  # base untouched


def test_torchvision_model_has_the_papers_dropblock_after_each_stage_3_and_4_block():
    spec = ts.MODELS["tv_resnet18"]
    base, sites = spec.build(10, 0.1)
    assert [s.path for s in sites] == [
        "layer3.0.drop_block",
        "layer3.1.drop_block",
        "layer4.0.drop_block",
        "layer4.1.drop_block",
    ]
    model = ts.build_variant(spec, base, sites, "ours_shared")
    assert [(m.p, m.block_size, m.shared_channels) for m in _layers(model)] == [(0.1, 7, True)] * 4
    # After the block: the wrapper runs the block, then the DropBlock, and nothing else.
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(base.eval()(x), ts.build_variant(spec, base, sites, "ours").eval()(x))


@pytest.mark.parametrize(
    "key, autocast, channels_last",
    [("timm_resnet18", None, False), ("tv_resnet18", torch.bfloat16, True)],
    ids=["timm-float32-contiguous", "torchvision-bf16-autocast-channels-last"],
)
def test_captured_site_tensors_are_what_each_layer_got_in_the_step(key, autocast, channels_last):
    spec = ts.MODELS[key]
    base, sites = spec.build(10, 0.1)
    setup = ts.Setup(torch.device("cpu"), 2, 64, 10, autocast, channels_last)
    model = ts._to_device(ts.build_variant(spec, base, sites, "ours"), setup)
    x, y = ts._inputs(setup, seed=0)
    step = ts.make_step(model, setup, x, y)
    # timm zero-initialises each block's last BN scale, which zeroes the gradient at its DropBlocks
    # until a first step has moved it (the benchmark captures after its timed steps).
    step()
    # What each layer got and gave in the step, seen by hooks of the test's own: the input, the
    # output before anything after the layer (timm's in-place ReLU) overwrites it, and the layout
    # of the gradient autograd brought to that output.
    seen, grad_layout = {}, {}

    def look(path):
        def on_forward(layer, args, out):
            seen[path] = (args[0].detach().clone(), out.detach().clone())
            out.register_hook(lambda g: grad_layout.__setitem__(path, (g.shape, g.dtype, g.device, g.stride())))

        return on_forward

    handles = [model.get_submodule(s.path).register_forward_hook(look(s.path)) for s in sites]
    captured = ts.capture_site_tensors(model, sites, step)
    for h in handles:
        h.remove()
    like = ts.site_inputs(model, sites, setup, x)  # the gate's stand-ins: shaped as the layer inputs
    assert len(captured) == len(sites) == len(like)
    for s, c, (layer, stand_in) in zip(sites, captured, like):
        assert c.layer is layer is model.get_submodule(s.path)
        layout = (stand_in.shape, stand_in.dtype, stand_in.device, stand_in.stride())
        assert (c.x.shape, c.x.dtype, c.x.device, c.x.stride()) == layout
        assert (c.grad.shape, c.grad.dtype, c.grad.device, c.grad.stride()) == grad_layout[s.path]
        assert c.grad.shape == c.x.shape and c.grad.dtype == c.x.dtype
        assert not c.x.requires_grad and not c.grad.requires_grad
        x_in, out = seen[s.path]
        assert torch.equal(c.x, x_in)  # the real activation, not a stand-in
        assert c.grad.abs().sum() > 0
        if key.startswith("timm"):
            # timm's in-place ReLU follows the layer: the gradient at the layer's own output is the
            # ReLU's, masked where the output is not positive (the ReLU's output's would not be).
            assert torch.all(c.grad[out <= 0] == 0) and torch.any(c.grad[out > 0] != 0)
    if channels_last:
        assert all(c.x.is_contiguous(memory_format=torch.channels_last) for c in captured)
        assert captured[0].x.dtype == torch.bfloat16  # the conv's autocast output


def test_layer_pass_runs_each_layer_forward_and_its_captured_gradient_back():
    spec = ts.MODELS["tv_resnet18"]
    base, sites = spec.build(10, 0.1)
    setup = ts.Setup(torch.device("cpu"), 2, 64, 10, None, False)
    model = ts.build_variant(spec, base, sites, "ours")
    captured = ts.capture_site_tensors(model, sites, ts.make_step(model, setup, *ts._inputs(setup, seed=0)))
    outputs, grads = [], []

    def spy(layer, args, out):
        outputs.append(out.detach().clone())
        out.register_hook(lambda g: grads.append(g.clone()))

    for c in captured:
        c.layer.register_forward_hook(spy)
    call = ts.layer_pass(captured, setup)
    call(0)
    call(1)
    n = len(captured)
    assert len(outputs) == len(grads) == 2 * n
    # Every site backward with its own captured gradient, every call.
    assert all(torch.equal(g, captured[i % n].grad) for i, g in enumerate(grads))
    # The layers draw their own masks: a fresh one each call (train mode).
    assert all(c.layer.training for c in captured)
    assert any(not torch.equal(outputs[i], outputs[n + i]) for i in range(n))
    assert all(not c.x.requires_grad for c in captured)  # the captured copies stay as they were


def test_layer_rounds_fill_the_time_budget_and_keep_the_minimum(monkeypatch):
    calls = {"a": lambda i: None, "b": lambda i: None}
    asked = []

    def stand_in(passes, rounds, device, **kwargs):
        asked.append(rounds)
        return {key: [2.0] * rounds for key in passes}  # 2 ms a pass: 4 ms a round

    monkeypatch.setattr(ts.measure, "interleaved_rounds", stand_in)
    times = ts.time_layer_passes(calls, seconds=1.0, min_rounds=50, device="cpu")
    assert asked == [ts.LAYER_TRIAL_ROUNDS, 250] and all(len(ms) == 250 for ms in times.values())
    asked.clear()
    ts.time_layer_passes(calls, seconds=0.1, min_rounds=50, device="cpu")
    assert asked == [ts.LAYER_TRIAL_ROUNDS, 50]  # 25 rounds would fit: the minimum holds
    assert ts.time_layer_passes({}, seconds=1.0, min_rounds=50, device="cpu") == {}


def test_overhead_is_the_median_of_paired_ratios():
    median, q25, q75 = ts.overhead_stats([11.0, 30.0, 12.0, 13.0], [10.0, 20.0, 10.0, 10.0])
    # ratios - 1: +10%, +50%, +20%, +30%: the median of the pairs, not of the times
    assert median == pytest.approx(25.0) and q25 == pytest.approx(17.5) and q75 == pytest.approx(35.0)


def _row(model, variant, mode, overhead, layers_pct=None):
    row = {
        "model": model,
        "variant": variant,
        "mode": mode,
        "status": "ok",
        "overhead_pct": overhead,
        "step_ms": 100.0 * (1 + overhead / 100),
    }
    if layers_pct is not None:
        row["layers_pct_of_step"] = layers_pct
    return row


EAGER_TARGET = ts.OVERHEAD_MEASURES["eager"][1].format(limit=5)
COMPILE_TARGET = ts.OVERHEAD_MEASURES["compile"][1].format(limit=2)


def test_target_verdicts_count_each_case():
    rows = [
        _row("tv_resnet50", "none", "eager", 0.0),
        # Eagerly the layers' share of the step decides, not the (noisier) step overhead.
        _row("tv_resnet50", "ours", "eager", 9.0, layers_pct=4.0),
        _row("tv_resnet50", "ours_shared", "eager", 1.0, layers_pct=6.0),
        _row("tv_resnet50", "torchvision", "eager", 5.0, layers_pct=50.0),
        _row("tv_resnet18", "ours", "eager", 3.0),  # layers not measured: not a case
        _row("tv_resnet50", "none", "compile", 0.0),
        _row("tv_resnet50", "ours", "compile", 1.0, layers_pct=40.0),  # compiled: the step decides
        _row("timm_resnet18", "ours", "compile", 30.0),  # not at the paper's settings: not in the first two
        _row("timm_resnet18", "timm", "compile", 40.0),
    ]
    verdicts = {v["target"]: v for v in ts.target_verdicts(rows)}
    eager = verdicts[EAGER_TARGET]
    assert (eager["measured"], eager["met"], eager["worst"], eager["failed_cases"]) == (
        2,
        1,
        6.0,
        ["tv_resnet50 ours_shared"],
    )
    assert ts.verdict_status(eager) == "NOT MET"
    compiled = verdicts[COMPILE_TARGET]
    assert (compiled["measured"], compiled["met"]) == (1, 1) and ts.verdict_status(compiled) == "MET"
    rows[-3]["overhead_pct"] = 2.5
    compiled = {v["target"]: v for v in ts.target_verdicts(rows)}[COMPILE_TARGET]
    assert compiled["failed_cases"] == ["tv_resnet50 ours"] and ts.verdict_status(compiled) == "NOT MET"
    # Without comparisons the peer targets are not measured: the step overheads alone do not judge them.
    assert [verdicts[ts.PEER_TARGETS[m]]["measured"] for m in ("eager", "compile")] == [0, 0]
    assert ts.verdict_status(verdicts[ts.PEER_TARGETS["eager"]]) == "not measured"


def _pair(model, ours, peer, mode, timed, pct, q25, q75, ci=None):
    lo, hi = ci if ci is not None else (q25, q75)  # the median's interval: the quartiles unless given
    keys = ("model", "mode", "timed", "ours", "peer", "pct", "q25_pct", "q75_pct", "ci_lo_pct", "ci_hi_pct")
    return dict(zip(keys, (model, mode, timed, ours, peer, pct, q25, q75, lo, hi)), rounds=9)


def test_peer_outcome_eager_by_the_layers_median_interval_compile_by_the_steps_iqr():
    def eager(pct, q25, q75, ci=None):
        return ts.peer_outcome(_pair("m", "ours", "timm", "eager", "layers", pct, q25, q75, ci))

    compiled = lambda pct, q25, q75: ts.peer_outcome(_pair("m", "ours", "timm", "compile", "step", pct, q25, q75))
    assert eager(-40.0, -50.0, -30.0) == "met"  # a clear win
    # The median's interval decides, however widely single rounds scatter.
    assert eager(-5.0, -20.0, +10.0, ci=(-8.0, -2.0)) == "met"
    assert eager(-5.0, -20.0, +10.0, ci=(-9.0, +1.0)) == "unresolved"
    assert eager(-5.0, -20.0, +10.0, ci=(float("-inf"), float("inf"))) == "unresolved"  # too few rounds
    assert eager(+3.0, -10.0, +15.0) == "not met"  # ours slower in the median round
    assert eager(0.0, -1.0, +1.0) == "not met"  # a tie is not "costs less"
    assert compiled(-8.0, -10.0, -5.0) == "met"  # the whole range below 0
    assert compiled(-1.0, -6.0, +4.0) == "unresolved"  # the median says ours, the range straddles 0
    assert compiled(+1.0, -4.0, +6.0) == "not met"  # straddles too, but ours is slower in the median round
    assert compiled(+6.0, +2.0, +9.0) == "not met"
    assert compiled(float("nan"), float("nan"), float("nan")) == "not met"  # nothing to show it cheaper


def test_peer_verdicts_judge_eager_on_the_layers_and_compile_on_the_steps():
    comparisons = [
        _pair("tv_resnet18", "ours", "torchvision", "eager", "layers", -80.0, -85.0, -75.0),
        _pair("tv_resnet18", "ours", "timm", "eager", "layers", +4.0, -2.0, +9.0),  # slower: NOT MET
        _pair("tv_resnet18", "ours_shared", "timm", "eager", "layers", -30.0, -40.0, -20.0),
        # The eager steps are reported only: a step 50% slower does not enter a verdict.
        _pair("tv_resnet18", "ours", "torchvision", "eager", "step", +50.0, +40.0, +60.0),
        _pair("tv_resnet18", "ours", "torchvision", "compile", "step", -10.0, -14.0, -6.0),
        _pair("tv_resnet18", "ours", "timm", "compile", "step", -1.0, -5.0, +3.0),
    ]
    verdicts = {v["target"]: v for v in ts.target_verdicts([], comparisons)}
    eager = verdicts[ts.PEER_TARGETS["eager"]]
    assert (eager["measured"], eager["met"], eager["failed_cases"], eager["unresolved_cases"]) == (
        3,
        2,
        ["tv_resnet18 ours vs timm"],
        [],
    )
    assert (eager["worst"], eager["worst_case"], eager["unit"]) == (4.0, "tv_resnet18 ours vs timm", "%")
    assert ts.verdict_status(eager) == "NOT MET"
    compiled = verdicts[ts.PEER_TARGETS["compile"]]
    assert (compiled["measured"], compiled["met"], compiled["failed_cases"], compiled["unresolved_cases"]) == (
        2,
        1,
        [],
        ["tv_resnet18 ours vs timm"],
    )
    assert ts.verdict_status(compiled) == "UNRESOLVED"
    # A compiled case with ours slower, its range straddling 0 as well, is a failure, not "unresolved".
    slower = comparisons + [_pair("tv_resnet18", "ours_shared", "timm", "compile", "step", +0.5, -4.0, +5.0)]
    compiled = {v["target"]: v for v in ts.target_verdicts([], slower)}[ts.PEER_TARGETS["compile"]]
    assert compiled["failed_cases"] == ["tv_resnet18 ours_shared vs timm"] and ts.verdict_status(compiled) == "NOT MET"
    wins = [c for c in comparisons if c["pct"] < 0 and c["q75_pct"] < 0]
    assert all(ts.verdict_status(v) in ("MET", "not measured") for v in ts.target_verdicts([], wins))


def test_markdown_lists_unresolved_cases_and_the_paired_comparisons():
    comparisons = [
        _pair("tv_resnet18", "ours", "timm", "eager", "layers", -30.0, -40.0, -20.0),
        _pair("tv_resnet18", "ours", "timm", "compile", "step", -1.0, -5.0, +3.0),
    ]
    env = dict(device_name="CPU", device="cpu", threads=1, torch="t", timm="t", torchvision="t", git_commit="c")
    result = {
        "environment": dict(env, timestamp="now", wall_s=1.0),
        "config": dict(rounds=3, compile_models=None, compile_scope="blocks", compile_backend="inductor"),
        "setup": dict(batch=2, image_size=64, dtype="float32", memory_format="contiguous"),
        "models": ["tv_resnet18"],
        "rows": [],
        "comparisons": comparisons,
        "targets": ts.target_verdicts([], comparisons),
    }
    md = ts.markdown(result)
    assert (
        "| tv_resnet18 | ours | timm | -30.0 [-40.0, -20.0] | [-40.0, -20.0] | -1.0 [-5.0, +3.0] "
        "| eager: met; compile: unresolved |" in md
    )
    assert f"- UNRESOLVED: {ts.PEER_TARGETS['compile']}: 0 of 1 met; worst -1.0% (tv_resnet18 ours vs timm); " in md
    assert md.rstrip().count("unresolved: tv_resnet18 ours vs timm") == 1
    assert f"- MET: {ts.PEER_TARGETS['eager']}: 1 of 1 met" in md


def test_train_step_driver_writes_its_files(tmp_path):
    # Both model families, every variant, eagerly; 160 px keeps the stage-4 maps at 5x5, where
    # torchvision's odd-block check passes.
    threads = torch.get_num_threads()
    cfg = _tiny(tmp_path, models=["timm_resnet18", "tv_resnet18"], variants=list(ts.VARIANTS), image_size=160, rounds=2)
    result = ts.run_train_step(cfg)
    assert torch.get_num_threads() == threads and result["environment"]["threads"] == 1  # restored after
    files = result["files"]
    with open(files["csv"]) as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ts.CSV_FIELDS
        rows = list(reader)
    assert [(r["model"], r["variant"], r["mode"]) for r in rows] == [
        (m, v, "eager") for m in cfg.models for v in ts.VARIANTS
    ]
    for r in rows:
        assert r["status"] == "ok", r
        assert float(r["step_ms"]) > 0 and int(r["rounds"]) == 2 and int(r["sites"]) == 4
        assert math.isfinite(float(r["overhead_pct"])) and float(r["overhead_pct"]) > -100
        assert float(r["overhead_q25_pct"]) <= float(r["overhead_pct"]) <= float(r["overhead_q75_pct"])
        assert r["compile_s"] == "" and r["peak_bytes"] == ""  # neither compiled nor on CUDA
        per_elem = float(r["dropblock_saved_bytes_per_elem"])
        if r["variant"] == "none":
            assert float(r["overhead_pct"]) == 0.0 and per_elem == 0.0
            assert r["layers_ms"] == r["layers_rounds"] == r["layers_pct_of_step"] == ""  # no layers to time
            continue
        # The layers' own pass: timed in rounds of its own, a positive fraction of the step.
        assert int(r["layers_rounds"]) == 3
        assert 0 < float(r["layers_q25_ms"]) <= float(r["layers_ms"]) <= float(r["layers_q75_ms"])
        assert 0 < float(r["layers_pct_of_step"]) < 100
        base = next(b for b in rows if b["model"] == r["model"] and b["variant"] == "none")
        assert float(r["layers_pct_of_step"]) == pytest.approx(100 * float(r["layers_ms"]) / float(base["step_ms"]))
        if r["variant"] == "ours":
            # one bit per element plus the 8-byte scale of each layer
            assert 0.125 < per_elem < 0.13
        elif r["variant"] in ("torchvision", "timm_per_channel"):  # an input-sized float mask
            assert per_elem >= 4.0
        else:  # a mask per sample, shared by the channels
            assert 0 < per_elem < 0.125
    data = json.loads(Path(files["json"]).read_text())
    for key in ("device_name", "torch", "timm", "threads", "git_commit", "wall_s"):
        assert key in data["environment"]
    targets = {v["target"]: v for v in data["targets"]}
    assert targets[EAGER_TARGET]["measured"] == 2  # tv_resnet18, 2 modes
    assert targets[COMPILE_TARGET]["measured"] == 0
    # Ours (2 mask modes) against 3 peers in 2 models: the layers judge the eager cases.
    assert targets[ts.PEER_TARGETS["eager"]]["measured"] == 2 * 2 * 3
    assert targets[ts.PEER_TARGETS["compile"]]["measured"] == 0
    assert (
        sorted((c["timed"], c["mode"]) for c in data["comparisons"])
        == [("layers", "eager")] * 12 + [("step", "eager")] * 12
    )
    assert all(c["rounds"] == (3 if c["timed"] == "layers" else 2) for c in data["comparisons"])
    md = Path(files["md"]).read_text()
    assert data["environment"]["git_commit"] in md and "Targets" in md and "| layers ms | layers % of step |" in md
    # A row per variant in the first table, one per (ours, peer) in the comparisons.
    assert md.count("| timm_resnet18 |") == md.count("| tv_resnet18 |") == len(ts.VARIANTS) + 2 * 3
    if importlib.util.find_spec("matplotlib") is None:  # the plot is skipped, and says so
        assert "png" not in files and "plot: matplotlib not installed" in result["skipped"]
    else:
        assert_png(files["png"])


def _tiny_specs(monkeypatch):
    """ResNet-10s (one block per stage) of both families, for the compiled path: a quarter of the
    graphs of a ResNet-18 to capture."""
    from torchvision.models.resnet import BasicBlock, ResNet

    monkeypatch.setitem(
        ts.MODELS,
        "timm_resnet10t",
        ts.ModelSpec("timm_resnet10t", "timm resnet10t", "timm", ts._timm_model("resnet10t"), False),
    )
    monkeypatch.setitem(
        ts.MODELS,
        "tv_resnet10",
        ts.ModelSpec(
            "tv_resnet10",
            "torchvision ResNet, one block per stage",
            "torchvision",
            ts._torchvision_model(lambda classes: ResNet(BasicBlock, [1, 1, 1, 1], num_classes=classes)),
            True,
        ),
    )


def test_train_step_compiled_blocks(tmp_path, monkeypatch, fresh_dynamo):
    # The compiled path with the aot_eager backend: Dynamo's capture of every block and AOT
    # autograd's forward/backward split, as under Inductor, without compiling kernels.
    _tiny_specs(monkeypatch)
    models = dict(models=["timm_resnet10t", "tv_resnet10"], variants=["ours", "ours_shared"], image_size=160, rounds=2)
    compiled = dict(modes=["eager", "compile"], compile_models=None, warmup=1, compile_backend="aot_eager")
    result = ts.run_train_step(_tiny(tmp_path, **models, **compiled))
    rows = result["rows"]
    assert len(rows) == 2 * 3 * 2 and all(r["status"] == "ok" for r in rows), rows
    for r in rows:
        assert (r["mode"] == "compile") == ("compile_s" in r)
        assert r["step_ms"] > 0 and r["sites"] == 2
    targets = {v["target"]: v for v in result["targets"]}
    assert targets[COMPILE_TARGET]["measured"] == 2


def test_compiled_copy_compiles_each_block_and_leaves_the_model(fresh_dynamo):
    spec = ts.MODELS["tv_resnet18"]
    base, sites = spec.build(10, 0.1)
    model = ts.build_variant(spec, base, sites, "ours")
    compiled = ts.compiled_copy(model, "blocks", "eager")
    assert all(block._compiled_call_impl is not None for block in ts._blocks(compiled))
    assert all(block._compiled_call_impl is None for block in ts._blocks(model))
    assert compiled.layer1[0].conv1.weight is not model.layer1[0].conv1.weight  # its own weights and optimizer
    whole = ts.compiled_copy(model, "model", "eager")
    assert isinstance(whole, torch._dynamo.eval_frame.OptimizedModule)


def test_train_step_reports_a_failed_peer_and_times_the_rest(tmp_path):
    # At 64 px torchvision's DropBlock2d clamps block 5 to the 4x4 stage-3 maps: torchvision 0.26 and
    # later refuse the even size, 0.21 fails on a shape mismatch. Either way reported as FAILED, not
    # timed; the others run.
    result = ts.run_train_step(
        _tiny(tmp_path, models=["timm_resnet18"], variants=["ours", "torchvision"], image_size=64)
    )
    by = {r["variant"]: r for r in result["rows"]}
    assert set(by) == {"none", "ours", "torchvision"}  # none is always measured: the overheads are over it
    reason = by["torchvision"]["reason"]
    assert by["torchvision"]["status"] == "FAILED" and ("odd" in reason or "must match the size" in reason), reason
    assert "step_ms" not in by["torchvision"] and by["ours"]["step_ms"] > 0
    assert "FAILED" in Path(result["files"]["md"]).read_text()


def test_train_step_help_lists_the_models(capsys):
    with pytest.raises(SystemExit) as exit_info:
        ts.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    assert all(key in text.replace("- ", "-").replace(" ", "") for key in ts.MODELS), text


def test_train_step_flags():
    cfg = ts.config_from_args(
        [
            "--models",
            "tv_resnet50",
            "--variants",
            "ours,timm",
            "--modes",
            "eager",
            "--device",
            "cuda",
            "--compile-scope",
            "model",
            "--batch",
            "64",
        ]
    )
    assert (cfg.models, cfg.variants, cfg.modes, cfg.device, cfg.compile_scope, cfg.batch) == (
        ["tv_resnet50"],
        ["ours", "timm"],
        ["eager"],
        "cuda",
        "model",
        64,
    )
    assert cfg.channels_last is None and cfg.autocast is None and cfg.compile_models == ()  # the device's defaults
    assert (cfg.layer_seconds, cfg.layer_min_rounds) == (2.5, 50)
    quick = ts.config_from_args(["--quick", "--layer-min-rounds", "80"])
    assert (quick.layer_seconds, quick.layer_min_rounds) == (0.5, 80)
    assert ts.config_from_args(["--quick", "--layer-seconds", "4"]).layer_seconds == 4.0  # explicit wins
    assert ts.config_from_args(["--compile-models", "all"]).compile_models is None
    assert ts.config_from_args(["--compile-models", "timm_resnet18"]).compile_models == ["timm_resnet18"]
    with pytest.raises(SystemExit):
        ts.run_train_step(ts.Config(models=["resnet9000"], quiet=True))
    with pytest.raises(SystemExit, match="compile-models"):
        ts.run_train_step(ts.Config(models=["timm_resnet18"], compile_models=["tv_resnet50"], quiet=True))


def test_cpu_default_compiles_only_the_papers_resnet18(tmp_path, monkeypatch):
    # Which models get compiled rows by default on the CPU (the steps themselves stubbed out).
    monkeypatch.setattr(
        ts,
        "measure_model",
        lambda spec, cfg, setup, progress: (
            [
                {
                    "model": spec.key,
                    "variant": "none",
                    "label": "no DropBlock",
                    "masks": "-",
                    "mode": m,
                    "status": "ok",
                    "reason": "",
                    "warning": "",
                }
                for m in ts.model_modes(cfg, spec.key)
            ],
            [],
        ),
    )
    result = ts.run_train_step(ts.Config(models=["timm_resnet18", "tv_resnet18"], quiet=True, out=str(tmp_path)))
    assert [(r["model"], r["mode"]) for r in result["rows"]] == [
        ("timm_resnet18", "eager"),
        ("tv_resnet18", "eager"),
        ("tv_resnet18", "compile"),
    ]


def test_cuda_plan_is_batch_128_bf16_autocast_channels_last():
    # What the GPU check runs (train_step --device cuda), planned here without a GPU.
    cfg = ts.config_from_args(
        ["--device", "cuda", "--models", "timm_resnet50,tv_resnet50", "--modes", "eager", "--rounds", "10"]
    )
    setup, skipped = ts.plan(cfg)
    assert (setup.device.type, setup.batch, setup.autocast, setup.channels_last) == ("cuda", 128, torch.bfloat16, True)
    assert cfg.compile_models is None and cfg.rounds == 10 and cfg.variants[0] == "none" and skipped == []
    cpu, _ = ts.plan(ts.Config())
    assert (cpu.batch, cpu.autocast, cpu.channels_last) == (2, None, False)
    # On CUDA the inputs and the model go channels_last, as the setup says.
    x, y = ts._inputs(ts.Setup(torch.device("cpu"), 2, 32, 10, None, channels_last=True), seed=0)
    assert x.is_contiguous(memory_format=torch.channels_last) and y.shape == (2,)


def test_fit_batch_halves_until_a_step_fits(monkeypatch):
    # _fit_batch's CUDA path on the CPU: a step of more than 32 images "runs out of memory".
    def make_step(model, setup, x, y):
        def step():
            if x.shape[0] > 32:
                raise torch.cuda.OutOfMemoryError("stand-in")

        return step

    monkeypatch.setattr(ts, "make_step", make_step)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    cfg = ts.Config(models=["tv_resnet18"], classes=10, image_size=32)
    setup = ts.Setup(torch.device("cpu"), 128, 32, 10, None, channels_last=False)
    assert ts._fit_batch(cfg, setup) == 32 and setup.batch == 32


def test_step_runs_under_autocast_and_channels_last(tmp_path):
    # The CUDA step's settings (autocast, channels_last) on the CPU: bfloat16 autocast exists
    # there too, so the step and the gate run as on a GPU, on a tiny batch.
    result = ts.run_train_step(
        _tiny(
            tmp_path, models=["tv_resnet18"], variants=["ours"], image_size=64, autocast="bfloat16", channels_last=True
        )
    )
    assert result["setup"] == {"batch": 2, "image_size": 64, "dtype": "bfloat16", "memory_format": "channels_last"}
    assert all(r["status"] == "ok" and r["step_ms"] > 0 for r in result["rows"]), result["rows"]
    assert "peak_bytes" not in result["rows"][0]  # CUDA only


def test_cuda_rows_report_the_steps_peak_memory(tmp_path, monkeypatch):
    # The markdown of a CUDA run (rows stood in for): a peak-memory column per mode, in MB.
    def measure_model(spec, cfg, setup, progress):
        rows = [
            {
                "model": spec.key,
                "variant": v,
                "label": ts.VARIANTS[v][0],
                "masks": ts.VARIANTS[v][1],
                "mode": "eager",
                "status": "ok",
                "reason": "",
                "warning": "",
                "step_ms": 100.0 + i,
                "overhead_pct": float(i),
                "overhead_q25_pct": float(i),
                "overhead_q75_pct": float(i),
                "dropblock_saved_bytes": 0,
                "dropblock_saved_bytes_per_elem": 0.0,
                "step_saved_extra_bytes": 0,
                "peak_bytes": (3 + i) * 2**20,
            }
            for i, v in enumerate(cfg.variants)
        ]
        return rows, []

    monkeypatch.setattr(ts, "measure_model", measure_model)
    result = ts.run_train_step(
        ts.Config(models=["tv_resnet18"], variants=["ours"], modes=["eager"], quiet=True, out=str(tmp_path))
    )
    md = Path(result["files"]["md"]).read_text()
    assert "eager peak MB" in md
    assert [line.split(" | ")[-2] for line in md.splitlines() if line.startswith("| tv_resnet18 |")] == ["3", "4"]
    with open(result["files"]["csv"]) as fh:
        assert [row["peak_bytes"] for row in csv.DictReader(fh)] == [str(3 * 2**20), str(4 * 2**20)]


def test_plot_panels_mark_what_each_target_is_judged_on():
    eager = dict(_row("tv_resnet18", "ours", "eager", 7.0, layers_pct=0.5), layers_ms=1.0, layers_q25_ms=0.8)
    eager.update(layers_q75_ms=1.2, overhead_q25_pct=-1.0, overhead_q75_pct=9.0)
    compiled = dict(_row("tv_resnet18", "ours", "compile", 1.0), overhead_q25_pct=0.0, overhead_q75_pct=3.0)
    panels = ts._plot_panels({"rows": [eager, compiled]})
    assert [(mode, limit) for mode, _, _, limit in panels] == [("eager", 5.0), ("eager", None), ("compile", 2.0)]
    layers, step = panels[0][2], panels[1][2]
    assert layers(eager) == pytest.approx((0.5, 0.4, 0.6))  # the quartiles scaled as the median is
    assert step(eager) == (7.0, -1.0, 9.0)
    # Without layer costs (an older result) the eager panel is the step overhead alone, unjudged.
    del eager["layers_pct_of_step"]
    assert [(mode, limit) for mode, _, _, limit in ts._plot_panels({"rows": [eager]})] == [("eager", None)]


def test_median_confidence_interval_is_the_sign_test_interval():
    # n = 50 at 95%: the 18th and 33rd order statistics (P(Binomial(50, 1/2) < 18) = 0.0164 <= 0.025,
    # P(< 19) = 0.0325 > 0.025).
    assert measure.median_confidence_interval([float(v) for v in range(50, 0, -1)]) == (18.0, 33.0)
    assert measure.median_confidence_interval(list(range(6))) == (0, 5)  # P(Binomial(6, 1/2) < 1) = 1/64
    assert measure.median_confidence_interval(list(range(5))) == (float("-inf"), float("inf"))
    lo, hi = measure.median_confidence_interval(list(range(5000)))  # 2^-5000 underflows a float
    assert (lo, hi) == (2430, 2569)  # about 2500 -+ 1.96 * sqrt(5000) / 2
    # Coverage: the interval of 30 draws holds the true median in at least 95% of 2000 samples, with a
    # tolerance of 3 standard errors of a 95% proportion over 2000 trials (0.0049 each).
    rng = random.Random(0)
    hits = 0
    for _ in range(2000):
        lo, hi = measure.median_confidence_interval([rng.expovariate(1.0) for _ in range(30)])
        hits += lo <= math.log(2.0) <= hi
    assert hits / 2000 >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / 2000)


def test_paired_comparisons_carry_the_medians_interval():
    mine = [1.0 + 0.01 * (i % 7) for i in range(40)]
    theirs = [1.2] * 40
    (layers,) = ts.paired_comparisons("m", {}, {"ours": mine, "timm": theirs})[:1]
    ratios = sorted(100.0 * (a / b - 1.0) for a, b in zip(mine, theirs))
    assert (layers["timed"], layers["peer"]) == ("layers", "timm")
    assert (layers["ci_lo_pct"], layers["ci_hi_pct"]) == measure.median_confidence_interval(ratios)
    assert layers["ci_lo_pct"] <= layers["pct"] <= layers["ci_hi_pct"] < 0
    assert ts.peer_outcome(layers) == "met"
