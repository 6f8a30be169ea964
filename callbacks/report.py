"""The bundle report: one row per artifact, the seeds' table, as Markdown, JSON and a figure.

One convention everywhere: Δtop-1 = artifact - PyTorch FP32, in points (negative = accuracy lost), and
MB = 10^6 bytes.
"""

from __future__ import annotations

from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from deploy.forms import runtime_name

COLUMNS = ("artifact", "file", "runtime", "size MB", "latency ms", "img/s", "top-1 %", "Δtop-1 pt", "INT8 gate")


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """One row per file × runtime: the file's form (what it was made for), the file, and the runtime that measured it
    here (a report written before rows had a form shows its label)."""
    out = []
    for i, r in enumerate(rows):
        out.append([
            r.get("form") or r["label"],
            r.get("file", ""),
            runtime_name(r.get("runtime", "")),
            f"{r['size_mb']:.2f}",
            f"{r['latency_ms']:.2f}",
            f"{r['throughput']:.0f}",
            f"{100 * r['top1']:.2f}",
            "—" if i == 0 else f"{r['delta_pts']:+.2f}",
            r.get("gate") or "",
        ])
    return out


def leaderboard_values(report: dict[str, Any]) -> dict[str, float]:
    """The bundle's columns of the HPARAMS tab (training.leaderboard.LEADERBOARD_METRICS), each logged only
    when the bundle has it: the worst Δtop-1 of the INT8 files, each as the runtime it is for computes it (not the
    same file in another runtime, whose INT8 kernels may differ on this CPU), the fastest CPU artifact's latency,
    the parameter count."""
    rows = report["rows"][1:]  # after the PyTorch reference
    values: dict[str, float] = {}
    int8 = [r["delta_pts"] for r in rows if r.get("precision") == "int8" and not r.get("other_runtime")]
    if int8:
        # to the table's 0.01 pt: HPARAMS prints 5 significant digits, -0.27855 (one image of 359) beside 0.0000
        values["bundle/int8_delta_top1_pt"] = round(min(int8), 2) + 0.0  # + 0.0: never -0.0
    cpu = [r["latency_ms"] for r in rows if r.get("format") != "tensorrt"]
    if cpu:
        values["bundle/cpu_latency_ms"] = min(cpu)
    if report.get("params"):
        values["bundle/params"] = float(report["params"])
    return values


def caption(report: dict[str, Any]) -> str:
    """The one line that says what the table's columns mean."""
    others = sorted({r["device"] for r in report["rows"] if r.get("device") and r["device"] != report["device"]})
    where = f"Measured on {report['device']}" + (f" (TensorRT rows on {', '.join(others)})" if others else "")
    latency = report.get("latency_iterations")
    return (f"{where}, each row by the runtime it names; artifact = the file's form (what it was made for); "
            f"latency ms = p50 of {f'{latency} ' if latency else ''}batch-1 calls; img/s at batch "
            f"{report['throughput_batch']}; top-1 on the test split ({report['test_samples']} images), each file in its "
            "own precision; Δtop-1 = row − PyTorch FP32 in points (negative = lost); INT8 gate = the file's Δ on the "
            "validation split within max_drop; MB = 10⁶ bytes.")


def runtime_gaps(report: dict[str, Any], budget_pts: float = 0.5) -> list[str]:
    """One line per file that scores more than `budget_pts` lower in another runtime than in its own (an INT8 file
    whose int8 kernels there differ on this CPU): its INT8 gate column is the file's verdict, not that run's."""
    own = {r.get("file"): r for r in report["rows"][1:] if not r.get("other_runtime")}
    lines = []
    for r in report["rows"]:
        base = own.get(r.get("file"))
        if r.get("other_runtime") and base is not None and 100 * (base["top1"] - r["top1"]) > budget_pts:
            lines.append(f"{r['file']} in {runtime_name(r['runtime'])} scores {100 * r['top1']:.2f} % against "
                         f"{100 * base['top1']:.2f} % in {runtime_name(base['runtime'])} on this machine: its INT8 gate "
                         "is the file's own, and `deploy infer --runtime auto` judges that pairing by its own top-1")
    return lines


def cpu_paths(report: dict[str, Any]) -> list[str]:
    """Where the bundle holds NNCF's INT8 IR: one line saying which CPU INT8 path measured fastest here and which
    scored higher on the test split (NNCF's IR in OpenVINO against the CPU-form file in each runtime), and one
    where OpenVINO's bf16 run measured no faster than f32 (deploy does not offer it then)."""
    rows = report["rows"][1:]
    int8 = [r for r in rows if r.get("precision") == "int8" and r.get("format") in ("onnx-int8", "openvino-ir")
            and "TensorRT-form" not in (r.get("form") or "")]
    lines = []
    if any(r.get("format") == "openvino-ir" for r in int8) and len(int8) > 1:
        fastest = min(int8, key=lambda r: r["latency_ms"])
        best = max(int8, key=lambda r: (r["top1"], -r["latency_ms"]))

        def named(r: dict) -> str:
            return f"{r.get('form') or r['label']} ({r['file']}) in {runtime_name(r['runtime'])}"

        lines.append(f"CPU INT8 paths here: fastest {named(fastest)}, {fastest['latency_ms']:.2f} ms at batch 1 and "
                     f"{fastest['throughput']:.0f} img/s at batch {report['throughput_batch']}; most accurate "
                     f"{named(best)}, {100 * best['top1']:.2f} % test top-1; `deploy --runtime auto` measures them "
                     "again on the device")
    f32 = {r["file"]: r for r in rows if r.get("runtime") == "openvino"}
    for r in rows:
        base = f32.get(r.get("file"))
        if r.get("runtime") == "openvino-bf16" and base is not None and r["latency_ms"] >= base["latency_ms"]:
            lines.append(f"{r['file']} in OpenVINO bf16 ran {r['latency_ms']:.2f} ms against {base['latency_ms']:.2f} ms "
                         "in f32 here: `deploy` offers bf16 only where it measured faster")
    return lines


def markdown(report: dict[str, Any]) -> str:
    rows = table_rows(report["rows"])
    lines = [f"# {report['name']}: deploy bundle report", "", caption(report), "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    for r in report["rows"]:  # a row not measured the runtime's default way says how
        if r.get("measured_as"):
            lines += ["", f"**{r['file']} in {runtime_name(r['runtime'])}, measured**: {r['measured_as']}"]
    lines += [x for gap in runtime_gaps(report) + cpu_paths(report) for x in ("", gap)]
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
    fmt = lambda r: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows[1:]])


def figure_label(row: dict[str, Any]) -> str:
    """A row's name in the picture, as the table names it: the file's form, then the runtime that measured it
    ("INT8 TensorRT-form · OpenVINO"); a report written before rows had a form keeps its label."""
    if not row.get("form"):
        return row["label"]
    runtime = runtime_name(row.get("runtime", ""))
    return f"{row['form']} · {runtime}" if runtime else row["form"]


def overlapping_points(latencies: list[float], tops: list[float], top_span: float) -> list[list[int]]:
    """The points of the accuracy/latency plot in groups whose markers would overlap (a 16-point marker: within 7 % of the y range and
    0.15 decades of latency of one another, chained), each group in row order."""
    groups: list[list[int]] = []
    for i in range(len(latencies)):
        near = [g for g in groups if any(abs(tops[i] - tops[j]) <= 0.07 * top_span
                                         and abs(np.log10(latencies[i] / latencies[j])) <= 0.15 for j in g)]
        merged = [i] + [j for g in near for j in g]
        groups = [g for g in groups if g not in near] + [sorted(merged)]
    return sorted(groups, key=lambda g: g[0])


def figure(report: dict[str, Any]) -> "plt.Figure":
    """Accuracy against latency, one point per artifact, PyTorch FP32 as the dashed reference line; beside it one
    row per artifact in the point's colour with its top-1, Δ, latency and file size written out. Few words in
    large type: TensorBoard shows it as a card about 400 pixels wide."""
    from matplotlib.ticker import FuncFormatter

    rows = report["rows"]
    fig, (acc, size) = plt.subplots(1, 2, figsize=(9, 4.5), dpi=100, gridspec_kw={"width_ratios": [1.2, 1]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = [colors[i % len(colors)] for i in range(len(rows))]
    latencies, tops = [r["latency_ms"] for r in rows], [100 * r["top1"] for r in rows]
    acc.axhline(tops[0], color="gray", lw=1.2, ls="--")
    span = max(0.5, (max(tops) - min(tops)) * 0.4) * 2 + (max(tops) - min(tops))
    groups = overlapping_points(latencies, tops, span)
    # labels of neighbouring groups would print into each other ("4, 6, 73, 5"): each group's label one line higher
    # than the label of the group before it on the latency axis, three heights in turn
    stacked = sorted((g for g in groups if len(g) > 1), key=lambda g: float(np.mean(np.log([latencies[i] for i in g]))))
    height = {tuple(g): 14 + 16 * (k % 3) for k, g in enumerate(stacked)}
    for group in groups:
        for i in group:
            acc.plot([latencies[i]], [tops[i]], "o", ms=16 if len(group) == 1 else 11, color=color[i], zorder=3,
                     alpha=0.85)
        if len(group) == 1:
            # a number, not the name: the row beside it with the same number and colour names it
            i = group[0]
            acc.annotate(str(i + 1), (latencies[i], tops[i]), ha="center", va="center", fontsize=9, color="white",
                         fontweight="bold", zorder=4)
        else:
            # points that sit on each other (equal top-1, similar latency): one label above them, numbers apart
            # ("2, 3, 4, 5"), instead of numbers printed over each other that read as "2345"
            x = float(np.exp(np.mean(np.log([latencies[i] for i in group]))))
            y = max(tops[i] for i in group)
            left_half = np.log(x) <= np.mean(np.log([min(latencies) / 2, max(latencies) * 2]))  # the x limits below
            acc.annotate(", ".join(str(i + 1) for i in group), (x, y), xytext=(-10 if left_half else 10, height[tuple(group)]),
                         textcoords="offset points", ha="left" if left_half else "right", va="bottom", fontsize=10, fontweight="bold", zorder=5,
                         bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "gray", "alpha": 0.9})
    pad = max(0.5, (max(tops) - min(tops)) * 0.4)
    acc.set_xscale("log")  # PyTorch eager and an INT8 engine can be 100x apart
    acc.set_xlim(min(latencies) / 2, max(latencies) * 2)
    acc.set_ylim(min(tops) - pad, max(tops) + pad)
    acc.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    acc.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}".lstrip("0.")[:1] in ("2", "5") else ""))
    acc.set_xlabel("latency ms (batch 1, log)", fontsize=12)
    acc.set_ylabel("test top-1 %", fontsize=12)
    acc.tick_params(labelsize=11)
    acc.grid(alpha=0.3, which="both")

    ys = range(len(rows))
    sizes = [r["size_mb"] for r in rows]
    size.barh(ys, sizes, color=color, height=0.5)
    for y, v in zip(ys, sizes):
        size.text(v, y, f" {v:.2f} MB", va="center", fontsize=11)
    size.set_xlim(0, max(sizes) * 1.8)
    size.set_yticks(list(ys))
    labels = [f"{i + 1}  {figure_label(r)}\n{t:.2f} % ({'ref' if i == 0 else format(r['delta_pts'], '+.2f')}), {lat:.2f} ms"
              for i, (r, t, lat) in enumerate(zip(rows, tops, latencies))]
    size.set_yticklabels(labels, fontsize=11)
    for tick, c in zip(size.get_yticklabels(), color):
        tick.set_color(c)
    size.tick_params(axis="y", length=0)
    size.invert_yaxis()
    size.set_xticks([])
    for spine in ("top", "right", "bottom"):
        size.spines[spine].set_visible(False)
    fig.suptitle(f"{report['name']}: test split, {report['test_samples']} images; size in MB", fontsize=12)
    fig.tight_layout()
    return fig
