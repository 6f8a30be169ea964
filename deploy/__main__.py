"""``python -m deploy`` (console script ``edgecls-deploy``): infer, bench, build-engine, triton.

Runs on the device with numpy, OpenCV/PIL, onnxruntime and (for engines) TensorRT; never torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from deploy.bundle import BundleError, FORMATS, add_artifact, artifact_entry, load_bundle, verify_artifact

EXIT_ALL_FAILED = 1
EXIT_USAGE = 2


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def _select(bundle, fmt: Optional[str], precision: Optional[str] = None) -> dict:
    entry = bundle.artifact(fmt, precision)
    verify_artifact(bundle.path, entry)
    return entry


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def cmd_infer(args: argparse.Namespace) -> int:
    """Classify images: one JSON line per image on stdout, one error line per unreadable image on stderr."""
    from deploy.preprocess import Preprocessor, expand_inputs, preprocess
    from deploy.runners import open_runner

    bundle = load_bundle(args.bundle, verify=False)
    entry = _select(bundle, args.format, args.precision)
    prep = Preprocessor(bundle.preprocessing)
    paths = expand_inputs(args.images)
    if not paths:
        _error("no images given (folders are searched for image files); pass files or folders")
        return EXIT_ALL_FAILED
    topk = max(1, min(args.topk, len(bundle.classes)))
    ok = 0
    with open_runner(bundle, entry, providers=args.providers.split(","), threads=args.threads) as runner:
        for start in range(0, len(paths), args.batch_size):
            chunk = paths[start:start + args.batch_size]
            batch, kept, errors = preprocess(chunk, prep)
            for _, message in errors:
                _error(message)
            if not kept:
                continue
            probs = softmax(runner.infer(batch))
            for row, index in zip(probs, kept):
                order = np.argsort(-row, kind="stable")[:topk]
                top = [{"class": bundle.classes[i], "index": int(i), "probability": round(float(row[i]), 6)} for i in order]
                print(json.dumps({"file": chunk[index], "top": top}), flush=True)
                ok += 1
    return 0 if ok else EXIT_ALL_FAILED


def _bench_rows(args: argparse.Namespace, bundle, entries: list[dict]) -> list[dict]:
    from deploy.benchmark import measure
    from deploy.runners import open_runner

    batches = [int(b) for b in args.batch.split(",") if b.strip()]
    if not batches or min(batches) < 1:
        raise BundleError(f"--batch must be a comma-separated list of positive integers, got {args.batch!r}")
    progress = _progress_bar(len(entries) * len(batches) * args.iterations, disable=args.no_progress)
    rows = []
    with progress as bar:
        task = bar.add_task("bench", total=len(entries) * len(batches) * args.iterations) if bar else None
        for entry in entries:
            try:
                runner = open_runner(bundle, entry, providers=args.providers.split(","), threads=args.threads)
            except BundleError as exc:
                _error(f"skipped {entry['file']}: {exc}")
                if bar:
                    bar.advance(task, len(batches) * args.iterations)
                continue
            with runner:
                for batch in batches:
                    if bar:
                        bar.update(task, description=f"{entry['file']} batch {batch}")
                    step = (lambda n: bar.advance(task, n)) if bar else None
                    result = measure(runner, batch, iterations=args.iterations, warmup=args.warmup, progress=step)
                    rows.append({"artifact": entry["file"], "format": entry["format"], "precision": entry["precision"],
                                 "size_mb": entry["bytes"] / 2**20, **result})
    return rows


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


COLUMNS = [("artifact", "{}", "artifact"), ("format", "{}", "format"), ("precision", "{}", "precision"),
           ("batch", "{}", "batch"), ("p50 ms", "{:.3f}", "p50_ms"), ("p90 ms", "{:.3f}", "p90_ms"),
           ("p99 ms", "{:.3f}", "p99_ms"), ("img/s", "{:.1f}", "throughput"), ("size MB", "{:.2f}", "size_mb"),
           ("RSS growth MB", "{:+.2f}", "rss_growth_mb"), ("memory", "{}", "memory")]


def format_table(rows: list[dict], columns=COLUMNS) -> str:
    """A plain fixed-width table (no terminal width games, so every column always prints)."""
    cells = [[title for title, _, _ in columns]]
    for row in rows:
        row = dict(row, memory="ok" if row.get("memory_ok", True) else "LEAK?")
        cells.append([fmt.format(row[key]) for _, fmt, key in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    """Latency p50/p90/p99, throughput, size and a resident-memory leak check per artifact and batch size."""
    bundle = load_bundle(args.bundle, verify=False)
    entries = [e for e in bundle.artifacts if args.format in (None, e["format"])]
    if not entries:
        bundle.artifact(args.format)  # raises the "no such artifact" sentence
    for entry in entries:
        verify_artifact(bundle.path, entry)
    rows = _bench_rows(args, bundle, entries)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    return 0 if rows else EXIT_ALL_FAILED


def cmd_build_engine(args: argparse.Namespace) -> int:
    """Build a TensorRT engine on this device from the bundle's ONNX and add it to manifest.json."""
    from deploy.engine import build_engine, tensorrt_status

    bundle = load_bundle(args.bundle, verify=False)
    source = _select(bundle, "onnx-int8" if args.precision == "int8" else "onnx")
    ok, reason = tensorrt_status()
    if not ok:
        raise BundleError(f"cannot build a TensorRT engine here because {reason}")
    engine_path = os.path.join(bundle.path, args.output or f"model.{args.precision}.engine")
    cache = args.timing_cache or os.path.join(bundle.path, "timing.cache")
    sidecar = build_engine(bundle.artifact_path(source), engine_path, args.precision, args.min_batch, args.opt_batch,
                           args.max_batch, args.workspace_mb, cache)
    add_artifact(bundle.path, artifact_entry(engine_path, "tensorrt", args.precision, bundle_dir=bundle.path))
    print(json.dumps({"engine": engine_path, **sidecar}))
    return 0


def cmd_triton(args: argparse.Namespace) -> int:
    """Write a Triton model repository (config.pbtxt, labels, model file) for one bundle artifact."""
    from deploy.runners import OnnxRuntimeRunner
    from deploy.triton import write_triton_repository

    bundle = load_bundle(args.bundle, verify=False)
    entry = _select(bundle, args.format)
    io_names = ("input", "logits")
    if entry["format"] != "tensorrt":
        runner = OnnxRuntimeRunner(bundle.artifact_path(entry))
        io_names = (runner.input_name, runner.output_name)
    model_dir = write_triton_repository(bundle, args.out, entry, args.name, args.max_batch_size, args.instance_kind,
                                        io_names)
    print(model_dir)
    return 0


def cmd_check_tensorrt(args: argparse.Namespace) -> int:
    """Check an ONNX file against TensorRT's documented parser rules (offline: no GPU or TensorRT needed)."""
    from deploy.tensorrt_check import TensorRTCheckError, check_tensorrt, format_result

    try:
        result = check_tensorrt(args.model, args.tensorrt)
    except TensorRTCheckError as exc:
        _error(str(exc))
        return EXIT_USAGE
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0 if result["passed"] else 1


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, default_format):
        p.add_argument("--bundle", required=True, help="bundle folder (holds manifest.json)")
        p.add_argument("--format", choices=FORMATS, default=default_format)
        p.add_argument("--providers", default="cpu", help="ONNX Runtime providers in order: cpu,cuda,tensorrt")
        p.add_argument("--threads", type=_positive, default=None, help="ONNX Runtime intra-op threads")

    p = sub.add_parser("infer", help=cmd_infer.__doc__)
    common(p, "onnx")
    p.add_argument("--precision", default=None, help="pick among engines of one format, e.g. fp16")
    p.add_argument("--topk", type=_positive, default=5)
    p.add_argument("--batch-size", type=_positive, default=16)
    p.add_argument("images", nargs="+", help="image files or folders")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("bench", help=cmd_bench.__doc__)
    common(p, None)
    p.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes")
    p.add_argument("--iterations", type=_positive, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print rows as JSON instead of a table")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("build-engine", help=cmd_build_engine.__doc__)
    p.add_argument("--bundle", required=True)
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), required=True)
    p.add_argument("--min-batch", type=_positive, default=1)
    p.add_argument("--opt-batch", type=_positive, default=8)
    p.add_argument("--max-batch", type=_positive, default=32)
    p.add_argument("--workspace-mb", type=_positive, default=2048)
    p.add_argument("--timing-cache", default=None, help="default: <bundle>/timing.cache, reused across builds")
    p.add_argument("--output", default=None, help="engine file name inside the bundle")
    p.set_defaults(func=cmd_build_engine)

    p = sub.add_parser("triton", help=cmd_triton.__doc__)
    p.add_argument("--bundle", required=True)
    p.add_argument("--out", required=True, help="model repository folder (created if needed)")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--name", default=None, help="model name (default: the manifest's name)")
    p.add_argument("--max-batch-size", type=_positive, default=None)
    p.add_argument("--instance-kind", choices=("cpu", "gpu"), default=None)
    p.set_defaults(func=cmd_triton)

    p = sub.add_parser("check-tensorrt", help=cmd_check_tensorrt.__doc__)
    p.add_argument("model", help="ONNX file, e.g. bundle/model.int8.onnx")
    p.add_argument("--tensorrt", choices=("10", "11"), default="10", help="rule set: 10 (10.3, JetPack 6) or 11")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.set_defaults(func=cmd_check_tensorrt)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BundleError as exc:
        _error(str(exc))
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
