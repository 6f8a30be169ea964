"""Copy the newest run's bundle to a stable path, for the DVC pipeline (dvc.yaml) to track as a stage output.

    python -m deploy.publish runs/quickstart models/quickstart
    python -m deploy.publish runs/quickstart_pruned models/quickstart_pruned --prefix pruned_

writes models/quickstart/bundle/ (verified: manifest and every sha256), and beside it the few numbers
`dvc exp show` compares runs by (the bundle's report.json keeps every row): metrics.json the two a model is picked
by (top1, cpu_ms), more_metrics.json the rest (INT8 Δ per form, MB, parameters). Two files, because `dvc exp show`
orders metric columns by file and folds the last ones first: dvc.yaml lists every stage's metrics.json before any
more_metrics.json, so at 120 columns both stages' top-1 and latency stay on screen. A second stage names its
numbers apart (`--prefix pruned_`: pruned_top1, pruned_cpu_ms ...): two files with the same names get their paths
in every column title. The newest run is the highest version_N; if that run has no bundle (its fit-end chain failed
before writing one) this fails rather than publish an older run's bundle as the new one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Optional, Sequence

from deploy.bundle import MANIFEST, BundleError, atomic_write_json, load_bundle
from deploy.run_folder import bundle_dir, newest_run

HEADLINE = ("top1", "cpu_ms")  # metrics.json; the rest of short_metrics goes to more_metrics.json


def newest_bundle(runs_dir: str) -> str:
    """runs/<experiment>/version_<highest N>/bundle."""
    run = newest_run(runs_dir)
    if run is None:
        raise BundleError(f"{runs_dir}: no version_N runs here; run `python main.py fit --config ...` first")
    bundle = os.fspath(bundle_dir(run))
    if not os.path.isfile(os.path.join(bundle, MANIFEST)):
        raise BundleError(f"{bundle}: the newest run has no bundle (see its fit log for the failed fit-end step); "
                          "fix that step and run the fit again")
    return bundle


def publish(runs_dir: str, out_dir: str, prefix: str = "") -> str:
    """Copy the newest verified bundle to <out_dir>/bundle and write metrics.json and more_metrics.json beside it,
    each name after `prefix`; returns the source."""
    source = newest_bundle(runs_dir)
    load_bundle(source, verify=True)
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, "bundle")
    staging = tempfile.mkdtemp(prefix=".bundle-", dir=out_dir)
    try:
        # a device's runtime-choice cache is not part of what was built
        shutil.copytree(source, os.path.join(staging, "bundle"), ignore=shutil.ignore_patterns(".runtime-choice*"))
        if os.path.exists(target):
            os.rename(target, os.path.join(staging, "old"))
        os.rename(os.path.join(staging, "bundle"), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report = os.path.join(target, "report.json")
    if os.path.isfile(report):
        with open(report, "rb") as handle:
            data = handle.read()
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(target) for f in files)
        metrics = {prefix + key: value for key, value in short_metrics(json.loads(data), size).items()}
        headline = {prefix + key for key in HEADLINE}
        atomic_write_json(os.path.join(out_dir, "metrics.json"), {k: v for k, v in metrics.items() if k in headline})
        atomic_write_json(os.path.join(out_dir, "more_metrics.json"),
                          {k: v for k, v in metrics.items() if k not in headline})
    return source


def short_metrics(report: dict, bundle_bytes: int | None = None) -> dict:
    """The few numbers a person compares runs by, flat and short-named so `dvc exp show` fits 120 columns:
    top1 (test split, %, the FP32 ONNX file), the INT8 Δtop-1 of each form (points, in ONNX Runtime), the best CPU
    latency (ms, batch 1, any runtime and file), the bundle's size (MB) and the parameter count. The full rows stay
    in the bundle's report.json."""
    rows = report.get("rows", [])
    measured = [r for r in rows if r.get("runtime") == "onnxruntime"]
    fp32 = next((r for r in measured if r.get("format") == "onnx"), rows[0] if rows else {})
    metrics: dict = {}
    if "top1" in fp32:
        metrics["top1"] = round(100 * fp32["top1"], 2)
    for row in measured:
        if row.get("precision") == "int8" and row.get("format") == "onnx-int8":
            form = row.get("form") or row.get("label", "")
            key = "int8_cpu" if "CPU" in form else "int8_trt"
            metrics.setdefault(key, round(row["delta_pts"], 2))
    cpu = [r["latency_ms"] for r in rows[1:] if r.get("format") in ("onnx", "onnx-int8") and "latency_ms" in r]
    if cpu:
        metrics["cpu_ms"] = round(min(cpu), 3)
    if bundle_bytes is not None:
        metrics["mb"] = round(bundle_bytes / 1e6, 2)
    if report.get("params"):
        metrics["params"] = report["params"]
    # `dvc exp show` keeps the first columns and folds the rest to "…" at 120 columns: most wanted first
    order = ("top1", "cpu_ms", "int8_cpu", "int8_trt", "mb", "params")
    return {key: metrics[key] for key in order if key in metrics}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.publish", description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="an experiment's runs folder, e.g. runs/quickstart")
    parser.add_argument("out", help="stable output folder, e.g. models/quickstart")
    parser.add_argument("--prefix", default="", help="put before every name in the metrics files, e.g. pruned_ "
                        "(a second stage's names apart from the first's in `dvc exp show`)")
    args = parser.parse_args(argv)
    try:
        source = publish(args.runs, args.out, args.prefix)
    except (BundleError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"published {source} to {os.path.join(args.out, 'bundle')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
