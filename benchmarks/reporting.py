"""Output shared by every benchmark of this folder: number formatting, the progress bar, the head
of every result (environment and configuration), the CSV, JSON, markdown and plot writers.

``write_results`` writes one result's CSV, markdown, plot and JSON side by side (the training
benchmarks); the main benchmark writes its own four files with the same pieces.
"""

import csv
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Callable, Dict, List, Sequence

from .environment import environment

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def fmt(value, spec: str = "{:.2f}") -> str:
    """``spec.format(value)``, or "-" for a missing value (None or NaN)."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return spec.format(value)


class Progress:
    """A progress bar on stderr (tqdm when installed, else one line per step); silent when disabled.
    ``progress(desc)`` counts one step done."""

    def __init__(self, total: int, enabled: bool, unit: str = "step"):
        self.bar = None
        self.enabled = enabled
        self.count = 0
        self.total = total
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit=unit, dynamic_ncols=True, file=sys.stderr)
            except Exception:
                self.bar = None

    def __call__(self, desc: str) -> None:
        self.count += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description(desc)
            self.bar.update(1)
        else:
            print(f"[{self.count}/{self.total}] {desc}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def json_clean(obj):
    """``obj`` with NaN and infinities as None (JSON has neither) and tuples as lists."""
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, dict):
        return {k: json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    return obj


def result_head(cfg, device, threads: int, wall0: float, **machine) -> dict:
    """The entries every result file begins with: ``environment`` (of ``device`` and ``threads``,
    then ``machine``'s entries, then ``wall_s``, the seconds since ``wall0``, a
    ``time.perf_counter()``) and ``config`` (the command's dataclass ``cfg``)."""
    env = environment(device, threads)
    env.update(machine)
    env["wall_s"] = round(time.perf_counter() - wall0, 2)
    return {"environment": env, "config": json_clean(asdict(cfg))}


def write_json(result: dict, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(json_clean(result), fh, indent=1)


def write_csv(rows: Sequence[dict], path: str, fields: Sequence[str]) -> None:
    """One line per row, the columns ``fields`` in that order (other keys of a row left out)."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    return plt


def style_bar_axis(ax, ticks: Sequence[str], *, ylabel: str, title: str, baseline: float) -> None:
    """The look of every bar panel: a line at ``baseline`` (no change), the categories on the x
    axis, a y grid. The y scale is the caller's."""
    ax.axhline(baseline, color="black", linewidth=0.8)
    ax.set_xticks(range(len(ticks)))
    ax.set_xticklabels(ticks, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.3)


def bar_offsets(count: int, positions: int) -> List[List[float]]:
    """x positions of ``count`` bars side by side at each of ``positions`` categories, and the width."""
    width = 0.8 / max(count, 1)
    return [[p + (i - (count - 1) / 2) * width for p in range(positions)] for i in range(count)]


def legend_below(fig, ax) -> None:
    """The legend of ``ax``'s bars under the figure, three entries a row."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8)


def save_figure(fig, path: str, title: str, env: dict, rect=(0, 0, 1, 0.95)) -> None:
    """Titles the figure with what it measured and where (device, torch, commit), writes it, closes it."""
    import matplotlib.pyplot as plt

    fig.suptitle(f"{title}: {env['device_name']}, torch {env['torch']}, commit {env['git_commit']}", fontsize=10)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(
    out: str,
    stem: str,
    result: dict,
    rows: List[dict],
    fields: Sequence[str],
    markdown: str,
    plot: Callable[[dict, str], bool],
    quiet: bool = False,
) -> Dict[str, str]:
    """Writes ``stem``.csv (``rows``, columns ``fields``), .md (``markdown``), .png (``plot(result,
    path)``, False when it cannot draw) and .json (``result``, with ``files`` added) into ``out``;
    returns the paths written."""
    os.makedirs(out, exist_ok=True)
    files = {kind: os.path.join(out, f"{stem}.{kind}") for kind in ("csv", "json", "md", "png")}
    write_csv(rows, files["csv"], fields)
    with open(files["md"], "w") as fh:
        fh.write(markdown)
    if not plot(result, files["png"]):
        result.setdefault("skipped", []).append("plot: matplotlib not installed")
        files.pop("png")
    result["files"] = files
    write_json(result, files["json"])
    if not quiet:
        print(markdown)
        print(f"wrote {', '.join(files.values())}  (wall {result['environment']['wall_s']:.1f} s)")
    return files
