"""The main benchmark, ``python -m benchmarks`` (benchmarks/benchmark.py and its report.py): the
sweep on tiny shapes, its writers and its flags; the implementations registry (benchmarks/peers.py)."""

import csv
import json
from pathlib import Path

import pytest
import torch
from benchmark_helpers import PNG_SIGNATURE, assert_png, quiet_config

import dropblock_cuda
from benchmarks import benchmark as bm
from benchmarks import cli, peers, report
from benchmarks.measure import Timing

# The columns of benchmarks/results/results.csv: other tools and the README read them, so a
# change here is a change of the file format, not a refactoring.
RESULTS_CSV_COLUMNS = (
    "section,device,shape,batch,dtype,block_size,p,impl,label,masks,status,reason,warning,drop_frac,scale,fwd_ms,"
    "fwd_min_ms,fwd_repeats,fwd_vs_ours,fwd_vs_floor,fwdbwd_ms,fwdbwd_min_ms,fwdbwd_repeats,fwdbwd_vs_ours,"
    "fwdbwd_vs_floor,compared_with,saved_bytes_per_elem,gpu_held_bytes_per_elem,gpu_peak_bytes_per_elem,compile_s,"
    "note"
).split(",")
RESULTS_JSON_KEYS = {
    "batch",
    "config",
    "environment",
    "files",
    "headline",
    "impls",
    "repeats",
    "rows",
    "skipped",
    "summary",
}


def test_failed_implementation_is_reported_not_timed():
    bad = peers.Impl("bad", "doubles everything", False, lambda p, b, dt, dev: lambda x: x * 2)
    ours = peers.Impl(
        "ours", "dropblock_cuda", False, lambda p, b, dt, dev: lambda x: dropblock_cuda.drop_block2d(x, p, b)
    )
    rows = bm.measure_config(
        [ours, bad],
        bm.Case((2, 4, 12, 12), torch.float32, 3, 0.2),
        torch.device("cpu"),
        Timing(repeats=1, warmup=0, max_time_s=0.1),
    )
    by = {r["impl"]: r for r in rows}
    assert by["ours"]["status"] == "ok" and by["ours"]["fwd_ms"] > 0
    assert by["bad"]["status"] == "FAILED" and by["bad"]["reason"]
    assert by["bad"]["fwd_ms"] != by["bad"]["fwd_ms"]  # nan: not timed
    assert "FAILED" in report.format_table(rows)


def test_registry_lists_ours_in_both_modes_and_notes_what_it_leaves_out():
    impls, skipped = peers.build_impls(torch.device("cpu"), include_compiled=False)
    by = {i.key: i for i in impls}
    assert [by[k].masks for k in ("floor", "ours", "ours_shared", "article")] == ["-", "per-ch", "shared", "per-ch"]
    assert "article_compiled: disabled (--no-compile)" in skipped
    assert "article_compiled" in {i.key for i in peers.build_impls(torch.device("cpu"))[0]}


def _tiny_config(tmp_path, **kw):
    sizes = dict(shapes=[(6, 12, 12), (1, 4, 9, 9)], dtypes=["float32"], block_sizes=[3], batch=2)
    timing = dict(repeats=1, warmup=0, max_time_s=0.05, headline=False, compile=False)
    return quiet_config(bm.Config, tmp_path, {**sizes, **timing}, **kw)


def test_writers_produce_valid_files(tmp_path):
    result = bm.run_benchmark(_tiny_config(tmp_path))
    files = result["files"]
    with open(files["csv"]) as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == RESULTS_CSV_COLUMNS == report.CSV_FIELDS
        rows = list(reader)
    impls = {r["impl"] for r in rows}
    assert {"floor", "ours", "ours_shared", "article"} <= impls
    assert {r["shape"] for r in rows} == {"2x6x12x12", "1x4x9x9"}
    assert all(r["status"] in ("ok", "FAILED", "SKIPPED", "ERROR") for r in rows)
    ours = [r for r in rows if r["impl"] == "ours"]
    assert all(r["status"] == "ok" and float(r["fwd_vs_ours"]) == 1.0 for r in ours)
    with open(files["json"]) as fh:
        data = json.load(fh)
    assert set(data) == RESULTS_JSON_KEYS
    env = data["environment"]
    for key in ("device_name", "torch", "threads", "git_commit", "wall_s"):
        assert key in env
    assert len(data["rows"]) == len(rows)
    assert {s["impl"] for s in data["summary"]} == impls - {"floor", "ours", "ours_shared"}
    md = Path(files["markdown"]).read_text()
    assert "**Summary**" in md
    assert md.count("\n|") >= len(rows)
    if "png" in files:
        assert_png(files["png"])


def test_plot_skips_cleanly_without_rows(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "empty.png"
    assert report.write_plot([], str(path))
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_cli_quick_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(bm.HEADLINE, "shape", (2, 4, 14, 14))  # the headline path, on a tiny tensor
    code = bm.main(
        [
            "--quick",
            "--shapes",
            "4x12x12",
            "--batch",
            "2",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--no-compile",
            "--no-progress",
            "--threads",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "Headline" in out and "per_channel_fwd_over_floor" in out
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["headline"]["ratios"]["per_channel_fwd_over_floor"] is not None
    # The mask op alone is timed in the headline, with a fresh key per call, and nowhere else.
    mask_rows = [r for r in data["rows"] if r["impl"] == "ours_mask"]
    assert [(r["section"], r["status"]) for r in mask_rows] == [("headline", "ok")]
    assert data["headline"]["ratios"]["mask_op_over_floor"] > 0
    assert data["headline"]["targets"]["mask_op_over_floor"] == ["<=", 0.15]
    assert {r["section"] for r in data["rows"]} == {"headline", "sweep"}
    # The sweep is retimed in interleaved rounds on the CPU: one round (--repeats 1) of three calls
    # per implementation and mode, the first dropped.
    sweep_ok = [r for r in data["rows"] if r["section"] == "sweep" and r["status"] == "ok"]
    assert sweep_ok and all(int(r["fwd_repeats"]) == 2 and int(r["fwdbwd_repeats"]) == 2 for r in sweep_ok)
    assert {r["block_size"] for r in data["rows"] if r["section"] == "sweep"} == {7}
    assert (tmp_path / "results.csv").exists() and (tmp_path / "results.md").exists()
    assert set(data["headline"]) == {
        "block_size",
        "device",
        "dtype",
        "not_ok",
        "p",
        "ratios",
        "ratios_of_min_times",
        "shape",
        "targets",
        "threads",
        "times_ms",
    }
    assert set(data["config"]) == {
        "batch",
        "block_sizes",
        "compile",
        "compile_static",
        "device",
        "dtypes",
        "headline",
        "headline_repeats",
        "max_time_s",
        "only",
        "out",
        "p",
        "progress",
        "quiet",
        "repeats",
        "seed",
        "shapes",
        "threads",
        "warmup",
    }


def test_parse_flags():
    cfg = bm.config_from_args(
        ["--shapes", "resnet50,3x8x8,1x2x5x5", "--block-sizes", "3,5", "--dtype", "bfloat16", "--device", "cpu"]
    )
    assert list(cfg.shapes)[:4] == list(bm.RESNET50_STAGES)
    assert cfg.shapes[4:] == [(3, 8, 8), (1, 2, 5, 5)]
    assert cfg.block_sizes == [3, 5] and cfg.dtypes == ["bfloat16"]
    with pytest.raises(SystemExit):
        bm.config_from_args(["--dtype", "int8"])


def test_quick_is_the_smoke_run_of_the_shared_flags():
    cfg = bm.config_from_args(["--quick"])
    assert (cfg.repeats, cfg.headline_repeats) == (cli.QUICK_REPEATS, cli.QUICK_REPEATS)
    assert (list(cfg.shapes), cfg.dtypes, cfg.block_sizes) == ([bm.RESNET50_STAGES[0]], ["float32"], [7])
    assert bm.config_from_args(["--quick", "--repeats", "5"]).repeats == 5  # an explicit flag wins
    assert bm.config_from_args(["--only", "timm, torchvision"]).only == ["timm", "torchvision"]
    assert bm.config_from_args([]).out == bm.DEFAULT_OUT


def test_mask_op_alone_draws_a_fresh_key_every_call():
    fn = peers.mask_op_impl().make(0.5, 3, torch.float32, torch.device("cpu"))
    x = torch.empty(2, 4, 16, 16)
    masks = [fn(x)[0] for _ in range(peers.MASK_KEYS + 1)]
    assert masks[0].dtype == torch.uint8
    # A cycle of MASK_KEYS keys made before the timing: every call of the cycle draws another mask.
    assert len({m.numpy().tobytes() for m in masks[:-1]}) == peers.MASK_KEYS
    assert torch.equal(masks[-1], masks[0])
