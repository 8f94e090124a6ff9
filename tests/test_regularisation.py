"""The regularisation experiment (benchmarks/regularisation.py) on tiny sizes.

No timing assertions: the driver runs, writes valid files and gives numbers in range, and the
same numbers twice.
"""

import csv
import json
import socket
from pathlib import Path

import pytest
import torch
from benchmark_helpers import PNG_SIGNATURE, quiet_config

import dropblock_cuda
from benchmarks import regularisation as reg


def _tiny(tmp_path, **kw):
    return quiet_config(
        reg.Config, tmp_path, dict(datasets=["digits"], seeds=2, epochs=2, eval_points=2, limit=64, jobs=1), **kw
    )


def _numbers(result):
    return [
        (r["dataset"], r["arm"], r["seed"], r["test_acc"], r["train_acc"], r["train_loss"], r["curves"])
        for r in result["runs"]
    ]


def test_the_digits_ship_inside_scikit_learns_wheel_and_load_offline(monkeypatch):
    pytest.importorskip("sklearn")
    import importlib.resources

    assert importlib.resources.files("sklearn.datasets.data").joinpath("digits.csv.gz").is_file()

    def no_network(*args, **kwargs):
        raise AssertionError("the loader tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    x_train, y_train, x_test, y_test = reg.digits_split(0, 20)
    assert x_train.shape == (200, 1, 8, 8) and x_test.shape == (1597, 1, 8, 8)
    assert torch.bincount(y_train).tolist() == [20] * 10
    assert 0.0 <= float(x_train.min()) and float(x_train.max()) <= 1.0
    # A stratified split by the seed: another seed draws other images.
    assert not torch.equal(reg.digits_split(1, 20)[0], x_train)


def test_arrow_head_ships_inside_sktimes_wheel_and_loads_offline(monkeypatch):
    pytest.importorskip("sktime")
    import importlib.resources

    assert importlib.resources.files("sktime.datasets").joinpath("data/ArrowHead/ArrowHead_TRAIN.ts").is_file()
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network")))
    x_train, y_train, x_test, y_test = reg.arrow_head_split(0, 0)
    assert x_train.shape == (36, 1, 251) and x_test.shape == (175, 1, 251)
    assert set(y_train.tolist()) == set(y_test.tolist()) == {0, 1, 2}


def test_regularisation_is_deterministic_and_writes_its_files(tmp_path):
    pytest.importorskip("sklearn")
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    first = reg.run_experiment(_tiny(tmp_path / "a"))
    second = reg.run_experiment(_tiny(tmp_path / "b", jobs=2))  # in two worker processes: the same numbers
    assert _numbers(first) == _numbers(second)
    assert len(first["runs"]) == 2 * len(reg.ARMS)
    for r in first["runs"]:
        assert 0.0 <= r["test_acc"] <= 1.0 and 0.0 <= r["train_acc"] <= 1.0 and r["train_loss"] > 0
        assert r["curves"]["epoch"] == [1, 2] and r["train_size"] == r["test_size"] == 64
    ramped = [r for r in first["runs"] if r["arm"] == "dropblock"]
    assert ramped and all(r["final_p"] == pytest.approx(0.1) for r in ramped)  # the ramp reached p
    files = first["files"]
    with open(files["csv"]) as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == reg.CSV_FIELDS
        assert len(list(reader)) == len(first["runs"])
    summary = {s["arm"]: s for s in json.loads(Path(files["json"]).read_text())["summary"]}
    assert set(summary) == set(reg.ARMS) and all(s["seeds"] == 2 for s in summary.values())
    assert summary["none"]["diff_vs_none_mean"] == 0.0
    s = summary["dropblock"]
    assert s["test_acc_min"] <= s["test_acc_mean"] <= s["test_acc_max"]
    assert s["better_than_none"] + s["worse_than_none"] <= 2
    md = Path(files["md"]).read_text()
    assert md.count("| digits |") == len(reg.ARMS) and first["environment"]["git_commit"] in md
    assert Path(files["png"]).read_bytes().startswith(PNG_SIGNATURE)
    # The process's settings are restored.
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before


def test_regularisation_one_dimensional_path_uses_dropblock1d(tmp_path, monkeypatch):
    # A stand-in 1-d dataset (no sktime needed): the DropBlock1d network, its ramp and the writers.
    def split(seed, per_class):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(48, 1, 40, generator=gen)
        y = (x[:, 0, :20].mean(1) > 0).long()
        return x[:32], y[:32], x[32:], y[32:]

    monkeypatch.setitem(
        reg.DATASETS, "series", reg.Dataset("series", 1, "none", split, 0, 5, 3, 8, "synthetic", stem_kernel=7)
    )
    model = reg.SmallResNet(1, 1, 2, reg.make_regulariser("dropblock", 1, 0.1, 5))
    assert [type(m) for m in model.modules() if isinstance(m, dropblock_cuda.DropBlock1d)] == [
        dropblock_cuda.DropBlock1d
    ] * 2
    result = reg.run_experiment(_tiny(tmp_path, datasets=["series"], seeds=1, limit=None))
    assert {r["arm"] for r in result["runs"]} == set(reg.ARMS)
    assert all(r["epochs"] == 2 and r["train_size"] == 32 for r in result["runs"])
    assert result["datasets"]["series"]["block_size"] == 5


def test_a_missing_package_skips_its_dataset(tmp_path, monkeypatch):
    def split(seed, per_class):
        raise ImportError("No module named 'nothing_here'")

    monkeypatch.setitem(reg.DATASETS, "absent", reg.Dataset("absent", 1, "nothing_here", split, 0, 3, 1, 4, "absent"))
    result = reg.run_experiment(_tiny(tmp_path, datasets=["absent"]))
    assert result["runs"] == [] and "absent: needs nothing_here" in result["skipped"][0]
