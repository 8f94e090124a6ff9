"""Output shared by the training benchmarks (train_step.py, regularisation.py): one call writes a
result's CSV, markdown, plot and JSON side by side. The JSON writer and the environment are
benchmark.py's."""

import csv
import os
from typing import Callable, Dict, List, Sequence

try:
    from . import benchmark as bm
except ImportError:  # run from inside benchmarks/
    import benchmark as bm


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    return plt


def save_figure(fig, path: str, title: str, env: dict, rect=(0, 0, 1, 0.95)) -> None:
    """Titles the figure with what it measured and where (device, torch, commit), writes it, closes it."""
    import matplotlib.pyplot as plt
    fig.suptitle(f"{title}: {env['device_name']}, torch {env['torch']}, commit {env['git_commit']}", fontsize=10)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(out: str, stem: str, result: dict, rows: List[dict], fields: Sequence[str], markdown: str,
                  plot: Callable[[dict, str], bool], quiet: bool = False) -> Dict[str, str]:
    """Writes ``stem``.csv (``rows``, columns ``fields``), .md (``markdown``), .png (``plot(result,
    path)``, False when it cannot draw) and .json (``result``, with ``files`` added) into ``out``;
    returns the paths written."""
    os.makedirs(out, exist_ok=True)
    files = {kind: os.path.join(out, f"{stem}.{kind}") for kind in ("csv", "json", "md", "png")}
    with open(files["csv"], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(files["md"], "w") as fh:
        fh.write(markdown)
    if not plot(result, files["png"]):
        result.setdefault("skipped", []).append("plot: matplotlib not installed")
        files.pop("png")
    result["files"] = files
    bm.write_json(result, files["json"])
    if not quiet:
        print(markdown)
        print(f"wrote {', '.join(files.values())}  (wall {result['environment']['wall_s']:.1f} s)")
    return files
