"""Does DropBlock regularise? A small, offline, deterministic experiment on real data.

Run ``python -m benchmarks.regularisation`` (``--help`` lists the flags; the packages are in
``benchmarks/requirements-experiments.txt``). It trains a small ResNet-style CNN on data that a
pip package ships inside its wheel (nothing is downloaded at run time), in a regime where the
network overfits (a small training split), once per (arm, seed):

- ``none``: no regularisation;
- ``dropout``: ``nn.Dropout(p)`` (element-wise), constant;
- ``dropout_channel``: ``nn.Dropout2d(p)`` / ``nn.Dropout1d(p)`` (whole channels), constant;
- ``dropblock``: ``dropblock_cuda.DropBlock2d`` / ``DropBlock1d``, ``p`` ramped linearly from 0 to
  ``p`` over the whole training by ``dropblock_cuda.LinearScheduler`` (the paper's schedule).

Every arm uses the same network, positions (after each residual stage), drop rate, optimizer,
schedule, epochs and batches; for one seed every arm starts from the same weights and sees the
same split and the same batch order, so the arms are compared seed by seed. The hyperparameters
are fixed in ``DATASETS`` / ``Config`` before any run and are not tuned per arm. The reported
number is the test accuracy after the last epoch (no early stopping on the test set).

Datasets: ``digits`` (scikit-learn's ``load_digits``: 1797 8x8 images, 10 classes; 20 training
images per class drawn by the seed, the other 1597 are the test set) and ``arrowhead`` (the UCR
ArrowHead series bundled by sktime: 36 training / 175 test series of length 251, 3 classes; the
official split), which exercises ``DropBlock1d``. A dataset whose package is missing is skipped
with a note.

Results: ``regularisation.{csv,json,md}`` and the learning curves ``regularisation.png`` in
``benchmarks/results/`` (``--out``). Reruns with the same flags and thread count give the same
numbers (seeded generators, deterministic algorithms, a fixed thread count).
"""

import argparse
import functools
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

if __package__ in (None, ""):  # python benchmarks/regularisation.py: import this folder as the package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[0]))))
    __package__ = "benchmarks"

from . import cli, reporting  # noqa: E402
from .reporting import fmt  # noqa: E402

ARMS = ("none", "dropout", "dropout_channel", "dropblock")
ARM_LABELS = {
    "none": "no regularisation",
    "dropout": "nn.Dropout",
    "dropout_channel": "nn.Dropout2d / Dropout1d",
    "dropblock": "DropBlock + LinearScheduler",
}
CSV_FIELDS = [
    "dataset",
    "arm",
    "seed",
    "test_acc",
    "train_acc",
    "train_loss",
    "epochs",
    "train_size",
    "test_size",
    "wall_s",
]


# --------------------------------------------------------------------------------------------
# Data: loaders of what a wheel ships
# --------------------------------------------------------------------------------------------


def load_digits_tensors() -> Tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits (a csv.gz inside its wheel): (1797, 1, 8, 8) float32 in [0, 1], labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(data.target, dtype=torch.long)


def load_arrow_head_tensors(split: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """The UCR ArrowHead split bundled by sktime (a .ts file inside its wheel): (n, 1, 251), labels.
    UCR series are z-normalised already."""
    from sktime.datasets import load_arrow_head

    x, y = load_arrow_head(split=split, return_type="numpy3D")
    classes = sorted(set(y.tolist()))
    return (
        torch.tensor(x, dtype=torch.float32),
        torch.tensor([classes.index(v) for v in y.tolist()], dtype=torch.long),
    )


def split_per_class(x: torch.Tensor, y: torch.Tensor, per_class: int, seed: int):
    """A stratified split: ``per_class`` training examples of each class, drawn by ``seed``; the rest test."""
    gen = torch.Generator().manual_seed(seed)
    train = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        train.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    train_idx = torch.sort(torch.cat(train)).values
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[train_idx] = False
    return x[train_idx], y[train_idx], x[mask], y[mask]


def digits_split(seed: int, per_class: int):
    x, y = load_digits_tensors()
    return split_per_class(x, y, per_class, seed)


def arrow_head_split(seed: int, per_class: int):
    # The official split (the seed draws the weights and the batches only).
    return load_arrow_head_tensors("train") + load_arrow_head_tensors("test")


@dataclass
class Dataset:
    name: str
    dims: int  # spatial dimensions: 2 (images) or 1 (series)
    package: str  # the pip package that ships the data
    split: Callable  # split(seed, per_class) -> (x_train, y_train, x_test, y_test)
    per_class: int  # training examples per class, where the split is drawn (0: official split)
    block_size: int
    epochs: int
    batch: int
    description: str
    stem_kernel: int = 3


# Fixed up front, the same for every arm. Block sizes: about the paper's block-to-map ratio
# (block 7 on 14x14 and 7x7 maps there; here block 3 on the 8x8 and 4x4 maps of the digits,
# block 7 on series of 251 and 126 steps).
DATASETS: Dict[str, Dataset] = {
    "digits": Dataset(
        "digits",
        2,
        "scikit-learn",
        digits_split,
        per_class=20,
        block_size=3,
        epochs=60,
        batch=32,
        description="scikit-learn load_digits, 8x8, 10 classes, 20 training images per class",
    ),
    "arrowhead": Dataset(
        "arrowhead",
        1,
        "sktime",
        arrow_head_split,
        per_class=0,
        block_size=7,
        epochs=150,
        batch=12,
        stem_kernel=7,
        description="UCR ArrowHead (sktime), length 251, 3 classes, official 36/175 split",
    ),
}


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


def _layers(dims: int):
    return (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the shortcut (a 1x1 conv-BN when the shape changes), then ReLU."""

    def __init__(self, dims: int, cin: int, cout: int, stride: int, kernel: int = 3):
        super().__init__()
        conv, bn = _layers(dims)
        self.conv1 = conv(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.bn1 = bn(cout)
        self.conv2 = conv(cout, cout, kernel, 1, kernel // 2, bias=False)
        self.bn2 = bn(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, stride, bias=False), bn(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem, two residual stages (the second halves the map), global average pool, linear. The
    regulariser follows each stage, as the paper places DropBlock after the blocks of groups 3-4."""

    def __init__(
        self,
        dims: int,
        in_channels: int,
        classes: int,
        make_reg: Callable[[], nn.Module],
        widths: Tuple[int, int] = (32, 64),
        stem_kernel: int = 3,
    ):
        super().__init__()
        conv, bn = _layers(dims)
        self.stem = nn.Sequential(
            conv(in_channels, widths[0], stem_kernel, 1, stem_kernel // 2, bias=False),
            bn(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.stage1 = ResidualBlock(dims, widths[0], widths[0], 1)
        self.reg1 = make_reg()
        self.stage2 = ResidualBlock(dims, widths[0], widths[1], 2)
        self.reg2 = make_reg()
        self.head = nn.Linear(widths[1], classes)

    def forward(self, x):
        x = self.reg1(self.stage1(self.stem(x)))
        x = self.reg2(self.stage2(x))
        return self.head(x.flatten(2).mean(2))


def make_regulariser(arm: str, dims: int, p: float, block_size: int) -> Callable[[], nn.Module]:
    import dropblock_cuda

    if arm == "none":
        return nn.Identity
    if arm == "dropout":
        return lambda: nn.Dropout(p)
    if arm == "dropout_channel":
        return lambda: (nn.Dropout1d if dims == 1 else nn.Dropout2d)(p)
    if arm == "dropblock":
        cls = dropblock_cuda.DropBlock1d if dims == 1 else dropblock_cuda.DropBlock2d
        return lambda: cls(0.0, block_size)  # p is set by the LinearScheduler
    raise ValueError(f"arm {arm!r}: expected one of {', '.join(ARMS)}")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Tuple[float, float]:
    """(accuracy, mean cross-entropy) in eval mode, where every regulariser is the identity."""
    model.eval()
    logits = model(x)
    return float((logits.argmax(1) == y).float().mean()), float(F.cross_entropy(logits, y))


def train_one(ds: Dataset, arm: str, seed: int, data, cfg: "Config") -> dict:
    """Trains one (dataset, arm, seed) and returns its final numbers and per-epoch curves."""
    import dropblock_cuda

    x_train, y_train, x_test, y_test = data
    epochs = cfg.epochs if cfg.epochs is not None else ds.epochs
    classes = int(torch.cat([y_train, y_test]).max()) + 1
    torch.manual_seed(seed)  # the weights (the same for every arm: regularisers hold no parameters) and the masks
    model = SmallResNet(
        ds.dims,
        x_train.shape[1],
        classes,
        make_regulariser(arm, ds.dims, cfg.p, ds.block_size),
        widths=tuple(cfg.widths),
        stem_kernel=ds.stem_kernel,
    )
    steps_per_epoch = math.ceil(len(y_train) / ds.batch)
    total_steps = epochs * steps_per_epoch
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    ramp = dropblock_cuda.LinearScheduler(model, stop_p=cfg.p, total_steps=total_steps) if arm == "dropblock" else None
    order = torch.Generator().manual_seed(seed + 1)  # the batch order, the same for every arm
    # Evaluating the 1597 digits costs as much as 15 training steps: about cfg.eval_points times
    # per training (and after the last epoch), not after every epoch.
    every = max(1, epochs // max(1, cfg.eval_points))
    curves = {"epoch": [], "train_loss": [], "train_acc": [], "test_acc": [], "test_loss": []}
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(y_train), generator=order)
        losses = []
        for i in range(0, len(perm), ds.batch):
            idx = perm[i : i + ds.batch]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr_schedule.step()
            if ramp is not None:
                ramp.step()
            losses.append(float(loss.detach()))
        if epoch % every and epoch != epochs:
            continue
        train_acc, _ = evaluate(model, x_train, y_train)
        test_acc, test_loss = evaluate(model, x_test, y_test)
        curves["epoch"].append(epoch)
        curves["train_loss"].append(statistics.fmean(losses))
        curves["train_acc"].append(train_acc)
        curves["test_acc"].append(test_acc)
        curves["test_loss"].append(test_loss)
    return {
        "dataset": ds.name,
        "arm": arm,
        "seed": seed,
        "test_acc": curves["test_acc"][-1],
        "train_acc": curves["train_acc"][-1],
        "train_loss": curves["train_loss"][-1],
        "epochs": epochs,
        "train_size": len(y_train),
        "test_size": len(y_test),
        "wall_s": round(time.perf_counter() - t0, 2),
        "final_p": ramp.p if ramp is not None else (0.0 if arm == "none" else cfg.p),
        "curves": curves,
    }


# --------------------------------------------------------------------------------------------
# Statistics and output
# --------------------------------------------------------------------------------------------


def summarize(runs: List[dict]) -> List[dict]:
    """Per (dataset, arm): mean, sample standard deviation, min and max of the final test accuracy
    over the seeds, and the seed-by-seed difference from ``none`` (mean, standard deviation, and in
    how many seeds the arm is better / worse)."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        base = {r["seed"]: r["test_acc"] for r in runs if r["dataset"] == dataset and r["arm"] == "none"}
        for arm in dict.fromkeys(r["arm"] for r in runs if r["dataset"] == dataset):
            group = [r for r in runs if r["dataset"] == dataset and r["arm"] == arm]
            acc = [r["test_acc"] for r in group]
            diffs = [r["test_acc"] - base[r["seed"]] for r in group if r["seed"] in base]
            out.append(
                {
                    "dataset": dataset,
                    "arm": arm,
                    "label": ARM_LABELS.get(arm, arm),
                    "seeds": len(group),
                    "test_acc_mean": statistics.fmean(acc),
                    "test_acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                    "test_acc_min": min(acc),
                    "test_acc_max": max(acc),
                    "train_acc_mean": statistics.fmean(r["train_acc"] for r in group),
                    "diff_vs_none_mean": statistics.fmean(diffs) if diffs else float("nan"),
                    "diff_vs_none_std": statistics.stdev(diffs) if len(diffs) > 1 else float("nan"),
                    "better_than_none": sum(d > 0 for d in diffs),
                    "worse_than_none": sum(d < 0 for d in diffs),
                }
            )
    return out


def _pct(v: float) -> str:
    return fmt(100.0 * v, "{:.1f}")


def markdown(result: dict) -> str:
    env, cfg = result["environment"], result["config"]
    lines = [
        f"Regularisation on real data (`python -m benchmarks.regularisation`), measured on "
        f"{env['device_name']} ({env['threads']} threads), torch {env['torch']}, commit {env['git_commit']}, "
        f"{env['timestamp']}, {env['wall_s']:.0f} s.",
        "",
        f"Hyperparameters, fixed before any run and the same for every arm: drop rate p = {cfg['p']} for every "
        f"regulariser (DropBlock ramped 0 -> p over the whole training by LinearScheduler, dropout constant), "
        f"Adam lr {cfg['lr']} with cosine decay to 0, no weight decay, no augmentation, widths "
        f"{tuple(cfg['widths'])}, seeds {cfg['seeds']} (seed {cfg['first_seed']} on); the number is the test "
        f"accuracy after the last epoch. For one seed every arm has the same split, initial weights and batch "
        f"order: `vs none` is the seed-by-seed difference. The ramp gives DropBlock a mean rate of p/2 over "
        f"the training, the dropout arms p throughout.",
        "",
    ]
    for name, ds in result["datasets"].items():
        lines.append(
            f"- **{name}**: {ds['description']}; {ds['epochs']} epochs, batch {ds['batch']}, "
            f"block size {ds['block_size']}, {ds['train_size']} training / {ds['test_size']} test examples."
        )
    lines += [
        "",
        "| dataset | arm | test acc % (mean ± std) | min | max | vs none, pp (mean ± std) | "
        "better / worse than none | train acc % |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["summary"]:
        diff = (
            "-"
            if s["arm"] == "none"
            else (f"{100 * s['diff_vs_none_mean']:+.1f} ± {fmt(100 * s['diff_vs_none_std'], '{:.1f}')}")
        )
        wins = "-" if s["arm"] == "none" else f"{s['better_than_none']} / {s['worse_than_none']} of {s['seeds']}"
        lines.append(
            f"| {s['dataset']} | {s['label']} | {_pct(s['test_acc_mean'])} ± {_pct(s['test_acc_std'])} | "
            f"{_pct(s['test_acc_min'])} | {_pct(s['test_acc_max'])} | {diff} | {wins} | "
            f"{_pct(s['train_acc_mean'])} |"
        )
    for note in result.get("skipped", []):
        lines.append(f"\n- skipped: {note}")
    return "\n".join(lines) + "\n"


def write_plot(result: dict, path: str) -> bool:
    """Test accuracy and training loss per epoch, mean over the seeds with the min-max band, one
    column per dataset. False when matplotlib is missing."""
    plt = reporting.pyplot()
    if plt is None:
        return False
    datasets = list(result["datasets"]) or ["(none)"]
    fig, axes = plt.subplots(2, len(datasets), figsize=(6.5 * len(datasets), 7.5), squeeze=False)
    for col, name in enumerate(datasets):
        for row, (metric, label) in enumerate((("test_acc", "test accuracy"), ("train_loss", "training loss"))):
            ax = axes[row][col]
            for arm in ARMS:
                curves = [r["curves"][metric] for r in result["runs"] if r["dataset"] == name and r["arm"] == arm]
                if not curves:
                    continue
                epochs = next(r["curves"]["epoch"] for r in result["runs"] if r["dataset"] == name)
                per_epoch = list(zip(*curves))
                ax.plot(epochs, [statistics.fmean(v) for v in per_epoch], label=ARM_LABELS[arm], linewidth=1.3)
                ax.fill_between(epochs, [min(v) for v in per_epoch], [max(v) for v in per_epoch], alpha=0.15)
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            if metric == "train_loss":
                ax.set_yscale("log")
            else:
                accs = [v for r in result["runs"] if r["dataset"] == name for v in r["curves"][metric]]
                if accs:  # the late epochs, where the arms differ, not the first ones
                    ax.set_ylim(max(0.0, sorted(accs)[len(accs) // 10] - 0.05), min(1.0, max(accs) + 0.02))
            ax.set_title(f"{name}: {label} (mean of {result['config']['seeds']} seeds, band min-max)", fontsize=10)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    reporting.save_figure(
        fig, path, f"Regularisation, p={result['config']['p']}", result["environment"], rect=(0, 0, 1, 0.96)
    )
    return True


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


@dataclass
class Config:
    datasets: Sequence[str] = ("digits", "arrowhead")
    arms: Sequence[str] = ARMS
    seeds: int = 5
    first_seed: int = 0
    p: float = 0.1  # the paper's keep_prob 0.9
    lr: float = 1e-3
    widths: Sequence[int] = (32, 64)
    epochs: Optional[int] = None  # default: each dataset's own
    eval_points: int = 20  # evaluations per training (the learning curves' points)
    threads: int = 1  # per training
    jobs: int = 2  # trainings run side by side in forked processes (the numbers do not depend on it)
    out: str = reporting.DEFAULT_OUT
    progress: bool = True
    quiet: bool = False
    # Tests: cut each training split to this many examples and the test split likewise.
    limit: Optional[int] = None


@functools.lru_cache(maxsize=4)
def _data(name: str, seed: int, limit: Optional[int]):
    data = DATASETS[name].split(seed, DATASETS[name].per_class)
    if limit is None:
        return data
    x_train, y_train, x_test, y_test = data
    return x_train[:limit], y_train[:limit], x_test[:limit], y_test[:limit]


def _run_task(task: Tuple[str, str, int], cfg: Config) -> dict:
    """One training, in this process or a worker: the thread count and deterministic algorithms
    are set for it, whoever runs it."""
    name, arm, seed = task
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    return train_one(DATASETS[name], arm, seed, _data(name, seed, cfg.limit), cfg)


def _run_tasks(tasks: List[Tuple[str, str, int]], cfg: Config, progress) -> List[dict]:
    if cfg.jobs <= 1:
        runs = []
        for task in tasks:
            progress(" ".join(map(str, task)))
            runs.append(_run_task(task, cfg))
        return runs
    import concurrent.futures
    import multiprocessing

    # fork: the workers start at once with everything imported (spawn re-imports torch in each).
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with concurrent.futures.ProcessPoolExecutor(cfg.jobs, mp_context=context) as pool:
        futures = {pool.submit(_run_task, task, cfg): i for i, task in enumerate(tasks)}
        runs: List[Optional[dict]] = [None] * len(tasks)
        for future in concurrent.futures.as_completed(futures):
            runs[futures[future]] = future.result()
            progress(" ".join(map(str, tasks[futures[future]])))
    return runs


def run_experiment(cfg: Config) -> dict:
    """Runs every (dataset, arm, seed), writes the CSV / JSON / markdown / PNG into ``cfg.out`` and
    returns everything (``runs``, ``summary``, ``environment``, ``files``)."""
    wall0 = time.perf_counter()
    for arm in cfg.arms:
        if arm not in ARMS:
            raise ValueError(f"arm {arm!r}: expected one of {', '.join(ARMS)}")
    names, skipped = [], []
    for name in cfg.datasets:
        try:
            _data(name, cfg.first_seed, cfg.limit)
            names.append(name)
        except ImportError as exc:
            skipped.append(f"{name}: needs {DATASETS[name].package} ({exc})")
    tasks = [
        (name, arm, seed)
        for name in names
        for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds)
        for arm in cfg.arms
    ]
    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    progress = reporting.Progress(len(tasks), cfg.progress and not cfg.quiet)
    try:
        runs = _run_tasks(tasks, cfg, progress)
    finally:
        progress.close()
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])
    info: Dict[str, dict] = {}
    for name in names:
        ds, last = DATASETS[name], next(r for r in runs if r["dataset"] == name)
        info[name] = {
            "description": ds.description,
            "package": ds.package,
            "epochs": last["epochs"],
            "batch": ds.batch,
            "block_size": ds.block_size,
            "per_class": ds.per_class,
            "train_size": last["train_size"],
            "test_size": last["test_size"],
        }
    result = {
        **reporting.result_head(cfg, torch.device("cpu"), cfg.threads, wall0, jobs=cfg.jobs),
        "datasets": info,
        "skipped": skipped,
        "summary": summarize(runs) if runs else [],
        "runs": runs,
    }
    reporting.write_results(
        cfg.out, "regularisation", result, runs, CSV_FIELDS, markdown(result), write_plot, cfg.quiet
    )
    return result


QUICK_DATASETS = ("digits",)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.regularisation", description=__doc__.split("\n\n")[0])
    cli.add_quick(ap, f"one dataset ({','.join(QUICK_DATASETS)}); the repeats are seeds")
    ap.add_argument(
        "--datasets",
        type=cli.names,
        default=None,
        help=f"comma-separated, of {', '.join(DATASETS)} (default all; {','.join(QUICK_DATASETS)} with --quick)",
    )
    ap.add_argument("--arms", type=cli.names, default=list(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    ap.add_argument(
        "--seeds", type=int, default=None, help=f"seeds per arm (default 5, {cli.QUICK_REPEATS} with --quick)"
    )
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--p", type=float, default=0.1, help="drop rate of every regulariser (default 0.1)")
    ap.add_argument("--epochs", type=int, default=None, help="override every dataset's epochs")
    cli.add_threads(ap, 1, "default 1, per training: the same numbers anywhere this thread count runs")
    ap.add_argument("--jobs", type=int, default=2, help="trainings side by side, one process each (default 2)")
    cli.add_output(ap)
    return ap


def config_from_args(argv: Optional[Sequence[str]] = None) -> Config:
    args = cli.resolve_defaults(
        build_parser().parse_args(argv),
        full=dict(datasets=list(DATASETS), seeds=5),
        quick=dict(datasets=list(QUICK_DATASETS), seeds=cli.QUICK_REPEATS),
    )
    for name in args.datasets:
        if name not in DATASETS:
            raise SystemExit(f"--datasets: {name!r} is not one of {', '.join(DATASETS)}")
    return cli.config_of(Config, args, "datasets arms seeds first_seed p epochs threads jobs out")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.main_of(run_experiment, config_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
