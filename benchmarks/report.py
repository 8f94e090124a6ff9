"""The report of the main benchmark (``python -m benchmarks``): the CSV columns, the terminal
table, the headline and its targets, the summary (geometric means over the sweep), the markdown
and the plot. The columns and keys here are the format of benchmarks/results/results.*."""

from typing import Dict, List, Optional

from . import measure, reporting
from .reporting import fmt

# The headline's ratios and what this project promises of them (README).
HEADLINE_TARGETS = {
    "per_channel_fwd_over_floor": ("<=", 4.0),
    "shared_fwd_over_floor": ("<=", 1.5),
    "torchvision_fwdbwd_over_ours": (">=", 20.0),
    "mask_op_over_floor": ("<=", 0.15),
}


def fmt_shape(shape) -> str:
    return "x".join(str(s) for s in shape)


CSV_FIELDS = [
    "section",
    "device",
    "shape",
    "batch",
    "dtype",
    "block_size",
    "p",
    "impl",
    "label",
    "masks",
    "status",
    "reason",
    "warning",
    "drop_frac",
    "scale",
    "fwd_ms",
    "fwd_min_ms",
    "fwd_repeats",
    "fwd_vs_ours",
    "fwd_vs_floor",
    "fwdbwd_ms",
    "fwdbwd_min_ms",
    "fwdbwd_repeats",
    "fwdbwd_vs_ours",
    "fwdbwd_vs_floor",
    "compared_with",
    "saved_bytes_per_elem",
    "gpu_held_bytes_per_elem",
    "gpu_peak_bytes_per_elem",
    "compile_s",
    "note",
]


def _row_cells(r: dict) -> List[str]:
    status = r["status"]
    if status != "ok":
        note = f"{status}: {r['reason']}"
    else:
        note = r["warning"]
    return [
        r["label"],
        r["masks"],
        fmt(r["fwd_ms"], "{:.3f}"),
        fmt(r["fwd_vs_ours"]),
        fmt(r["fwd_vs_floor"]),
        fmt(r["fwdbwd_ms"], "{:.3f}"),
        fmt(r["fwdbwd_vs_ours"]),
        fmt(r["fwdbwd_vs_floor"]),
        fmt(r["saved_bytes_per_elem"], "{:.3g}"),
        fmt(r["drop_frac"], "{:.3f}"),
        note,
    ]


TABLE_HEAD = [
    "implementation",
    "masks",
    "fwd ms",
    "fwd/ours",
    "fwd/floor",
    "f+b ms",
    "f+b/ours",
    "f+b/floor",
    "saved B/el",
    "drop",
    "note",
]


def format_table(rows: List[dict]) -> str:
    """Terminal table, one block per configuration."""
    out = []
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault((r["section"], r["shape"], r["dtype"], r["block_size"], r["p"]), []).append(r)
    for (section, shape, dtype, block, p), group in groups.items():
        cells = [_row_cells(r) for r in group]
        widths = [max(len(TABLE_HEAD[i]), *(len(c[i]) for c in cells)) for i in range(len(TABLE_HEAD) - 1)]
        title = f"[{section}] {shape} {dtype} block {block} p={p:g}"
        out.append(title)
        line = "  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(TABLE_HEAD, widths)))
        out.append(line + "  note")
        for c in cells:
            out.append(
                "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths)))
                + ("  " + c[-1] if c[-1] else "")
            )
        out.append("")
    return "\n".join(out)


def format_headline(headline: dict) -> str:
    if not headline:
        return ""
    lines = [
        f"Headline ({fmt_shape(headline['shape'])} {headline['dtype']}, p={headline['p']}, "
        f"block {headline['block_size']}, {headline['threads']} threads, {headline['device']}):"
    ]
    for name, value in headline["ratios"].items():
        op, target = HEADLINE_TARGETS.get(name, (None, None))
        verdict = ""
        if op is not None and value == value:
            met = value <= target if op == "<=" else value >= target
            verdict = f"  (target {op} {target:g}: {'met' if met else 'NOT met'})"
        lines.append(
            f"  {name:34s} {fmt(value)}   (of min times: {fmt(headline['ratios_of_min_times'][name])}){verdict}"
        )
    for k, v in headline["times_ms"].items():
        lines.append(f"  {k:34s} {fmt(v, '{:.3f}')} ms")
    return "\n".join(lines)


def _summary_note(group: List[dict]) -> str:
    notes = []
    bad = [r for r in group if r["status"] != "ok"]
    if bad:
        notes.append(f"{bad[0]['status']} x{len(bad)}: {bad[0]['reason']}")
    heavy = [r for r in group if r["status"] == "ok" and "drops" in r["warning"]]
    if heavy:
        worst = max(heavy, key=lambda r: r["drop_frac"])
        notes.append(
            f"drops more than p in {len(heavy)} configs (up to {worst['drop_frac']:.2f} at "
            f"{worst['shape']} block {worst['block_size']}, p={worst['p']:g})"
        )
    return "; ".join(notes)


def summarize(rows: List[dict]) -> List[dict]:
    """Per (dtype, implementation) of the sweep: geometric-mean ratio to ours of forward and of
    forward + backward, median saved bytes per element, and how many configurations passed."""
    out = []
    keys = []
    for r in rows:
        if r["section"] == "sweep" and r["impl"] not in ("ours", "ours_shared", "floor"):
            if (r["dtype"], r["impl"]) not in keys:
                keys.append((r["dtype"], r["impl"]))
    for dtype, impl in keys:
        group = [r for r in rows if r["section"] == "sweep" and r["dtype"] == dtype and r["impl"] == impl]
        ok = [r for r in group if r["status"] == "ok"]
        saved = [r["saved_bytes_per_elem"] for r in ok if r["saved_bytes_per_elem"] == r["saved_bytes_per_elem"]]
        out.append(
            {
                "dtype": dtype,
                "impl": impl,
                "label": group[0]["label"],
                "masks": group[0]["masks"],
                "fwd": measure.geomean(r["fwd_vs_ours"] for r in ok),
                "fwdbwd": measure.geomean(r["fwdbwd_vs_ours"] for r in ok),
                "saved": measure.median(saved),
                "ok": len(ok),
                "total": len(group),
                "note": _summary_note(group),
            }
        )
    return out


def format_summary(summary: List[dict]) -> str:
    """The summary for the terminal, one line per (dtype, implementation)."""
    lines = ["Summary: speedup of dropblock_cuda (impl time / ours, geomean over the sweep)"]
    for item in summary:
        lines.append(
            f"  {item['dtype']:9s} {item['label'] + ' [' + item['masks'] + ']':58s} "
            f"fwd {fmt(item['fwd']):>7s}x  fwd+bwd {fmt(item['fwdbwd']):>7s}x  "
            f"saved {fmt(item['saved'], '{:.3g}'):>6s} B/el  ok {item['ok']}/{item['total']}"
            + (f"  {item['note']}" if item["note"] else "")
        )
    return "\n".join(lines)


def write_markdown(result: dict, path: str) -> None:
    env = result["environment"]
    lines = [
        f"Measured on {env['device_name']} ({env['device']}, {env['threads']} threads), torch {env['torch']}, "
        f"commit {env['git_commit']}. Times are medians in ms; `/ours` is the time over dropblock_cuda's "
        "(per-channel rows vs its default mode, shared rows vs `shared_channels=True`; > 1 means "
        "dropblock_cuda is faster); `/floor` is over the floor "
        f"({'a device-to-device copy' if env['device'] == 'cuda' else '`x * s`'}); saved B/el = bytes kept "
        "for backward per input element.",
        "",
    ]
    headline = result.get("headline")
    if headline:
        lines.append(
            f"**Headline** ({fmt_shape(headline['shape'])} {headline['dtype']}, p={headline['p']}, "
            f"block {headline['block_size']}, {headline['threads']} threads):"
        )
        lines.append("")
        lines.append("| ratio | of median times | of min times | target |")
        lines.append("|---|---:|---:|---|")
        for name, value in headline["ratios"].items():
            op, target = HEADLINE_TARGETS.get(name, ("", ""))
            lines.append(f"| {name} | {fmt(value)} | {fmt(headline['ratios_of_min_times'][name])} | {op} {target} |")
        lines.append("")
    summary = summarize(result["rows"])
    if summary:
        lines.append(
            "**Summary**: speedup of dropblock_cuda over each implementation (its time / ours, "
            "geometric mean over the shapes and block sizes of the sweep; like with like):"
        )
        lines.append("")
        lines.append("| dtype | implementation | masks | forward | forward + backward | saved B/el | passed | note |")
        lines.append("|---|---|---|---:|---:|---:|---:|---|")
        for s in summary:
            lines.append(
                f"| {s['dtype']} | {s['label']} | {s['masks']} | {fmt(s['fwd'])} | {fmt(s['fwdbwd'])} "
                f"| {fmt(s['saved'], '{:.3g}')} | {s['ok']}/{s['total']} | {s['note'].replace('|', '/')} |"
            )
        lines.append("")
        lines.append("**All measurements:**")
        lines.append("")
    head = ["shape", "dtype", "block"] + TABLE_HEAD
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" if i < 5 or i == len(head) - 1 else "---:" for i in range(len(head))) + "|")
    for r in result["rows"]:
        if r["section"] != "sweep":
            continue
        cells = [r["shape"], r["dtype"], str(r["block_size"])] + _row_cells(r)
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    if result.get("skipped"):
        lines.append("")
        lines.extend(f"- skipped: {s}" for s in result["skipped"])
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def write_plot(rows: List[dict], path: str, env: Optional[dict] = None) -> bool:
    """Speedup of dropblock_cuda over each implementation per shape (geometric mean over block sizes),
    one panel per (dtype, forward / forward+backward). Returns False when matplotlib is missing."""
    plt = reporting.pyplot()
    if plt is None:
        return False
    sweep = [
        r
        for r in rows
        if r["section"] == "sweep" and r["status"] == "ok" and r["impl"] not in ("ours", "ours_shared", "floor")
    ]
    dtypes = sorted({r["dtype"] for r in sweep}) or ["float32"]
    shapes = []
    for r in rows:
        if r["section"] == "sweep" and r["shape"] not in shapes:
            shapes.append(r["shape"])
    impls = []
    for r in sweep:
        if r["impl"] not in [i for i, _ in impls]:
            impls.append((r["impl"], f"{r['label']} [{r['masks']}]"))
    modes = (("fwd", "forward"), ("fwdbwd", "forward + backward"))
    fig, axes = plt.subplots(len(dtypes), 2, figsize=(13, 4.2 * len(dtypes)), squeeze=False)
    for di, dtype in enumerate(dtypes):
        for mi, (mode, mode_name) in enumerate(modes):
            ax = axes[di][mi]
            width = 0.8 / max(len(impls), 1)
            for (key, label), xs in zip(impls, reporting.bar_offsets(len(impls), len(shapes))):
                values = [
                    measure.geomean(
                        r[f"{mode}_vs_ours"]
                        for r in sweep
                        if r["impl"] == key and r["dtype"] == dtype and r["shape"] == shape
                    )
                    for shape in shapes
                ]
                ax.bar(xs, values, width=width, label=label)
            ax.set_yscale("log")
            reporting.style_bar_axis(
                ax, shapes, ylabel="speedup of dropblock_cuda (x)", title=f"{dtype}, {mode_name}", baseline=1.0
            )
    reporting.legend_below(fig, axes[0][0])
    title = "dropblock_cuda speedup over other DropBlock implementations (geomean over block sizes)"
    if env:
        title += f"\n{env.get('device_name', '')}, torch {env.get('torch', '')}, {env.get('threads', '')} threads"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
