"""benchmarks/gpu_check.sh without a GPU: its plan against the budget, its steps, summary and
packing with stand-ins for python and compute-sanitizer; the tests it selects by marker; the
script it runs under compute-sanitizer (benchmarks/sanitizer_smoke.py) on the CPU kernels."""

import os
import re
import subprocess
import sys
import tarfile

import torch
from benchmark_helpers import GPU_CHECK_OPTIONAL, GPU_CHECK_STEPS, ROOT, fake_python, gpu_check, summary_lines

from benchmarks import train_step as ts


def test_sanitizer_smoke_script_runs_on_the_cpu_kernels(capsys):
    # A dry run of the script gpu_check.sh runs under compute-sanitizer: its Python (every case,
    # both mask paths' settings, the views) is exercised here; the comparison is CPU against CPU.
    from benchmarks import sanitizer_smoke

    assert sanitizer_smoke.main("cpu") == 0
    assert "sanitizer_smoke: OK" in capsys.readouterr().out
    assert torch.ops.dropblock_cuda._set_cuda_mask_kernel("auto") == "auto"  # the script restores the default


def test_gpu_check_plan_fits_its_budget_in_under_7_minutes(tmp_path):
    plan = gpu_check(tmp_path, "--plan")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    steps = [line.split()[0] for line in plan.stdout.splitlines()[1:-1]]
    assert steps == GPU_CHECK_STEPS
    need, budget = map(int, re.search(r"required: (\d+) s .* of a (\d+) s budget", plan.stdout).groups())
    # Every required step gets its whole cap; the budget, and the last step's grace, under 7 minutes.
    assert need <= budget and budget + 5 <= 420
    caps = {line.split()[0]: (int(line.split()[1]), line.split()[2]) for line in plan.stdout.splitlines()[1:-1]}
    assert [s for s in GPU_CHECK_STEPS if caps[s][1] == "optional"] == GPU_CHECK_OPTIONAL
    # The training-step steps: about 45 s eager, about 2 minutes compiled, both only when time is left.
    assert (caps["train_step"][0], caps["train_step_compiled"][0]) == (45, 120)
    # A budget that does not hold the caps is reported as such (status 1), and so is a cap raised
    # past it (CAP_<step>); an optional step's cap is not part of the sum.
    assert gpu_check(tmp_path, "--plan", TOTAL_BUDGET_S=str(need - 1)).returncode == 1
    assert gpu_check(tmp_path, "--plan", TOTAL_BUDGET_S=str(need), CAP_bench=str(caps["bench"][0] + 1)).returncode == 1
    assert gpu_check(tmp_path, "--plan", TOTAL_BUDGET_S=str(need), CAP_racecheck="999").returncode == 0
    assert gpu_check(tmp_path, "--plan", TOTAL_BUDGET_S=str(need), CAP_train_step_compiled="999").returncode == 0


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
    assert {step: verdict for step, (verdict, _) in summary_lines(summary).items()} == {
        step: "PASS" for step in GPU_CHECK_STEPS
    }
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


def test_gpu_check_counts_failed_steps_lists_skips_and_targets(tmp_path):
    fake = fake_python(tmp_path)
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
    assert {step for step, (verdict, _) in steps.items() if verdict == "PASS"} == set(GPU_CHECK_STEPS) - {
        "tests_ecosystem",
        "racecheck",
    }
    assert "1 failed step(s), 1 skipped" in summary
    # The targets of both benchmark runs follow the steps (the compiled run's measured ones only).
    assert summary.count("NOT MET       backward <= 1.1x copy") == 2 and summary.count("NOT MEASURED") == 1
    # Then the training-step targets of both of its steps.
    assert summary.count("- MET: ours' DropBlock layers take <= 5% of an eager step") == 2
    assert "targets of train_step (train_step):" in summary and "targets of train_step_compiled" in summary
    assert sorted(path.name for path in out.iterdir()) == [
        "gpu_bench.md",
        "gpu_bench_compiled.md",
        "gpu_check.tar.gz",
        "summary.txt",
        "train_step.md",
        "train_step_compiled.md",
    ]


def test_gpu_check_runs_the_training_step_at_its_cuda_settings(tmp_path):
    # The two training-step steps' command lines are valid train_step flags, for the models and
    # modes the GPU check promises; the CUDA defaults (batch 128 or what fits, bf16 autocast,
    # channels_last) are train_step's own (tests/test_train_step.py checks them).
    log = tmp_path / "args.log"
    proc = gpu_check(
        tmp_path,
        str(tmp_path / "logs"),
        PYTHON=str(fake_python(tmp_path)),
        SANITIZER="true",
        ARGS_LOG=str(log),
        GPU_CHECK_STEPS="build train_step train_step_compiled",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line.split() for line in log.read_text().splitlines() if "benchmarks.train_step" in line]
    configs = [ts.config_from_args(words[words.index("benchmarks.train_step") + 1 :]) for words in lines]
    assert [(c.device, list(c.models), list(c.modes), c.rounds, c.warmup) for c in configs] == [
        ("cuda", ["timm_resnet50", "tv_resnet50"], ["eager"], 10, 1),
        ("cuda", ["tv_resnet50"], ["compile"], 10, 2),
    ]
    assert list(configs[0].variants) == list(ts.DEFAULT_VARIANTS)
    assert list(configs[1].variants) == ["ours", "torchvision"]  # the step without DropBlock is added to both
    assert all((c.batch, c.autocast, c.channels_last, c.progress) == (None, None, None, False) for c in configs)
    assert [c.out.split(os.sep)[-1] for c in configs] == ["train_step", "train_step_compiled"]
    steps = summary_lines((tmp_path / "logs" / "summary.txt").read_text())
    assert steps["train_step"][0] == steps["train_step_compiled"][0] == "PASS"


def test_gpu_check_stops_a_step_at_its_cap_with_sigint(tmp_path):
    proc = gpu_check(
        tmp_path,
        str(tmp_path / "logs"),
        PYTHON=str(fake_python(tmp_path)),
        SANITIZER="true",
        SLEEP_IN="--quick",
        CAP_bench_peers="2",
        MIN_STEP_S="1",
        GPU_CHECK_STEPS="build bench_peers",
    )
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
        "def pytest_deselected(items):\n    for item in items:\n        print('DESELECTED', item.nodeid)\n"
    )
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--co",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "list_deselected",
            "tests",
            "-m",
            "cuda",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=pythonpath),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    deselected = {line.split()[1] for line in lines if line.startswith("DESELECTED ")}
    marked = {line for line in lines if "::" in line and not line.startswith("DESELECTED ")}
    cuda_file, ecosystem = "tests/test_cuda.py", "tests/test_ecosystem.py"
    assert not {t for t in deselected if t.startswith(cuda_file)}
    named = {t for t in marked | deselected if t.startswith(ecosystem) and "cuda" in t.split("::")[1]}
    assert {t for t in marked if t.startswith(ecosystem)} == named and len(named) >= 4
    assert len({t for t in marked if t.startswith(cuda_file)}) >= 700
