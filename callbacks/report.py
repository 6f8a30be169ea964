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
    """Three panels with the value printed on every bar: Δtop-1 (points, so equal accuracies read as 0, not as
    three identical long bars), latency and size; the PyTorch row's latency is written, not drawn, when it would
    dwarf the deployable rows."""
    rows = report["rows"]
    labels = [r["label"] for r in rows]
    fig, (acc, lat, size) = plt.subplots(1, 3, figsize=(12, 0.5 * len(rows) + 2.2), dpi=100)
    ys = range(len(rows))

    deltas = [0.0 if i == 0 else r["delta_pts"] for i, r in enumerate(rows)]
    acc.barh(ys, deltas, color=["tab:gray" if d == 0 else ("tab:red" if d < 0 else "tab:green") for d in deltas])
    span = max(1.0, max(abs(d) for d in deltas) * 1.6)
    acc.set_xlim(-span, span)
    acc.axvline(0, color="black", lw=0.8)
    for y, r, d in zip(ys, rows, deltas):
        acc.text(0, y, f" {100 * r['top1']:.2f} % ({d:+.2f})" if y else f" {100 * r['top1']:.2f} % (ref)",
                 va="center", ha="left", fontsize=8)
    acc.set_xlabel("Δ test top-1 vs PyTorch FP32, points")

    latencies = [r["latency_ms"] for r in rows]
    deployable = latencies[1:] or latencies
    cap = max(deployable) * 1.5
    lat.barh(ys, [min(v, cap) for v in latencies], color="tab:orange")
    for y, v in zip(ys, latencies):
        lat.text(min(v, cap), y, f" {v:.2f} ms" + (" (cut)" if v > cap else ""), va="center", fontsize=8)
    lat.set_xlim(0, cap * 1.45)
    lat.set_xlabel("latency ms (batch 1, p50)")

    sizes = [r["size_mb"] for r in rows]
    size.barh(ys, sizes, color="tab:blue")
    for y, v in zip(ys, sizes):
        size.text(v, y, f" {v:.2f}", va="center", fontsize=8)
    size.set_xlim(0, max(sizes) * 1.35)
    size.set_xlabel("size MB (10⁶ bytes)")

    for ax in (acc, lat, size):
        ax.set_yticks(list(ys))
        ax.set_yticklabels(labels if ax is acc else [], fontsize=8)
        ax.invert_yaxis()
    fig.suptitle(f"{report['name']} — {report['device']} — test split, {report['test_samples']} images", fontsize=9)
    fig.tight_layout()
    return fig
