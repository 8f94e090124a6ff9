"""The comparative benchmark (benchmarks/): correctness gate, writers and CLI on tiny shapes.

No timing assertions: these only check that the machinery runs and writes valid files.
"""

import csv
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dropblock_cuda  # noqa: E402
from benchmarks import benchmark as bm  # noqa: E402
from benchmarks.reference_dropblock import DropBlock2dReference, drop_block2d_reference  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHAPE = (4, 8, 16, 16)


def _x(shape=SHAPE, dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gate_accepts_ours(shared, dtype):
    x = _x(dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    y = dropblock_cuda.drop_block2d(x, 0.3, 3, shared_channels=shared, generator=gen)
    gate = bm.check_dropblock_output(x, y, 0.3, 3, shared_channels=shared)
    assert gate.ok, gate.reason
    assert 0.0 < gate.drop_frac < 1.0
    assert gate.scale == pytest.approx(1.0 / (1.0 - gate.drop_frac), rel=2e-2)


def test_gate_p_zero_needs_identity():
    x = _x()
    assert bm.check_dropblock_output(x, x.clone(), 0.0, 3).ok
    assert not bm.check_dropblock_output(x, x * 2, 0.0, 3).ok


def test_gate_rejects_two_scales():
    x = _x()
    y = dropblock_cuda.drop_block2d(x, 0.3, 3, generator=torch.Generator().manual_seed(2)).clone()
    y[:2] *= 1.5  # half the batch with another scale
    gate = bm.check_dropblock_output(x, y, 0.3, 3)
    assert not gate.ok
    assert "one s" in gate.reason


def test_gate_rejects_dropping_nothing():
    x = _x()
    gate = bm.check_dropblock_output(x, x.clone(), 0.5, 3)
    assert not gate.ok
    assert "drop fraction" in gate.reason


def test_gate_rejects_wrong_rescale_dtype_and_shape():
    x = _x()
    y = dropblock_cuda.drop_block2d(x, 0.3, 3, generator=torch.Generator().manual_seed(3))
    keep = y != 0
    assert "1/(1 - drop fraction)" in bm.check_dropblock_output(x, x * keep, 0.3, 3).reason  # not rescaled
    assert "dtype" in bm.check_dropblock_output(x, y.double(), 0.3, 3).reason
    assert "shape" in bm.check_dropblock_output(x, y[:1], 0.3, 3).reason
    nan = y.clone()
    nan[0, 0, 0, 0] = float("nan")
    assert not bm.check_dropblock_output(x, nan, 0.3, 3).ok


def test_gate_drops_too_much_is_lenient_only_when_asked():
    x = _x()
    keep = torch.zeros_like(x)
    keep[..., :4, :4] = 1.0  # drops 15/16
    y = x * keep * (keep.numel() / keep.sum())
    assert not bm.check_dropblock_output(x, y, 0.3, 3).ok
    gate = bm.check_dropblock_output(x, y, 0.3, 3, lenient_upper=True)
    assert gate.ok and "drops" in gate.warning


@pytest.mark.parametrize("block_size", [1, 3, 4, 16, 20])
def test_reference_is_a_valid_dropblock(block_size):
    module = DropBlock2dReference(p=0.3, block_size=block_size)  # the article's module could not be built
    assert module.training
    x = _x()
    torch.manual_seed(0)
    y = module(x)
    assert bm.check_dropblock_output(x, y, 0.3, block_size).ok
    assert drop_block2d_reference(x, 0.3, block_size, training=False) is x
    assert drop_block2d_reference(x, 0.0, block_size) is x


def test_reference_blocks_lie_inside_the_map():
    x = torch.ones(64, 1, 9, 9)
    torch.manual_seed(0)
    dropped = drop_block2d_reference(x, 0.5, 9) == 0
    # block == map: a plane is either fully dropped or fully kept (a single valid seed position)
    per_plane = dropped.flatten(1).float().mean(1)
    assert set(per_plane.tolist()) <= {0.0, 1.0}
    assert 0 < per_plane.sum() < 64


def test_failed_implementation_is_reported_not_timed():
    bad = bm.Impl("bad", "doubles everything", False, lambda p, b, dt, dev: (lambda x: x * 2))
    ours = bm.Impl("ours", "dropblock_cuda", False,
                   lambda p, b, dt, dev: (lambda x: dropblock_cuda.drop_block2d(x, p, b)))
    rows = bm.measure_config([ours, bad], (2, 4, 12, 12), torch.float32, 3, 0.2, torch.device("cpu"),
                             repeats=1, warmup=0, max_time_s=0.1)
    by = {r["impl"]: r for r in rows}
    assert by["ours"]["status"] == "ok" and by["ours"]["fwd_ms"] > 0
    assert by["bad"]["status"] == "FAILED" and by["bad"]["reason"]
    assert by["bad"]["fwd_ms"] != by["bad"]["fwd_ms"]  # nan: not timed
    assert "FAILED" in bm.format_table(rows)


def test_saved_bytes_excludes_the_input():
    x = _x()
    assert bm.saved_bytes_for_backward(lambda t: t * 2.0, x) == 0
    # ours keeps one bit per element (plus a scalar scale)
    ours = bm.saved_bytes_for_backward(lambda t: dropblock_cuda.drop_block2d(t, 0.3, 3), x)
    assert 0 < ours < x.numel() * x.element_size()


def _tiny_config(tmp_path, **kw):
    base = dict(shapes=[(6, 12, 12), (1, 4, 9, 9)], dtypes=["float32"], block_sizes=[3], batch=2, repeats=1,
                warmup=0, max_time_s=0.05, headline=False, compile=False, progress=False, quiet=True,
                out=str(tmp_path))
    base.update(kw)
    return bm.Config(**base)


def test_writers_produce_valid_files(tmp_path):
    result = bm.run_benchmark(_tiny_config(tmp_path))
    files = result["files"]
    with open(files["csv"]) as fh:
        rows = list(csv.DictReader(fh))
    impls = {r["impl"] for r in rows}
    assert {"floor", "ours", "ours_shared", "article"} <= impls
    assert {r["shape"] for r in rows} == {"2x6x12x12", "1x4x9x9"}
    assert all(r["status"] in ("ok", "FAILED", "SKIPPED", "ERROR") for r in rows)
    ours = [r for r in rows if r["impl"] == "ours"]
    assert all(r["status"] == "ok" and float(r["fwd_vs_ours"]) == 1.0 for r in ours)
    with open(files["json"]) as fh:
        data = json.load(fh)
    env = data["environment"]
    for key in ("device_name", "torch", "threads", "git_commit", "wall_s"):
        assert key in env
    assert len(data["rows"]) == len(rows)
    assert {s["impl"] for s in data["summary"]} == impls - {"floor", "ours", "ours_shared"}
    md = Path(files["markdown"]).read_text()
    assert "**Summary**" in md
    assert md.count("\n|") >= len(rows)
    if "png" in files:
        png = Path(files["png"]).read_bytes()
        assert png.startswith(PNG_SIGNATURE) and len(png) > 1000


def test_plot_skips_cleanly_without_rows(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "empty.png"
    assert bm.write_plot([], str(path))
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_cli_quick_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(bm.HEADLINE, "shape", (2, 4, 14, 14))  # the headline path, on a tiny tensor
    code = bm.main(["--quick", "--shapes", "4x12x12", "--batch", "2", "--repeats", "1", "--warmup", "0",
                    "--no-compile", "--no-progress", "--threads", "1", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "Headline" in out and "per_channel_fwd_over_floor" in out
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["headline"]["ratios"]["per_channel_fwd_over_floor"] is not None
    assert {r["section"] for r in data["rows"]} == {"headline", "sweep"}
    assert {r["block_size"] for r in data["rows"] if r["section"] == "sweep"} == {7}
    assert (tmp_path / "results.csv").exists() and (tmp_path / "results.md").exists()


def test_parse_flags():
    cfg = bm.config_from_args(["--shapes", "resnet50,3x8x8,1x2x5x5", "--block-sizes", "3,5", "--dtype",
                               "bfloat16", "--device", "cpu"])
    assert list(cfg.shapes)[:4] == list(bm.RESNET50_STAGES)
    assert cfg.shapes[4:] == [(3, 8, 8), (1, 2, 5, 5)]
    assert cfg.block_sizes == [3, 5] and cfg.dtypes == ["bfloat16"]
    with pytest.raises(SystemExit):
        bm.config_from_args(["--dtype", "int8"])


def test_gpu_bench_table_and_saved_bytes_without_a_gpu():
    from benchmarks import gpu_bench

    # saved_bytes_per_element counts what autograd keeps besides the input: 1 bit per element
    # plus the 8-byte scale for ours.
    x = _x((2, 4, 16, 16))
    saved = gpu_bench.saved_bytes_per_element(lambda t: dropblock_cuda.drop_block2d(t, 0.1, 7), x)
    assert saved == pytest.approx(1 / 8 + 8 / x.numel())

    full = {"shape": [128, 256, 56, 56], "dtype": "float32", "numel": 128 * 256 * 56 * 56, "copy_ms": 0.5, "forward_ms": 0.6,
            "forward_over_copy": 1.2, "forward_graph_ms": 0.55, "forward_graph_over_copy": 1.1, "mask_ms": 0.05,
            "backward_ms": 0.52, "backward_over_copy": 1.04, "channels_last_backward_over_copy": 1.3,
            "fwd_bwd_ms": 1.2, "saved_bytes_per_element": 0.125}
    failed_graph = {k: v for k, v in full.items() if not k.startswith("forward_graph")}
    failed_graph["forward_graph_error"] = "RuntimeError('capture')"
    table = gpu_bench.markdown([full, failed_graph], "Test GPU")
    rows = [line for line in table.splitlines() if line.startswith("| 128x256x56x56")]
    header = next(line for line in table.splitlines() if line.startswith("| shape"))
    assert len(rows) == 2 and all(row.count("|") == header.count("|") for row in rows)
    # The graph replay's cells, then bwd/copy, cl fwd/copy (not measured), cl bwd/copy.
    assert "| 0.550 | 1.10 |" in rows[0] and "| - | - |" in rows[1] and "| 1.04 | - | 1.30 |" in rows[0]
    assert "| 0.100 |" in rows[0]  # mask/fp32 copy: 0.05 ms over the copy's 0.5 ms


def test_gpu_bench_target_verdicts():
    from benchmarks import gpu_bench

    numel = 128 * 256 * 56 * 56
    good = {"shape": [128, 256, 56, 56], "dtype": "float32", "block": 7, "numel": numel, "copy_ms": 1.0,
            "mask_ms": 0.04, "forward_over_copy": 1.1, "backward_over_copy": 1.05,
            "channels_last_forward_over_copy": 1.2, "transposed_forward_over_copy": 1.9,
            "torchvision_fwd_bwd_speedup": 12.0, "compiled_fwd_bwd_speedup": 1.3,
            "saved_bytes_per_element": 0.125 + 8 / numel}
    # bfloat16 at stage 1: its mask over the float32 copy of the same shape (0.06 / 1.0).
    bad = dict(good, dtype="bfloat16", copy_ms=0.5, mask_ms=0.06, forward_over_copy=1.16,
               transposed_forward_over_copy=2.5, compiled_fwd_bwd_speedup=0.9, saved_bytes_per_element=0.126)
    del bad["torchvision_fwd_bwd_speedup"]  # torchvision not measured for this case
    late = dict(good, shape=[128, 2048, 7, 7], numel=128 * 2048 * 49, forward_over_copy=1.39, block=3,
                saved_bytes_per_element=0.125 + 8 / (128 * 2048 * 49))
    verdicts = {v["target"]: v for v in gpu_bench.target_verdicts([good, bad, late])}
    assert len(verdicts) == len(gpu_bench.TARGETS) == 9
    early, stages_3_4 = verdicts["forward <= 1.15x copy, stages 1-2"], verdicts["forward <= 1.4x copy, stages 3-4"]
    assert (early["measured"], early["met"], early["failed_cases"]) == (2, 1, ["128x256x56x56 bfloat16 b7"])
    assert early["worst"] == 1.16 and early["worst_case"] == "128x256x56x56 bfloat16 b7"
    assert (stages_3_4["measured"], stages_3_4["met"], stages_3_4["worst"]) == (1, 1, 1.39)
    mask = verdicts["mask <= 0.05x the fp32 copy"]
    assert (mask["measured"], mask["met"], mask["worst"]) == (3, 2, pytest.approx(0.06))
    assert verdicts["transposed view forward <= 2x copy"]["failed_cases"] == ["128x256x56x56 bfloat16 b7"]
    tv = verdicts["fwd+bwd >= 10x torchvision"]
    assert (tv["measured"], tv["met"], tv["worst"]) == (2, 2, 12.0)
    assert verdicts["fwd+bwd faster than torch.compile of it"]["worst"] == 0.9
    assert verdicts["saved <= 1/8 byte per element"]["met"] == 2
    table = gpu_bench.markdown([good, bad, late], "Test GPU")
    assert "| forward <= 1.15x copy, stages 1-2 | 1 of 2 | 1.16 (128x256x56x56 bfloat16 b7) | " \
           "128x256x56x56 bfloat16 b7 |" in table
    assert "| backward <= 1.1x copy | 3 of 3 | 1.05 (128x256x56x56 float32 b7) | - |" in table
    text = gpu_bench.targets_text([good, bad, late], "Test GPU")
    assert "  NOT MET       forward <= 1.15x copy, stages 1-2: 1 of 2 cases, worst 1.16 (128x256x56x56 bfloat16 b7)" \
        in text
    assert "  MET           fwd+bwd >= 10x torchvision: 2 of 2 cases, worst 12 (128x256x56x56 float32 b7)" in text
    assert "not measured" in gpu_bench.markdown([{"shape": [1, 1, 1, 1], "dtype": "float32", "numel": 1}], "GPU")
    assert "NOT MEASURED  backward" in gpu_bench.targets_text([], "GPU")
    host = gpu_bench.targets_text([], "GPU", {"forward_us": 12.0, "dropout_forward_us": 7.5}).splitlines()[-1]
    assert host == "  NOT MET       host time per eager forward <= 1.5x F.dropout's: 1.6 (12.0 us against 7.5 us)"
    assert gpu_bench.targets_text([], "GPU", {"forward_us": 9.0, "dropout_forward_us": 7.5}).splitlines()[-1] \
        .startswith("  MET           host time")
    assert gpu_bench.targets_text([], "GPU", {"forward_us": 9.0}).endswith("NOT MEASURED  host time per eager forward "
                                                                            "<= 1.5x F.dropout's\n")


def test_sanitizer_smoke_script_runs_on_the_cpu_kernels(capsys):
    # A dry run of the script gpu_check.sh runs under compute-sanitizer: its Python (every case,
    # both mask paths' settings, the views) is exercised here; the comparison is CPU against CPU.
    from benchmarks import sanitizer_smoke

    assert sanitizer_smoke.main("cpu") == 0
    assert "sanitizer_smoke: OK" in capsys.readouterr().out
    assert torch.ops.dropblock_cuda._set_cuda_mask_kernel("auto") == "auto"  # the script restores the default


# benchmarks/gpu_check.sh's steps in the order; the optional ones run when time allows.
GPU_CHECK_STEPS = ["build", "tests_cuda", "bench", "memcheck", "racecheck", "tests_ecosystem", "bench_peers",
                   "bench_compiled"]
GPU_CHECK = ROOT / "benchmarks" / "gpu_check.sh"


def gpu_check(tmp_path, *args, **env):
    """Runs gpu_check.sh in tmp_path with `env` added (strings); returns the CompletedProcess."""
    env = dict(os.environ, TMPDIR=str(tmp_path), **env)
    return subprocess.run(["bash", str(GPU_CHECK), *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)


def summary_lines(summary):
    """{step: (verdict, result)} from the step lines of a gpu_check summary."""
    lines = {}
    for line in summary.splitlines():
        fields = line.split(None, 4)
        if fields and fields[0] in GPU_CHECK_STEPS:
            lines[fields[0]] = (fields[1], fields[4] if len(fields) > 4 else "")
    return lines


def test_gpu_check_plan_fits_its_budget_in_under_7_minutes(tmp_path):
    plan = gpu_check(tmp_path, "--plan")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    steps = [line.split()[0] for line in plan.stdout.splitlines()[1:-1]]
    assert steps == GPU_CHECK_STEPS
    need, budget = map(int, re.search(r"required: (\d+) s .* of a (\d+) s budget", plan.stdout).groups())
    # Every required step gets its whole cap; the budget, and the last step's grace, under 7 minutes.
    assert need <= budget and budget + 5 <= 420
    caps = {line.split()[0]: (int(line.split()[1]), line.split()[2]) for line in plan.stdout.splitlines()[1:-1]}
    assert [s for s in GPU_CHECK_STEPS if caps[s][1] == "optional"] == ["racecheck", "bench_compiled"]
    # A budget that does not hold the caps is reported as such (status 1), and so is a cap raised
    # past it (CAP_<step>); an optional step's cap is not part of the sum.
    assert gpu_check(tmp_path, "--plan", TOTAL_BUDGET_S=str(need - 1)).returncode == 1
    assert gpu_check(tmp_path, "--plan", TOTAL_BUDGET_S=str(need), CAP_bench=str(caps["bench"][0] + 1)).returncode == 1
    assert gpu_check(tmp_path, "--plan", TOTAL_BUDGET_S=str(need), CAP_racecheck="999").returncode == 0


def test_gpu_check_script_packs_its_logs_for_the_device_machine(tmp_path):
    # Every step's command is `true` (PYTHON=true, SANITIZER=true): the script's steps, summary
    # and packing run, nothing is built. A device machine returns at most 8 files, at most 2
    # folders down.
    out = tmp_path / "out"
    out.mkdir()
    proc = gpu_check(tmp_path, PYTHON="true", SANITIZER="true", OUT=str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(path.relative_to(out).as_posix() for path in out.rglob("*"))
    assert files == ["gpu_check.tar.gz", "summary.txt"]
    summary = (out / "summary.txt").read_text()
    assert summary.startswith("gpu_check: ")
    assert {step: verdict for step, (verdict, _) in summary_lines(summary).items()} == \
        {step: "PASS" for step in GPU_CHECK_STEPS}
    order = [line.split()[0] for line in summary.splitlines() if line.split() and line.split()[0] in GPU_CHECK_STEPS]
    assert order == GPU_CHECK_STEPS
    assert "0 failed step(s), 0 skipped" in summary
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        packed = set(tar.getnames())
    assert {"gpu_check/summary.txt", "gpu_check/environment.log"} <= packed
    assert {f"gpu_check/{step}.log" for step in GPU_CHECK_STEPS} <= packed
    assert "packed: " in proc.stdout


def test_gpu_check_script_leaves_a_named_folder_unpacked(tmp_path):
    (tmp_path / "out").mkdir()
    proc = gpu_check(tmp_path, str(tmp_path / "logs"), PYTHON="true", OUT=str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not any((tmp_path / "out").iterdir())
    assert (tmp_path / "logs" / "summary.txt").is_file() and (tmp_path / "logs" / "bench_peers.log").is_file()


# A stand-in for python on a GPU machine, for gpu_check.sh: the CUDA tests outside test_cuda.py
# fail, those of test_cuda.py pass, gpu_bench writes its table and targets.txt, a step given SLEEP=1 hangs (and says
# when SIGINT reaches it).
FAKE_PYTHON = """#!/usr/bin/env bash
args="$*"
out=; prev=
for a in "$@"; do [[ $prev == --out ]] && out=$a; prev=$a; done
if [[ -n ${SLEEP_IN:-} && $args == *"$SLEEP_IN"* ]]; then
  trap 'echo "interrupted by SIGINT"; exit 130' INT
  sleep 30 & wait
fi
case $args in
  *"--ignore=tests/test_cuda.py"*) echo "1 failed, 3 passed in 0.52s"; exit 1 ;;
  *test_cuda.py*) echo "FAILED nothing"; echo "712 passed in 61.20s" ;;
  *"import dropblock_cuda"*) echo "cuda_version 13000" ;;
  *benchmarks.gpu_bench*)
    mkdir -p "$out"; echo "| table |" > "$out/gpu_bench.md"
    printf 'targets on Fake GPU (gpu_bench):\n  NOT MET       backward <= 1.1x copy: 3 of 4 cases, worst 1.2\n' > "$out/targets.txt"
    printf '  NOT MEASURED  mask <= 0.05x the fp32 copy\n' >> "$out/targets.txt" ;;
esac
exit 0
"""


def test_gpu_check_counts_failed_steps_lists_skips_and_targets(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    # 100 s: the required steps all start (they take no time here); racecheck, optional, would eat
    # into the later required steps' caps: skipped for lack of time, which is no failure.
    proc = gpu_check(tmp_path, PYTHON=str(fake), SANITIZER="true", OUT=str(out), TOTAL_BUDGET_S="100")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one failed step: the ecosystem tests
    summary = (out / "summary.txt").read_text()
    steps = summary_lines(summary)
    assert steps["tests_ecosystem"] == ("FAIL", steps["tests_ecosystem"][1])
    assert "rc=1; 1 failed, 3 passed in 0.52s" in steps["tests_ecosystem"][1]
    assert steps["tests_cuda"][1].endswith("712 passed in 61.20s") and steps["build"][1].endswith("cuda_version 13000")
    assert steps["racecheck"][0] == "SKIP" and "out of time" in steps["racecheck"][1]
    assert {step for step, (verdict, _) in steps.items() if verdict == "PASS"} == \
        set(GPU_CHECK_STEPS) - {"tests_ecosystem", "racecheck"}
    assert "1 failed step(s), 1 skipped" in summary
    # The targets of both benchmark runs follow the steps (the compiled run's measured ones only).
    assert summary.count("NOT MET       backward <= 1.1x copy") == 2 and summary.count("NOT MEASURED") == 1
    assert sorted(path.name for path in out.iterdir()) == ["gpu_bench.md", "gpu_bench_compiled.md", "gpu_check.tar.gz",
                                                            "summary.txt"]


def test_gpu_check_stops_a_step_at_its_cap_with_sigint(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    proc = gpu_check(tmp_path, str(tmp_path / "logs"), PYTHON=str(fake), SANITIZER="true", SLEEP_IN="--quick",
                     CAP_bench_peers="2", MIN_STEP_S="1", GPU_CHECK_STEPS="build bench_peers")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # bench_peers timed out: a failed step
    steps = summary_lines((tmp_path / "logs" / "summary.txt").read_text())
    assert steps["bench_peers"][0] == "TIMEOUT" and "interrupted by SIGINT" in steps["bench_peers"][1]
    assert steps["tests_cuda"] == ("SKIP", "not selected (GPU_CHECK_STEPS)")
    assert steps["racecheck"][0] == "SKIP"  # its smoke runs with --quick too, but it is not selected


def test_gpu_check_skips_everything_after_a_failed_build(tmp_path):
    proc = gpu_check(tmp_path, str(tmp_path / "logs"), PYTHON="false", SANITIZER="true")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    steps = summary_lines((tmp_path / "logs" / "summary.txt").read_text())
    assert steps["build"][0] == "FAIL"
    assert all(steps[step] == ("SKIP", "needs the build") for step in GPU_CHECK_STEPS[1:])


def test_gpu_check_selects_every_cuda_test_by_marker(tmp_path):
    # gpu_check.sh runs `-m cuda` of tests/test_cuda.py, then of every other file (conftest.py
    # marks each test that skips for want of a CUDA device): every test of tests/test_cuda.py is
    # selected, and of tests/test_ecosystem.py exactly those named for CUDA (what `-k cuda`
    # selected before). One collection of the whole suite; a plugin lists what it left out.
    (tmp_path / "list_deselected.py").write_text(
        "def pytest_deselected(items):\n    for item in items:\n        print('DESELECTED', item.nodeid)\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", "-p", "list_deselected",
                           "tests", "-m", "cuda"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path),
                                                                                          os.environ.get("PYTHONPATH")]))))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    deselected = {line.split()[1] for line in lines if line.startswith("DESELECTED ")}
    marked = {line for line in lines if "::" in line and not line.startswith("DESELECTED ")}
    cuda_file, ecosystem = "tests/test_cuda.py", "tests/test_ecosystem.py"
    assert not {t for t in deselected if t.startswith(cuda_file)}
    named = {t for t in marked | deselected if t.startswith(ecosystem) and "cuda" in t.split("::")[1]}
    assert {t for t in marked if t.startswith(ecosystem)} == named and len(named) >= 4
    assert len({t for t in marked if t.startswith(cuda_file)}) >= 700


class _HostEvent:
    """torch.cuda.Event's timing interface on the host clock."""

    def __init__(self, enable_timing=False):
        self.time = None

    def record(self):
        self.time = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return (end.time - self.time) * 1e3


def test_gpu_bench_case_runs_on_the_cpu_kernels(gpu_bench_on_cpu, fresh_dynamo):
    # A dry run of one case on CPU tensors, with host-clock events: every measurement (both mask
    # paths, channels_last, torchvision, the compiled reference) runs and lands in the table. The
    # CUDA graph replay needs a GPU: its error is recorded instead.
    from torchvision.ops import drop_block2d as tv_drop_block2d

    gpu_bench = gpu_bench_on_cpu
    args = gpu_bench.parse_args(["--repeats", "2", "--calls", "1", "--warmup", "1"])
    result = gpu_bench.bench_case((2, 16, 14, 14), torch.float32, args, torch.ops.dropblock_cuda,
                                  dropblock_cuda.drop_block2d, tv_drop_block2d, l2_bytes=2**20,
                                  compiled=gpu_bench.compiled_peer("default", tv_drop_block2d), block=3)
    assert "forward_graph_error" in result and "compiled_error" not in result and result["block"] == 3
    for key in ("copy_ms", "forward_ms", "forward_shared_over_copy", "mask_ms", "mask_scatter_ms", "forward_scatter_ms",
                "transposed_forward_over_copy", "backward_ms", "channels_last_forward_over_copy",
                "channels_last_backward_over_copy", "fwd_bwd_ms", "torchvision_fwd_bwd_ms", "compiled_fwd_bwd_ms",
                "torchvision_fwd_bwd_speedup", "compiled_fwd_bwd_speedup", "compiled_first_call_s"):
        assert result[key] > 0, key
    assert result["saved_bytes_per_element"] == pytest.approx(1 / 8 + 8 / result["numel"])
    assert torch.ops.dropblock_cuda._set_cuda_mask_kernel("auto") == "auto"  # the scatter timing restored it
    table = gpu_bench.markdown([result], "CPU dry run")
    row = next(line for line in table.splitlines() if line.startswith("| 2x16x14x14 | float32 | 3 |"))
    assert row.count(" - ") == 2  # only the graph replay's two cells are empty


def test_gpu_bench_kernel_names_and_breakdown_table():
    from benchmarks import gpu_bench

    name = gpu_bench.short_kernel_name
    assert name("void dropblock::cuda::(anonymous namespace)::apply_contiguous_kernel<float, 4, false>"
                "(float const*, float*, long, unsigned long const*, double const*, "
                "dropblock::cuda::SharedMaskBits)") == "apply_contiguous_kernel"
    assert name("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<long>, "
                "std::array<char*, 1ul> >(int, at::native::FillFunctor<long>, std::array<char*, 1ul>)") == \
        "vectorized_elementwise_kernel"
    assert name("Memset (Device)") == "Memset"
    assert name("Memcpy DtoD (Device -> Device)") == "Memcpy DtoD"
    assert name("void plain_kernel<8>(int)") == "plain_kernel"
    result = {"shape": [128, 2048, 7, 7], "dtype": "bfloat16", "block": 7, "numel": 128 * 2048 * 49,
              "forward_kernels_us": {"apply_contiguous_kernel": 17.25, "window_mask_kernel": 4.5, "Memset": 1.0}}
    table = gpu_bench.markdown([result], "GPU")
    assert "| 128x2048x7x7 | bfloat16 | 7 | forward | apply_contiguous_kernel 17.2, window_mask_kernel 4.5, " \
           "Memset 1.0 |" in table


@pytest.fixture
def gpu_bench_on_cpu(monkeypatch):
    """benchmarks.gpu_bench with its GPU-only parts stood in for: CPU tensors, host-clock events,
    made-up device properties and host overhead, two small shapes."""
    import functools
    import types

    from benchmarks import gpu_bench

    monkeypatch.setattr(torch.cuda, "Event", _HostEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(gpu_bench, "cuda_available", lambda: True)
    monkeypatch.setattr(gpu_bench, "device_properties",
                        lambda: types.SimpleNamespace(name="CPU dry run", L2_cache_size=2**16))
    monkeypatch.setattr(gpu_bench, "host_overhead", lambda fn: {"forward_us": 1.0})
    monkeypatch.setattr(gpu_bench, "SHAPES", [(16, 9, 9), (8, 7, 7)])
    monkeypatch.setattr(gpu_bench, "bench_case", functools.partial(gpu_bench.bench_case, device="cpu"))
    monkeypatch.setattr(gpu_bench, "profile_kernels", functools.partial(gpu_bench.profile_kernels, device="cpu"))
    return gpu_bench


def test_gpu_bench_main_writes_its_files(gpu_bench_on_cpu, tmp_path, capsys):
    # The script's driver (cases, JSON and markdown after every case, the printed table).
    gpu_bench = gpu_bench_on_cpu
    assert gpu_bench.main(["--out", str(tmp_path), "--batch", "2", "--repeats", "1", "--calls", "1",
                           "--compile", "off", "--no-torchvision"]) == 0
    data = json.loads((tmp_path / "gpu_bench.json").read_text())
    # float32 first (the bfloat16 masks are compared with its copies), then per shape both blocks.
    assert [(r["dtype"], r["shape"], r["block"]) for r in data["results"]] == [
        (dtype, shape, block) for dtype in ("float32", "bfloat16") for shape in ([2, 16, 9, 9], [2, 8, 7, 7])
        for block in (7, 3)]
    assert data["meta"]["device"] == "CPU dry run" and len(data["meta"]["targets"]) == len(gpu_bench.TARGETS)
    assert all(r["mask_over_fp32_copy"] > 0 for r in data["results"])
    table = (tmp_path / "gpu_bench.md").read_text()
    # A results row per case; the 2 rows of the kernel breakdown for the first block size only.
    assert table.count("| 2x8x7x7 | bfloat16 | 7 |") == 3 and table.count("| 2x8x7x7 | bfloat16 | 3 |") == 1
    assert "forward_us 1.0" in table
    targets = (tmp_path / "targets.txt").read_text()
    assert targets.startswith("targets on CPU dry run") and targets.count("\n") == len(gpu_bench.TARGETS) + 2
    # The profiler's pass comes after every case is timed (on the CPU it lists operators).
    for r in data["results"]:
        if r["block"] == 3:
            assert "forward_kernels_us" not in r
            continue
        assert "drop_block_apply" in r["forward_kernels_us"] and "drop_block_mask" in r["forward_kernels_us"], r
        assert "drop_block_apply" in r["fwd_bwd_kernels_us"], r
    assert table in capsys.readouterr().out


def test_gpu_bench_compiled_only_over_two_shapes(gpu_bench_on_cpu, monkeypatch, tmp_path, fresh_dynamo):
    # gpu_check.sh's compiled step: the copy, our forward+backward and the compiled peer's
    # (torchvision's drop_block2d), over two shapes (the second one recompiles with dynamic
    # shapes), nothing else.
    gpu_bench = gpu_bench_on_cpu
    monkeypatch.setattr(gpu_bench, "DTYPES", {"float32": torch.float32})
    assert gpu_bench.main(["--out", str(tmp_path), "--batch", "2", "--repeats", "1", "--calls", "1",
                           "--compiled-only", "--blocks", "7"]) == 0
    results = json.loads((tmp_path / "gpu_bench.json").read_text())["results"]
    assert len(results) == 2
    for r in results:
        assert "compiled_error" not in r and r["compiled_fwd_bwd_speedup"] > 0
        assert "forward_ms" not in r and "torchvision_fwd_bwd_ms" not in r and "forward_kernels_us" not in r
