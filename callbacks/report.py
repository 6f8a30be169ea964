"""The bundle report: one row per artifact, the seeds' table, as Markdown, JSON and a figure.

One convention everywhere: Δtop-1 = artifact - PyTorch FP32, in points (negative = accuracy lost), and
MB = 10^6 bytes.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLUMNS = ("artifact", "runtime", "size MB", "latency ms", "throughput img/s", "top-1 %", "Δtop-1 pt")


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for i, r in enumerate(rows):
        out.append([
            r["label"],
            r.get("runtime", ""),
            f"{r['size_mb']:.2f}",
            f"{r['latency_ms']:.2f}",
            f"{r['throughput']:.0f}",
            f"{100 * r['top1']:.2f}",
            "—" if i == 0 else f"{r['delta_pts']:+.2f}",
        ])
    return out


def leaderboard_values(report: dict[str, Any]) -> dict[str, float]:
    """The bundle's columns of the HPARAMS tab (lightning_modules.classifier.LEADERBOARD_METRICS), each logged only
    when the bundle has it: INT8's worst Δtop-1, the fastest CPU artifact's latency, the parameter count."""
    rows = report["rows"][1:]  # after the PyTorch reference
    values: dict[str, float] = {}
    int8 = [r["delta_pts"] for r in rows if r.get("precision") == "int8"]
    if int8:
        values["bundle/int8_delta_top1_pt"] = min(int8)
    cpu = [r["latency_ms"] for r in rows if r.get("format") != "tensorrt"]
    if cpu:
        values["bundle/cpu_latency_ms"] = min(cpu)
    if report.get("params"):
        values["bundle/params"] = float(report["params"])
    return values


def markdown(report: dict[str, Any]) -> str:
    rows = table_rows(report["rows"])
    lines = [f"# {report['name']}: deploy bundle report", "",
             f"Measured on {report['device']}; latency is batch 1 (p50), throughput batch {report['throughput_batch']}; "
             f"top-1 on the test split ({report['test_samples']} images); Δtop-1 = artifact − PyTorch FP32 in points "
             "(negative = lost); MB = 10⁶ bytes.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    for title, body in report.get("notes", []):
        lines += ["", f"**{title}**: {body}"]
    unavailable = report.get("unavailable", [])
    if unavailable:
        lines += ["", "## Not in this bundle", ""]
        lines += [f"- {u['label']} ({u['step']}): **{u['status']}**: {u['reason']}" for u in unavailable]
    return "\n".join(lines) + "\n"


def plain_table(report: dict[str, Any]) -> str:
    rows = [list(COLUMNS)] + table_rows(report["rows"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    fmt = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows[1:]])


def figure(report: dict[str, Any]) -> "plt.Figure":
    """Accuracy against latency, one labelled point per artifact with its numbers written beside it and PyTorch
    FP32 as the dashed reference line; file sizes beside it. Large type: TensorBoard shows it as a thumbnail."""
    rows = report["rows"]
    fig, (acc, size) = plt.subplots(1, 2, figsize=(11, 4.6), dpi=100, gridspec_kw={"width_ratios": [2.2, 1]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    reference = rows[0]
    acc.axhline(100 * reference["top1"], color="gray", lw=1, ls="--")
    latencies = [r["latency_ms"] for r in rows]
    for i, r in enumerate(rows):
        x, y = r["latency_ms"], 100 * r["top1"]
        delta = "reference" if i == 0 else f"{r['delta_pts']:+.2f} pt"
        acc.plot([x], [y], "o", ms=11, color=colors[i % len(colors)], label=r["label"])
        acc.annotate(f"{r['label']}\n{y:.2f} % ({delta}), {x:.2f} ms", (x, y), xytext=(8, 10 + 22 * (i % 3)),
                     textcoords="offset points", fontsize=10, color=colors[i % len(colors)])
    acc.set_xscale("log")  # PyTorch eager and an INT8 engine can be 100x apart
    acc.set_xlim(min(latencies) / 1.6, max(latencies) * 6)
    tops = [100 * r["top1"] for r in rows]
    pad = max(0.5, (max(tops) - min(tops)) * 0.6)
    acc.set_ylim(min(tops) - pad, max(tops) + 2.2 * pad)
    acc.set_xlabel("latency ms, batch 1, p50 (log scale; left is faster)", fontsize=10)
    acc.set_ylabel(f"test top-1 % ({report['test_samples']} images)", fontsize=10)
    acc.grid(alpha=0.3, which="both")

    ys = range(len(rows))
    sizes = [r["size_mb"] for r in rows]
    size.barh(ys, sizes, color=[colors[i % len(colors)] for i in ys])
    for y, v in zip(ys, sizes):
        size.text(v, y, f" {v:.2f} MB", va="center", fontsize=10)
    size.set_xlim(0, max(sizes) * 1.6)
    size.set_yticks(list(ys))
    size.set_yticklabels([r["label"] for r in rows], fontsize=10)
    size.invert_yaxis()
    size.set_xlabel("size MB (10⁶ bytes)", fontsize=10)
    fig.suptitle(f"{report['name']}: accuracy vs latency on {report['device']}", fontsize=11)
    fig.tight_layout()
    return fig
