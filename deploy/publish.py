"""Copy the newest run's bundle to a stable path, for the DVC pipeline (dvc.yaml) to track as a stage output.

    python -m deploy.publish runs/quickstart models/quickstart

writes models/quickstart/bundle/ (verified: manifest and every sha256), and beside it the stage's metrics:
report.json and metrics.json (the same rows keyed by artifact, the form `dvc exp show` can compare). The newest run is the highest version_N; if that run has no bundle (its fit-end chain failed
before writing one) this fails rather than publish an older run's bundle as the new one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from typing import Optional, Sequence

from deploy.bundle import MANIFEST, BundleError, atomic_write_bytes, atomic_write_json, load_bundle

_RUN = re.compile(r"^version_(\d+)$")


def newest_bundle(runs_dir: str) -> str:
    """runs/<experiment>/version_<highest N>/bundle."""
    runs = sorted(((int(m.group(1)), name) for name in (os.listdir(runs_dir) if os.path.isdir(runs_dir) else [])
                   if (m := _RUN.match(name))), reverse=True)
    if not runs:
        raise BundleError(f"{runs_dir}: no version_N runs here; run `python main.py fit --config ...` first")
    bundle = os.path.join(runs_dir, runs[0][1], "bundle")
    if not os.path.isfile(os.path.join(bundle, MANIFEST)):
        raise BundleError(f"{bundle}: the newest run has no bundle (see its fit log for the failed fit-end step); "
                          "fix that step and run the fit again")
    return bundle


def publish(runs_dir: str, out_dir: str) -> str:
    """Copy the newest verified bundle to <out_dir>/bundle and its report.json beside it; returns the source."""
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
        atomic_write_bytes(os.path.join(out_dir, "report.json"), data)
        atomic_write_json(os.path.join(out_dir, "metrics.json"), flat_metrics(json.loads(data)))
    return source


def flat_metrics(report: dict) -> dict:
    """report.json's rows keyed by artifact label: DVC reads metrics from nested objects, not from lists, so
    `dvc exp show` and `dvc metrics diff` can only compare the rows in this form."""
    metrics = {"test_samples": report.get("test_samples"), "params": report.get("params")}
    for row in report.get("rows", []):
        key = re.sub(r"[^a-z0-9]+", "_", row["label"].lower()).strip("_")
        metrics[key] = {k: row[k] for k in ("top1", "top5", "delta_pts", "latency_ms", "throughput", "size_mb")
                        if isinstance(row.get(k), (int, float))}
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.publish", description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="an experiment's runs folder, e.g. runs/quickstart")
    parser.add_argument("out", help="stable output folder, e.g. models/quickstart")
    args = parser.parse_args(argv)
    try:
        source = publish(args.runs, args.out)
    except (BundleError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"published {source} to {os.path.join(args.out, 'bundle')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
