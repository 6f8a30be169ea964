"""The bundle report: one row per artifact, the seeds' table, as Markdown, JSON and a figure."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLUMNS = ("format", "size MB", "latency ms", "throughput img/s", "top-1 %", "Δtop-1")


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Rows as printed: Δtop-1 is against the first row (PyTorch FP32), in points."""
    base = rows[0]["top1"] if rows else 0.0
    out = []
    for r in rows:
        out.append([
            r["label"],
            f"{r['size_mb']:.2f}",
            f"{r['latency_ms']:.2f}",
            f"{r['throughput']:.0f}",
            f"{100 * r['top1']:.2f}",
            "—" if r is rows[0] else f"{100 * (r['top1'] - base):+.2f}",
        ])
    return out


def markdown(report: dict[str, Any]) -> str:
    rows = table_rows(report["rows"])
    lines = [f"# {report['name']}: deploy bundle report", "",
             f"Measured on {report['device']}; latency is batch 1 (p50), throughput batch {report['throughput_batch']}; "
             f"top-1 on the test split ({report['test_samples']} images).", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    for title, body in report.get("notes", []):
        lines += ["", f"**{title}**: {body}"]
    return "\n".join(lines) + "\n"


def plain_table(report: dict[str, Any]) -> str:
    rows = [list(COLUMNS)] + table_rows(report["rows"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows[1:]])


def figure(report: dict[str, Any]) -> "plt.Figure":
    rows = report["rows"]
    labels = [r["label"] for r in rows]
    fig, (acc, lat) = plt.subplots(1, 2, figsize=(10, 3.2), dpi=100)
    acc.barh(labels, [100 * r["top1"] for r in rows], color="tab:blue")
    low = min(100 * r["top1"] for r in rows)
    acc.set_xlim(max(0.0, low - 5), 100)
    acc.set_xlabel("test top-1 %")
    acc.invert_yaxis()
    lat.barh(labels, [r["latency_ms"] for r in rows], color="tab:orange")
    lat.set_xlabel("latency ms (batch 1, p50)")
    lat.invert_yaxis()
    lat.set_yticklabels([])
    fig.suptitle(f"{report['name']} — {report['device']}", fontsize=9)
    fig.tight_layout()
    return fig
