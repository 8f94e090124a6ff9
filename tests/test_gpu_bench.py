"""benchmarks/gpu_bench.py without a GPU: its tables and target verdicts on made-up results, and
dry runs of its cases and driver on the CPU kernels (``--device cpu``)."""

import json

import pytest
import torch
from benchmark_helpers import random_input as _x

import dropblock_cuda
from benchmarks import gpu_bench
from benchmarks.measure import Timing


def test_gpu_bench_table_and_saved_bytes_without_a_gpu():
    # saved_bytes_per_element counts what autograd keeps besides the input: 1 bit per element
    # plus the 8-byte scale for ours.
    x = _x((2, 4, 16, 16))
    saved = gpu_bench.saved_bytes_per_element(lambda t: dropblock_cuda.drop_block2d(t, 0.1, 7), x)
    assert saved == pytest.approx(1 / 8 + 8 / x.numel())

    full = {
        "shape": [128, 256, 56, 56],
        "dtype": "float32",
        "numel": 128 * 256 * 56 * 56,
        "copy_ms": 0.5,
        "forward_ms": 0.6,
        "forward_over_copy": 1.2,
        "forward_graph_ms": 0.55,
        "forward_graph_over_copy": 1.1,
        "mask_ms": 0.05,
        "backward_ms": 0.52,
        "backward_over_copy": 1.04,
        "channels_last_backward_over_copy": 1.3,
        "fwd_bwd_ms": 1.2,
        "saved_bytes_per_element": 0.125,
    }
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
    numel = 128 * 256 * 56 * 56
    good = {
        "shape": [128, 256, 56, 56],
        "dtype": "float32",
        "block": 7,
        "numel": numel,
        "copy_ms": 1.0,
        "mask_ms": 0.04,
        "forward_over_copy": 1.1,
        "backward_over_copy": 1.05,
        "channels_last_forward_over_copy": 1.2,
        "transposed_forward_over_copy": 1.9,
        "torchvision_fwd_bwd_speedup": 12.0,
        "compiled_fwd_bwd_speedup": 1.3,
        "saved_bytes_per_element": 0.125 + 8 / numel,
    }
    # bfloat16 at stage 1: its mask over the float32 copy of the same shape (0.06 / 1.0).
    bad = dict(
        good,
        dtype="bfloat16",
        copy_ms=0.5,
        mask_ms=0.06,
        forward_over_copy=1.16,
        transposed_forward_over_copy=2.5,
        compiled_fwd_bwd_speedup=0.9,
        saved_bytes_per_element=0.126,
    )
    del bad["torchvision_fwd_bwd_speedup"]  # torchvision not measured for this case
    late = dict(
        good,
        shape=[128, 2048, 7, 7],
        numel=128 * 2048 * 49,
        forward_over_copy=1.39,
        block=3,
        saved_bytes_per_element=0.125 + 8 / (128 * 2048 * 49),
    )
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
    assert (
        "| forward <= 1.15x copy, stages 1-2 | 1 of 2 | 1.16 (128x256x56x56 bfloat16 b7) | "
        "128x256x56x56 bfloat16 b7 |" in table
    )
    assert "| backward <= 1.1x copy | 3 of 3 | 1.05 (128x256x56x56 float32 b7) | - |" in table
    text = gpu_bench.targets_text([good, bad, late], "Test GPU")
    assert (
        "  NOT MET       forward <= 1.15x copy, stages 1-2: 1 of 2 cases, worst 1.16 (128x256x56x56 bfloat16 b7)"
        in text
    )
    assert "  MET           fwd+bwd >= 10x torchvision: 2 of 2 cases, worst 12 (128x256x56x56 float32 b7)" in text
    assert "not measured" in gpu_bench.markdown([{"shape": [1, 1, 1, 1], "dtype": "float32", "numel": 1}], "GPU")
    assert "NOT MEASURED  backward" in gpu_bench.targets_text([], "GPU")
    host = gpu_bench.targets_text([], "GPU", {"forward_us": 12.0, "dropout_forward_us": 7.5}).splitlines()[-1]
    assert host == "  NOT MET       host time per eager forward <= 1.5x F.dropout's: 1.6 (12.0 us against 7.5 us)"
    assert (
        gpu_bench.targets_text([], "GPU", {"forward_us": 9.0, "dropout_forward_us": 7.5})
        .splitlines()[-1]
        .startswith("  MET           host time")
    )
    assert gpu_bench.targets_text([], "GPU", {"forward_us": 9.0}).endswith(
        "NOT MEASURED  host time per eager forward <= 1.5x F.dropout's\n"
    )


def test_gpu_bench_case_runs_on_the_cpu_kernels(fresh_dynamo):
    # A dry run of one case on CPU tensors (the host clock for the CUDA events): every
    # measurement (both mask paths, channels_last, torchvision, the compiled reference) runs and
    # lands in the table. The CUDA graph replay needs a GPU: its error is recorded instead.
    tv_drop_block2d = pytest.importorskip("torchvision.ops").drop_block2d

    run = gpu_bench.Run(Timing(repeats=2, calls=1, warmup=1), l2_bytes=2**20, device="cpu")
    subjects = gpu_bench.Subjects(
        torch.ops.dropblock_cuda,
        dropblock_cuda.drop_block2d,
        tv_drop_block2d,
        gpu_bench.compiled_peer("default", tv_drop_block2d),
    )
    result = gpu_bench.bench_case(gpu_bench.Case((2, 16, 14, 14), torch.float32, block=3), subjects, run)
    assert "forward_graph_error" in result and "compiled_error" not in result and result["block"] == 3
    for key in (
        "copy_ms",
        "forward_ms",
        "forward_shared_over_copy",
        "mask_ms",
        "mask_scatter_ms",
        "forward_scatter_ms",
        "transposed_forward_over_copy",
        "backward_ms",
        "channels_last_forward_over_copy",
        "channels_last_backward_over_copy",
        "fwd_bwd_ms",
        "torchvision_fwd_bwd_ms",
        "compiled_fwd_bwd_ms",
        "torchvision_fwd_bwd_speedup",
        "compiled_fwd_bwd_speedup",
        "compiled_first_call_s",
    ):
        assert result[key] > 0, key
    assert result["saved_bytes_per_element"] == pytest.approx(1 / 8 + 8 / result["numel"])
    assert torch.ops.dropblock_cuda._set_cuda_mask_kernel("auto") == "auto"  # the scatter timing restored it
    table = gpu_bench.markdown([result], "CPU dry run")
    row = next(line for line in table.splitlines() if line.startswith("| 2x16x14x14 | float32 | 3 |"))
    assert row.count(" - ") == 2  # only the graph replay's two cells are empty


def test_gpu_bench_kernel_names_and_breakdown_table():
    name = gpu_bench.short_kernel_name
    assert (
        name(
            "void dropblock::cuda::(anonymous namespace)::apply_contiguous_kernel<float, 4, false>"
            "(float const*, float*, long, unsigned long const*, double const*, "
            "dropblock::cuda::SharedMaskBits)"
        )
        == "apply_contiguous_kernel"
    )
    assert (
        name(
            "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<long>, "
            "std::array<char*, 1ul> >(int, at::native::FillFunctor<long>, std::array<char*, 1ul>)"
        )
        == "vectorized_elementwise_kernel"
    )
    assert name("Memset (Device)") == "Memset"
    assert name("Memcpy DtoD (Device -> Device)") == "Memcpy DtoD"
    assert name("void plain_kernel<8>(int)") == "plain_kernel"
    result = {
        "shape": [128, 2048, 7, 7],
        "dtype": "bfloat16",
        "block": 7,
        "numel": 128 * 2048 * 49,
        "forward_kernels_us": {"apply_contiguous_kernel": 17.25, "window_mask_kernel": 4.5, "Memset": 1.0},
    }
    table = gpu_bench.markdown([result], "GPU")
    assert (
        "| 128x2048x7x7 | bfloat16 | 7 | forward | apply_contiguous_kernel 17.2, window_mask_kernel 4.5, "
        "Memset 1.0 |" in table
    )


@pytest.fixture
def gpu_bench_on_cpu(monkeypatch):
    """benchmarks.gpu_bench for a dry run with --device cpu: two small shapes, and a made-up host
    overhead (its real value on the CPU is a host time, not a number to check)."""
    monkeypatch.setattr(gpu_bench, "host_overhead", lambda fn, device: {"forward_us": 1.0})
    monkeypatch.setattr(gpu_bench, "SHAPES", [(16, 9, 9), (8, 7, 7)])
    return gpu_bench


def _dry_run(gpu_bench, tmp_path, *flags):
    """gpu_bench's main on the CPU kernels, batch 2, one repeat of one call, into tmp_path."""
    return gpu_bench.main(
        ["--device", "cpu", "--out", str(tmp_path), "--batch", "2", "--repeats", "1", "--calls", "1", *flags]
    )


def test_gpu_bench_main_writes_its_files(gpu_bench_on_cpu, tmp_path, capsys):
    # The script's driver (cases, JSON and markdown after every case, the printed table).
    gpu_bench = gpu_bench_on_cpu
    assert _dry_run(gpu_bench, tmp_path, "--compile", "off", "--no-torchvision") == 0
    data = json.loads((tmp_path / "gpu_bench.json").read_text())
    # float32 first (the bfloat16 masks are compared with its copies), then per shape both blocks.
    assert [(r["dtype"], r["shape"], r["block"]) for r in data["results"]] == [
        (dtype, shape, block)
        for dtype in ("float32", "bfloat16")
        for shape in ([2, 16, 9, 9], [2, 8, 7, 7])
        for block in (7, 3)
    ]
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
    assert _dry_run(gpu_bench, tmp_path, "--compiled-only", "--blocks", "7") == 0
    results = json.loads((tmp_path / "gpu_bench.json").read_text())["results"]
    assert len(results) == 2
    for r in results:
        assert "compiled_error" not in r and r["compiled_fwd_bwd_speedup"] > 0
        assert "forward_ms" not in r and "torchvision_fwd_bwd_ms" not in r and "forward_kernels_us" not in r


def test_gpu_bench_host_overhead_dry_run_and_quick_flags():
    overhead = gpu_bench.host_overhead(dropblock_cuda.drop_block2d, "cpu")
    assert set(overhead) == {"forward_us", "forward_grad_us", "dropout_forward_us", "dropout_forward_grad_us"}
    assert all(us > 0 for us in overhead.values())
    args = gpu_bench.parse_args(["--quick"])
    assert (args.batch, args.calls, args.warmup, args.device) == (8, 2, 1, "cuda")
    if not torch.cuda.is_available():
        assert gpu_bench.main(["--device", "cuda"]) == 2  # no CUDA device: status 2, nothing measured
