"""The measurement library of benchmarks/ (measure.py, reporting.py, environment.py, cli.py):
how many calls a timing loop makes and in which order, the memory counters, the summaries, the
writers and the flags every command shares. No timing assertions: the counts, orders and files."""

import csv
import json
import math
import time
import types

import pytest
import torch
from benchmark_helpers import random_input as _x

import dropblock_cuda
from benchmarks import benchmark as bm
from benchmarks import cli, gpu_bench, measure, regularisation, reporting
from benchmarks import train_step as ts
from benchmarks.environment import environment
from benchmarks.measure import Timing


class Recorder:
    """A call that records the indices it is called with."""

    def __init__(self):
        self.seen = []

    def __call__(self, i):
        self.seen.append(i)


def test_time_calls_warms_up_then_takes_every_sample_on_the_host_clock():
    call = Recorder()
    samples = measure.time_calls(call, Timing(repeats=4, warmup=2, calls=3), "cpu")
    assert len(samples) == 4 and all(ms >= 0 for ms in samples)
    assert call.seen == list(range(2 + 4 * 3))  # a running index: the caller rotates its inputs by it


def test_time_calls_stops_at_the_time_budget_after_the_minimum_repeats():
    call = Recorder()
    samples = measure.time_calls(call, Timing(repeats=50, warmup=0, max_time_s=0.0, min_repeats=3), "cpu")
    assert len(samples) == 3 and call.seen == [0, 1, 2]


class HostEvent:
    """torch.cuda.Event's timing interface on the host clock, and a log of what was recorded."""

    log = []

    def __init__(self, enable_timing=False):
        self.time = None

    def record(self):
        import time

        self.time = time.perf_counter()
        HostEvent.log.append("record")

    def elapsed_time(self, end):
        return (end.time - self.time) * 1e3


def test_time_calls_on_cuda_brackets_each_sample_with_events_and_waits_once(monkeypatch):
    # The CUDA path on the CPU: events stood in for, the synchronisations counted. The host never
    # waits between samples (the queue stays full); it waits once before reading the events.
    syncs = []
    HostEvent.log = []
    monkeypatch.setattr(torch.cuda, "Event", HostEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: syncs.append(len(HostEvent.log)))
    call = Recorder()
    samples = measure.time_calls(call, Timing(repeats=3, warmup=1, calls=2, max_time_s=0.0, min_repeats=1), "cuda")
    assert len(samples) == 3  # the time budget is the host clock's: every CUDA sample is taken
    assert call.seen == list(range(1 + 3 * 2))
    assert HostEvent.log == ["record"] * 6 and syncs == [0, 6]  # after the warm-up, then before reading


def test_interleaved_rounds_rotate_the_order_and_drop_the_warm_up():
    order = []
    calls = {key: (lambda i, key=key: order.append((key, i))) for key in "abc"}
    rounds = []
    times = measure.interleaved_rounds(calls, 3, "cpu", on_round=rounds.append)
    assert [key for key, _ in order] == list("abcbcacab")
    assert rounds == [0, 1, 2] and {key: len(ms) for key, ms in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_interleaved_rounds_turns_of_several_calls():
    order = []
    calls = {key: (lambda i, key=key: order.append((key, i))) for key in "ab"}
    times = measure.interleaved_rounds(
        calls, 2, "cpu", warmup_rounds=1, calls_per_turn=3, dropped_per_turn=1, rotate=False
    )
    # Round 0 warms up; each turn's first call is dropped: 2 timed rounds x 2 kept calls.
    assert {key: len(ms) for key, ms in times.items()} == {"a": 4, "b": 4}
    assert order[:6] == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    assert order[-3:] == [("b", 6), ("b", 7), ("b", 8)]  # round 2: indices 2 * 3 + i


def test_saved_bytes_excludes_the_input():
    x = _x()
    assert measure.saved_bytes_for_backward(lambda t: t * 2.0, x) == 0
    # ours keeps one bit per element (plus a scalar scale)
    ours = measure.saved_bytes_for_backward(lambda t: dropblock_cuda.drop_block2d(t, 0.3, 3), x)
    assert 0 < ours < x.numel() * x.element_size()
    assert gpu_bench.saved_bytes_per_element(lambda t: dropblock_cuda.drop_block2d(t, 0.3, 3), x) == ours / x.numel()


def test_geomean_quantile_median_ratio():
    assert measure.geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert measure.geomean([4.0, None, float("nan"), 0.0, -1.0]) == pytest.approx(4.0)  # only the positive numbers
    assert math.isnan(measure.geomean([])) and math.isnan(measure.geomean([float("nan")]))
    assert measure.quantile([1.0, 2.0, 3.0, 4.0], 0.25) == pytest.approx(1.75)
    assert measure.quantile([5.0], 0.75) == 5.0 and math.isnan(measure.quantile([], 0.5))
    assert measure.median([3.0, 1.0, 2.0]) == 2.0 and math.isnan(measure.median([]))
    assert measure.ratio(3.0, 2.0) == 1.5
    assert all(math.isnan(measure.ratio(a, b)) for a, b in ((1.0, 0.0), (None, 1.0), (1.0, float("nan"))))
    # The main benchmark's summary and the training step's percentiles are these functions.
    assert ts.overhead_stats([12.0, 14.0], [10.0, 10.0])[0] == pytest.approx(30.0)


def test_number_formatting_and_json_cleaning():
    assert reporting.fmt(1.23456) == "1.23" and reporting.fmt(2.5, "{:.1f}") == "2.5"
    assert reporting.fmt(None) == "-" and reporting.fmt(float("nan")) == "-"
    clean = reporting.json_clean({"a": float("nan"), "b": [1.0, float("inf"), (2, 3)], "c": "x"})
    assert clean == {"a": None, "b": [1.0, None, [2, 3]], "c": "x"}


def test_writers(tmp_path):
    rows = [{"b": 1, "a": 2.5, "extra": "left out"}, {"a": 3}]
    reporting.write_csv(rows, tmp_path / "t.csv", ["a", "b"])
    with open(tmp_path / "t.csv") as fh:
        assert list(csv.reader(fh)) == [["a", "b"], ["2.5", "1"], ["3", ""]]
    reporting.write_json({"x": float("nan")}, tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text()) == {"x": None}
    result = {"environment": {"wall_s": 1.0}}
    files = reporting.write_results(
        str(tmp_path / "out"), "stem", result, rows, ["a"], "# table\n", lambda result, path: False, quiet=True
    )
    assert sorted(files) == ["csv", "json", "md"]  # no plot: said so in the result
    assert json.loads((tmp_path / "out" / "stem.json").read_text())["skipped"] == ["plot: matplotlib not installed"]
    assert (tmp_path / "out" / "stem.md").read_text() == "# table\n"


def test_progress_counts_and_stays_silent_when_disabled(capsys):
    progress = reporting.Progress(3, enabled=False)
    progress("one")
    progress("two")
    progress.close()
    assert progress.count == 2 and capsys.readouterr().err == ""


def test_environment_names_the_machine_and_the_commit():
    env = environment(torch.device("cpu"), 2)
    assert set(env) == {
        "device",
        "device_name",
        "torch",
        "torchvision",
        "timm",
        "dropblock",
        "dropblock_cuda",
        "python",
        "threads",
        "cpu_count",
        "git_commit",
        "timestamp",
    }
    assert env["device"] == "cpu" and env["threads"] == 2 and env["torch"] == torch.__version__


PARSERS = {
    "python -m benchmarks": bm.build_parser,
    "gpu_bench": gpu_bench.build_parser,
    "train_step": ts.build_parser,
    "regularisation": regularisation.build_parser,
}


def _help(parser_factory):
    return {action.dest: action.help for action in parser_factory()._actions}


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_shared_flags_mean_one_thing_in_every_command(command):
    helps = _help(PARSERS[command])
    assert helps["quick"].startswith(f"smoke run: {cli.QUICK_REPEATS} repeats and ")
    assert helps["out"] == "output folder (default benchmarks/results)"
    for dest, prefix in (
        ("threads", "torch threads per process"),
        ("warmup", "untimed "),
        ("no_progress", "no progress bar"),
    ):
        if dest in helps:
            assert helps[dest].startswith(prefix), (dest, helps[dest])


def test_quick_takes_the_shared_number_of_repeats_everywhere():
    assert bm.config_from_args(["--quick"]).repeats == cli.QUICK_REPEATS
    assert gpu_bench.parse_args(["--quick"]).repeats == cli.QUICK_REPEATS
    quick = ts.config_from_args(["--quick"])
    assert (quick.rounds, quick.models, quick.modes) == (cli.QUICK_REPEATS, list(ts.QUICK_MODELS), ["eager"])
    quick = regularisation.config_from_args(["--quick"])
    assert (quick.seeds, quick.datasets) == (cli.QUICK_REPEATS, list(regularisation.QUICK_DATASETS))


def test_quick_changes_defaults_never_an_explicit_flag():
    assert bm.config_from_args(["--quick", "--max-time", "1"]).max_time_s == 1.0
    assert bm.config_from_args([]).max_time_s == 0.6 and bm.config_from_args(["--quick"]).max_time_s == 0.3
    args = gpu_bench.parse_args(["--quick", "--batch", "16", "--warmup", "0"])
    assert (args.batch, args.repeats, args.warmup) == (16, cli.QUICK_REPEATS, 0)
    assert vars(gpu_bench.parse_args([])).items() >= {"batch": 128, "repeats": 9, "calls": 5, "warmup": 3}.items()
    quick = ts.config_from_args(["--quick", "--models", "tv_resnet50", "--rounds", "5"])
    assert (quick.models, quick.modes, quick.rounds, quick.warmup) == (["tv_resnet50"], ["eager"], 5, 1)
    full = ts.config_from_args([])
    assert (list(full.models), list(full.modes), full.rounds, full.warmup) == (
        list(ts.DEFAULT_MODELS),
        list(ts.MODES),
        None,
        2,
    )  # rounds: the device's default, set by plan()
    assert regularisation.config_from_args(["--quick", "--seeds", "1"]).seeds == 1
    assert regularisation.config_from_args([]).seeds == 5


def test_resolve_defaults():
    import argparse

    args = argparse.Namespace(quick=True, a=None, b=None, c=7)
    assert vars(cli.resolve_defaults(args, full=dict(a=1, b=2, c=3), quick=dict(a=10))) == dict(
        quick=True, a=10, b=2, c=7
    )


def test_config_of_takes_the_named_flags_and_progress():
    import argparse

    args = argparse.Namespace(a=1, b=[2], c=3, no_progress=True)
    assert cli.config_of(dict, args, "a b", d=4) == dict(a=1, b=[2], progress=False, d=4)


def test_result_head_is_the_environment_then_the_config():
    wall0 = time.perf_counter()
    head = reporting.result_head(ts.Config(models=["tv_resnet18"]), torch.device("cpu"), 2, wall0, jobs=3)
    assert list(head) == ["environment", "config"] and head["config"]["models"] == ["tv_resnet18"]
    env = head["environment"]
    assert list(env)[-2:] == ["jobs", "wall_s"] and env["jobs"] == 3 and 0 <= env["wall_s"] < 60
    assert env["threads"] == 2 and env["device"] == "cpu"


def test_names_and_ints():
    assert cli.names(" a, b,,c ") == ["a", "b", "c"] and cli.ints("7, 3") == [7, 3]
    assert cli.main_of(lambda cfg: cfg, lambda argv: types.SimpleNamespace(argv=argv), ["x"]) == 0


@pytest.mark.parametrize(
    "path", ["benchmarks/measure.py", "benchmarks/train_step.py", "benchmarks/gpu_bench.py", "benchmarks/benchmark.py"]
)
def test_cuda_only_code_binds_every_name_it_uses(path):
    # The CUDA branches of these files run on a GPU machine only: a name used there but never
    # bound would be a NameError in the GPU check, not here.
    from benchmark_helpers import ROOT
    from test_static_checks import unbound_names

    assert unbound_names((ROOT / path).read_text(), path) == []
