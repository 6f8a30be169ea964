"""`python -m deploy bench`: latency, throughput, memory, profiles and soak per runtime × artifact."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

from deploy.bundle import BundleError, load_bundle, verify_artifact
from deploy.cli_common import (EXIT_INPUTS_FAILED, EXIT_OK, UsageError, error, is_allocation_failure, out_of_memory,
                               providers, warning)
from deploy.forms import entry_form, runtime_name
from deploy.install import resolve_bundle_dir

def _bench_rows(args: argparse.Namespace, bundle, cands: list) -> tuple[list[dict], Optional[UsageError]]:
    """The measured rows (one per runtime × artifact × batch), and the out-of-memory error that stopped the run
    early (None when none did), so the rows measured before it are still printed."""
    from deploy.benchmark import measure
    from deploy.runners import open_runner
    from deploy.selection import runtime_scores

    batches = args.batch
    total = len(cands) * len(batches) * args.iterations
    progress = _progress_bar(total, disable=args.no_progress)
    rows = []
    with progress as bar:
        task = bar.add_task("bench", total=total) if bar else None
        for cand in cands:
            entry = cand.entry
            try:
                runner = open_runner(bundle, entry, providers(args), args.threads, cand.runtime, args.hint)
            except BundleError as exc:
                warning(f"skipped {entry['file']} in {cand.runtime}: {exc}")
                if bar:
                    bar.advance(task, len(batches) * args.iterations)
                continue
            with runner:
                for batch in batches:
                    if bar:
                        bar.update(task, description=f"{entry['file']} {cand.runtime} batch {batch}")
                    step = (lambda n: bar.advance(task, n)) if bar else None
                    try:
                        result = measure(runner, batch, iterations=args.iterations, warmup=args.warmup, progress=step)
                    except Exception as exc:
                        if not is_allocation_failure(exc):
                            raise
                        fitting = ",".join(str(b) for b in batches if b < batch) or str(max(1, batch // 2))
                        return rows, out_of_memory(entry["file"], batch, "--batch", fitting)
                    precision, metrics = runtime_scores(entry, cand.runtime)  # openvino-bf16: bf16, its own top-1
                    top1 = metrics.get("top1")
                    rows.append({"artifact": entry["file"], "form": entry_form(entry), "format": entry["format"],
                                 "precision": precision,
                                 "runtime": cand.runtime,
                                 "size_mb": (entry["bytes"] + sum(c["bytes"] for c in entry.get("companions") or ())) / 1e6,
                                 "test_top1": None if top1 is None else 100 * top1, "gate": entry.get("gate"),
                                 "chosen": False, **result})
    return rows, None


class _NoProgress:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress_bar(total: int, disable: bool = False):
    if disable:
        return _NoProgress()
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    except ImportError:
        return _NoProgress()
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True)


COLUMNS = [("artifact", "{}", "artifact"), ("form", "{}", "form"), ("runtime", "{}", "runtime_name"),
           ("batch", "{}", "batch"), ("p50 ms", "{:.3f}", "p50_ms"),
           ("p90 ms", "{:.3f}", "p90_ms"), ("p99 ms", "{:.3f}", "p99_ms"), ("img/s", "{:.1f}", "throughput"),
           ("size MB", "{:.2f}", "size_mb"), ("test top-1 %", "{:.2f}", "test_top1"), ("INT8 gate", "{}", "gate"),
           ("peak RSS MB", "{:.1f}", "peak_rss_mb"), ("RSS growth MB", "{:+.2f}", "rss_growth_mb"),
           ("memory", "{}", "memory"), ("auto picks", "{}", "auto")]
_LEFT = 3  # the first columns are names, left-aligned; numbers right-aligned


def format_table(rows: list[dict], columns=COLUMNS, left: int = _LEFT) -> str:
    """A plain fixed-width table (no terminal width games, so every column always prints); a value the bundle
    does not have (a test top-1 of an engine built here) prints as "-"."""
    cells = [[title for title, _, _ in columns]]
    for row in rows:
        row = dict(row, memory="ok" if row.get("memory_ok", True) else "LEAK?", auto="yes" if row.get("chosen") else "",
                   runtime_name=runtime_name(row.get("runtime", "")))
        cells.append(["-" if row.get(key) is None else fmt.format(row[key]) for _, fmt, key in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i >= left else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def bench_caption(args: argparse.Namespace, rows: list[dict]) -> str:
    """The one line that says what the bench table's columns mean."""
    from deploy.selection import cpu_model

    n = args.threads or os.cpu_count()
    where = f"{cpu_model()} ({n} {'thread' if args.threads else 'core'}{'s' if n != 1 else ''})"
    if any(r["runtime"] == "tensorrt" for r in rows):
        where += ", TensorRT rows on the GPU"
    return (f"Measured here on {where}, each row by the runtime it names; form = what the file was made for; "
            f"p50/p90/p99 ms = one call of `batch` images ({args.iterations} timed calls; per image: divide by batch); "
            "img/s = batch × calls / time; test top-1 % and INT8 gate: the manifest's, measured at fit end on the test "
            "and validation splits, not here; peak RSS MB = the whole bench process's resident memory at its highest "
            "during the row (Python and every runtime loaded so far, not the file's own footprint); RSS growth MB = "
            "during this row's timed calls (memory LEAK? past 8 MB); auto picks = the row `--runtime auto` runs here.")


def cmd_bench(args: argparse.Namespace) -> int:
    """Latency p50/p90/p99, throughput, size, test top-1 and a resident-memory leak check per runtime × artifact
    and batch size; the row `--runtime auto` picks (measured here, cached) is marked."""
    from deploy.selection import candidates, choose

    bundle = load_bundle(resolve_bundle_dir(args.bundle), verify=False)
    runtime = None if args.runtime == "auto" else args.runtime
    cands = candidates(bundle, runtime, args.format)
    for entry in {id(c.entry): c.entry for c in cands}.values():
        verify_artifact(bundle.path, entry)
    rows, memory_error = _bench_rows(args, bundle, cands)
    if rows and not memory_error:
        # Bench's own batch-1 p50s decide (and refresh the cache) where it measured batch 1.
        timings = {f"{r['runtime']}:{r['artifact']}": r["p50_ms"] for r in rows if r["batch"] == 1} or None
        choice = choose(bundle, runtime, args.format, None, providers(args), args.threads, args.hint,
                        args.max_drop, timings=timings)
        for row in rows:
            row["chosen"] = (row["runtime"], row["artifact"]) == (choice.runtime, choice.entry["file"])
    if rows:
        print(json.dumps(rows, indent=2) if args.json else f"{bench_caption(args, rows)}\n{format_table(rows)}", flush=True)
    if memory_error:
        raise memory_error
    if not rows:
        raise UsageError(f"nothing was measured: no artifact in {bundle.path} can run on this device (see the "
                         "warnings above); pass --format onnx or build an engine here")
    if args.profile:
        _bench_profiles(args, bundle, cands)
    if args.soak:
        return _bench_soak(args, bundle, cands)
    return EXIT_OK


def _bench_profiles(args: argparse.Namespace, bundle, cands: list) -> None:
    """Each runtime's own per-operator profile of every candidate at the first batch size, in its own session
    after the timed runs; the top operators go to stdout (stderr with --json, so stdout stays one JSON value)."""
    from deploy.profiling import PROFILERS, format_profile

    os.makedirs(args.profile, exist_ok=True)
    out = sys.stderr if args.json else sys.stdout
    for cand in cands:
        profiler = PROFILERS.get(cand.runtime)
        if profiler is None:
            warning(f"no per-operator profiler for {cand.runtime} here; for {cand.entry['file']} use "
                     "`nsys profile` (NVTX ranges mark each call) or `trtexec --dumpProfile`")
            continue
        result = profiler(bundle.artifact_path(cand.entry), args.profile, batch=args.batch[0],
                          iterations=min(args.iterations, 50), threads=args.threads, providers=providers(args),
                          hint=args.hint)
        print("\n" + format_profile(result), file=out, flush=True)


def _bench_soak(args: argparse.Namespace, bundle, cands: list) -> int:
    """A stress loop of --soak seconds per candidate; exit 1 (one sentence each) where memory grew past the bound."""
    from deploy.benchmark import soak
    from deploy.runners import open_runner

    out = sys.stderr if args.json else sys.stdout
    failed = 0
    for cand in cands:
        with open_runner(bundle, cand.entry, providers(args), args.threads, cand.runtime, args.hint) as runner:
            result = soak(runner, args.batch[0], args.soak, max_growth_mb=args.soak_max_growth_mb)
        print(f"soak {cand.entry['file']} in {cand.runtime}, batch {result['batch']}, {result['seconds']:g} s, "
              f"{result['calls']} calls: p50 {result['first_p50_ms']:.3f} -> {result['last_p50_ms']:.3f} ms "
              f"({result['latency_drift_pct']:+.1f} %), resident memory {result['rss_start_mb']:.1f} -> "
              f"{result['rss_end_mb']:.1f} MB ({result['rss_growth_mb']:+.2f} MB, bound {result['max_growth_mb']:g} MB)",
              file=out, flush=True)
        if not result["memory_ok"]:
            failed += 1
            error(f"{cand.entry['file']} in {cand.runtime}: resident memory grew {result['rss_growth_mb']:.1f} MB in "
                   f"a {result['seconds']:g} s soak, over the {result['max_growth_mb']:g} MB bound (a leak?); rerun "
                   "with a longer --soak to confirm, or raise --soak-max-growth-mb if the growth is expected")
    return EXIT_INPUTS_FAILED if failed else EXIT_OK
