"""`python -m deploy` (console script `edgecls-deploy`): infer, bench, build-engine, triton, check-tensorrt, install,
rollback, list.

Runs on the device with numpy, OpenCV/PIL, onnxruntime and (for engines) TensorRT; never torch.

Exit status:
  0    everything asked for was done (bench: an artifact that cannot run on this device is skipped
       with a warning line)
  1    some inputs failed: one `error: <file>: <why>` line each on stderr, every other input printed
       (also when every input failed); bench --soak: an artifact whose resident memory grew past the bound
  2    a bad argument, an unusable bundle or artifact, too little memory for the batch size asked
       for (what was printed before it stands), or an unexpected error; one `error:` line on stderr
       (EDGECLS_DEBUG=1 shows the traceback of an unexpected one)
  141  stdout was closed early (`... | head -1`): the command stops quietly, as any Unix tool does
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Optional, Sequence

import numpy as np

from deploy.bench_command import cmd_bench, format_table
from deploy.bundle import BundleError, add_artifact, artifact_entry, load_bundle, verify_artifact
from deploy.cli_common import (EXIT_INPUTS_FAILED, EXIT_OK, EXIT_USAGE, UsageError, error, is_allocation_failure,
                               out_of_memory, providers, select, softmax, stdout_closed, warning)
from deploy.cuda_memory import CudaUnavailable
from deploy.errors import debug_mode, message_line
from deploy.install import resolve_bundle_dir
from deploy.plugins import load_plugins
from deploy.nvtx_ranges import nvtx_range
import deploy.runtimes  # noqa: F401 (the built-in runtimes register themselves)
from deploy.registry import FORMATS, RUNTIMES
from deploy.runtimes.onnxruntime import ort_spin
from deploy.selection import BUDGET_PTS

EXIT_STATUS = "exit status:" + (__doc__ or "").partition("Exit status:")[2].rstrip()


def cmd_infer(args: argparse.Namespace) -> int:
    """Classify images: one JSON line per image on stdout (a name that is not UTF-8: file_bytes, base64), one error
    line per unreadable image on stderr; exit 1 when any image failed."""
    from deploy.images import name_fields
    from deploy.preprocess import Preprocessor, expand_inputs, preprocess
    from deploy.forms import EXACT_USING, device_qdq
    from deploy.registry import open_runner
    from deploy.selection import resolve

    bundle = load_bundle(resolve_bundle_dir(args.bundle), verify=False)
    choice = resolve(bundle, args.runtime, args.format, args.precision, providers(args), args.threads, args.hint,
                     args.max_drop)
    entry = choice.entry
    why = {"only": "the only one that fits the flags", "cache": f"the fastest measured here (cached in {choice.cache_path})",
           "measured": f"the fastest measured here just now (cached in {choice.cache_path})"}.get(choice.source, choice.source)
    exact = device_qdq(entry["format"], entry.get("runtime"), choice.runtime, providers(args)) == "exact"
    how = EXACT_USING if exact else ""  # said here once, not again by open_runner's warning
    print(f"using {entry['file']} in {choice.runtime}{how}: {why}", file=sys.stderr, flush=True)
    prep = Preprocessor(bundle.preprocessing)
    paths = expand_inputs(args.images)
    if not paths:
        raise UsageError("no images given (folders are searched for image files); pass files or folders")
    topk = max(1, min(args.topk, len(bundle.classes)))
    failed = 0
    with open_runner(bundle, entry, providers(args), args.threads, choice.runtime, args.hint, say=False) as runner:
        for start in range(0, len(paths), args.batch_size):
            chunk = paths[start:start + args.batch_size]
            with nvtx_range("preprocess"):
                batch, kept, errors = preprocess(chunk, prep)
            for _, message in errors:
                error(message)
            failed += len(errors)
            if not kept:
                continue
            try:
                logits = runner.infer(batch)
            except Exception as exc:
                if not is_allocation_failure(exc):
                    raise
                raise out_of_memory(entry["file"], len(kept), "--batch-size", str(max(1, len(kept) // 2))) from None
            for row, index in zip(softmax(logits), kept):
                order = np.argsort(-row, kind="stable")[:topk]
                top = [{"class": bundle.classes[i], "index": int(i), "probability": round(float(row[i]), 6)} for i in order]
                print(json.dumps({**name_fields(chunk[index]), "top": top}), flush=True)
    return EXIT_INPUTS_FAILED if failed else EXIT_OK


def cmd_build_engine(args: argparse.Namespace) -> int:
    """Build a TensorRT engine on this device from the bundle's ONNX and add it to manifest.json."""
    from deploy.engine import build_engine, tensorrt_status

    bundle = load_bundle(args.bundle, verify=False)
    source = select(bundle, "onnx-int8" if args.precision == "int8" else "onnx")
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
    from deploy.runtimes.onnxruntime import OnnxRuntimeRunner
    from deploy.triton import write_triton_repository

    bundle = load_bundle(args.bundle, verify=False)
    # Triton's ONNX Runtime backend on CPU instances runs the CPU-form INT8 fast; on GPUs (its TensorRT
    # accelerator) the symmetric file is the one that works, so that is the default.
    prefer = ("cpu", "onnxruntime") if args.instance_kind == "cpu" else ("tensorrt", "onnxruntime")
    entry = bundle.artifact(args.format, prefer=prefer)
    verify_artifact(bundle.path, entry)
    io_names = ("input", "logits")
    if FORMATS[entry["format"]].triton[1].endswith(".onnx"):  # an ONNX file names its tensors itself
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
        error(str(exc))
        return EXIT_USAGE
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0 if result["passed"] else 1


def cmd_install(args: argparse.Namespace) -> int:
    """Verify a bundle (manifest, sha256s, a smoke inference), copy it into a models folder as a new version and
    switch its `current` pointer to it; a bundle that fails verification leaves `current` as it was."""
    from deploy.install import install

    result = install(args.bundle, args.to, args.runtime)
    print(json.dumps(result) if args.json else
          f"installed {args.bundle} as version {result['version']} in {args.to} (current; previous: "
          f"{result['previous'] or 'none'}; {result['smoke_tested']} "
          f"{'ONNX file(s) smoke-tested' if args.runtime is None else 'file(s) smoke-tested in ' + args.runtime})")
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    """Switch a models folder's `current` back to the previous installed version (or to --version)."""
    from deploy.install import rollback

    result = rollback(args.to, args.version)
    print(json.dumps(result) if args.json else
          f"{args.to}: current is version {result['version']} (was {result['previous']})")
    return EXIT_OK


LIST_COLUMNS = [("version", "{}", "version"), ("state", "{}", "state"), ("name", "{}", "name"), ("created", "{}", "created"),
                ("artifact", "{}", "artifact"), ("precision", "{}", "precision"),
                ("test top-1 %", "{:.2f}", "test_top1"), ("latency ms", "{:.3f}", "latency_ms")]


def cmd_list(args: argparse.Namespace) -> int:
    """The versions in a models folder with their manifest's metrics; `*` marks current."""
    from deploy.install import list_versions

    rows = list_versions(args.to)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"{args.to}: no versions installed")
    else:
        marked = [dict(r, version=("* " if r["current"] else "  ") + r["version"]) for r in rows]
        print(format_table(marked, LIST_COLUMNS, left=6))  # text columns left, numbers right
    return EXIT_OK


def _integer(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def _positive(text: str) -> int:
    return _integer(text, 1, "a positive integer (1 or more)")


def _non_negative(text: str) -> int:
    return _integer(text, 0, "a whole number, 0 or more")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected a number of top-1 points, 0 or more, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _batch_sizes(text: str) -> list[int]:
    what = "comma-separated positive integers such as 1,8,32"
    parts = [part.strip() for part in text.split(",")]
    if not any(parts):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    try:
        return [_integer(part, 1, what) for part in parts if part]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy", description="Run an edgecls bundle on this device (also "
                                     "installed as the edgecls-deploy command); each command has its own --help.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, default_format):
        p.add_argument("--bundle", required=True,
                       help="bundle folder (holds manifest.json), or a models folder of `install` (uses its current)")
        p.add_argument("--format", choices=FORMATS, default=default_format,
                       help="only artifacts of this format (default: any)")
        p.add_argument("--runtime", choices=("auto", *RUNTIMES), default="auto",
                       help="auto: the fastest runtime x artifact here within --max-drop of FP32's test top-1, "
                            "measured once and cached in the bundle folder")
        p.add_argument("--max-drop", type=_non_negative_float, default=BUDGET_PTS,
                       help="accuracy budget of --runtime auto, in top-1 points below the FP32 ONNX (manifest)")
        p.add_argument("--providers", default="cpu", help="ONNX Runtime providers in order: cpu,cuda,tensorrt")
        p.add_argument("--threads", type=_positive, default=None, help="intra-op threads (ONNX Runtime, OpenVINO)")
        p.add_argument("--hint", choices=("auto", "latency", "throughput"), default="auto",
                       help="OpenVINO PERFORMANCE_HINT: latency (one stream) or throughput (a batch split over "
                            "streams); auto: latency at batch 1, throughput for larger batches")
        p.add_argument("--spin", action="store_true", help="ONNX Runtime's idle threads busy-wait (a little faster "
                       "with cores to spare; by default they sleep, which a device running other processes needs)")

    p = sub.add_parser("infer", help=cmd_infer.__doc__)
    common(p, None)
    p.add_argument("--precision", default=None, help="pick among engines of one format, e.g. fp16")
    p.add_argument("--topk", type=_positive, default=5, help="classes printed per image, most likely first (default 5)")
    p.add_argument("--batch-size", type=_positive, default=16,
                   help="images preprocessed and run together (default 16); lower it on a device short of memory")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("bench", help=cmd_bench.__doc__)
    common(p, None)
    p.add_argument("--batch", type=_batch_sizes, default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--iterations", type=_positive, default=200,
                   help="timed calls per runtime x artifact x batch size (default 200)")
    p.add_argument("--warmup", type=_non_negative, default=10, help="untimed calls first (default 10; at least one is made)")
    p.add_argument("--json", action="store_true", help="print rows as JSON instead of a table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr (logs, nsys runs)")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="also write each runtime's per-operator profile here (ONNX Runtime: a Chrome/Perfetto trace; "
                        "OpenVINO: per-layer counters) and print the top operators by time")
    p.add_argument("--soak", type=_positive_float, default=None, metavar="SECONDS",
                   help="also run a stress loop this long per artifact (first batch size); report latency drift and "
                        "memory growth, exit 1 where memory grows past --soak-max-growth-mb")
    p.add_argument("--soak-max-growth-mb", type=_positive_float, default=16.0,
                   help="resident memory a soak may gain after its first tenth, in MB (default 16)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("build-engine", help=cmd_build_engine.__doc__)
    p.add_argument("--bundle", required=True, help="bundle folder (holds manifest.json); the engine is added to it")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), required=True,
                   help="engine precision; int8 builds from the bundle's Q/DQ ONNX (model.int8.onnx)")
    p.add_argument("--min-batch", type=_positive, default=1, help="smallest batch the engine accepts (default 1)")
    p.add_argument("--opt-batch", type=_positive, default=8, help="batch TensorRT tunes kernels for (default 8)")
    p.add_argument("--max-batch", type=_positive, default=32, help="largest batch the engine accepts (default 32)")
    p.add_argument("--workspace-mb", type=_positive, default=2048,
                   help="GPU memory TensorRT may use while building, in MB (default 2048)")
    p.add_argument("--timing-cache", default=None, help="TensorRT's timing cache file, reused across builds "
                                                         "(default <bundle>/timing.cache)")
    p.add_argument("--output", default=None, help="engine file name inside the bundle (default model.<precision>.engine)")
    p.set_defaults(func=cmd_build_engine)

    p = sub.add_parser("triton", help=cmd_triton.__doc__)
    p.add_argument("--bundle", required=True, help="bundle folder (holds manifest.json)")
    p.add_argument("--out", required=True, help="model repository folder (created if needed)")
    p.add_argument("--format", choices=[name for name, spec in FORMATS.items() if spec.triton], default="onnx",
                   help="which artifact to serve (default onnx)")
    p.add_argument("--name", default=None, help="model name (default: the manifest's name)")
    p.add_argument("--max-batch-size", type=_positive, default=None,
                   help="Triton's max_batch_size (default: the engine's, or 32)")
    p.add_argument("--instance-kind", choices=("cpu", "gpu"), default=None,
                   help="where Triton runs the model (default: gpu for engines, cpu otherwise)")
    p.set_defaults(func=cmd_triton)

    p = sub.add_parser("check-tensorrt", help=cmd_check_tensorrt.__doc__)
    p.add_argument("model", help="ONNX file, e.g. bundle/model.int8.onnx")
    p.add_argument("--tensorrt", choices=("10", "11"), default="10", help="rule set: 10 (10.3, JetPack 6) or 11")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.set_defaults(func=cmd_check_tensorrt)

    p = sub.add_parser("install", help=cmd_install.__doc__)
    p.add_argument("--bundle", required=True, help="bundle folder to install (holds manifest.json)")
    p.add_argument("--to", required=True, help="models folder (created if needed): versions/ and the current pointer")
    p.add_argument("--runtime", choices=tuple(RUNTIMES), default=None,
                   help="smoke-test the files this runtime reads in it (a phone's litert or ncnn; default: the ONNX "
                        "files in onnxruntime)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("rollback", help=cmd_rollback.__doc__)
    p.add_argument("--to", required=True, help="models folder of `install`")
    p.add_argument("--version", default=None, help="switch to this version (default: the one before current)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("list", help=cmd_list.__doc__)
    p.add_argument("--to", required=True, help="models folder of `install`")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_list)

    parser.epilog, parser.formatter_class = EXIT_STATUS, argparse.RawDescriptionHelpFormatter
    for name, command in sub.choices.items():  # each command lists only the statuses it returns
        command.epilog, command.formatter_class = exit_statuses(name), argparse.RawDescriptionHelpFormatter
    return parser


_STATUS_1 = {
    "infer": "some inputs failed: one `error: <file>: <why>` line each on stderr, every other input printed",
    "bench": "--soak: an artifact whose resident memory grew past the bound (one `error:` line each)",
    "check-tensorrt": "the file breaks a rule: one line per node",
}


def exit_statuses(command: str) -> str:
    """The exit-status block of one command's --help: 0, 1 where the command can return it, 2 and 141."""
    done = {"bench": " (an artifact that cannot run here is skipped with a warning line)",
            "check-tensorrt": ": the file keeps every rule"}
    lines = ["exit status:", "  0    done" + done.get(command, "")] + ([f"  1    {_STATUS_1[command]}"] if command in _STATUS_1 else [])
    unusable = {"check-tensorrt": "a file that is not readable ONNX", "infer": "an unusable bundle or artifact, too little "
                "memory for the batch size", "bench": "an unusable bundle or artifact, too little memory for the batch size",
                "rollback": "no version to switch to", "list": "a models folder that does not exist"}
    lines += [f"  2    a bad argument, {unusable.get(command, 'an unusable bundle or artifact')} or an unexpected error; "
              "one `error:` line on stderr (EDGECLS_DEBUG=1: the traceback)",
              "  141  stdout was closed early (`... | head -1`): the command stops quietly"]
    return "\n".join(lines)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # A runtime warning (e.g. "no CUDAExecutionProvider; running on CPU") is advice to the user, not a source line.
    warning(message_line(message))


def _user_sentence(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "out of memory; free memory on this device (stop other processes) or use a smaller batch or artifact"
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror.lower()}; check the path, its permissions and the free disk space"
    return message_line(exc)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns the exit status of the module docstring (argparse exits 2 itself on bad usage)."""
    try:
        load_plugins()  # before the parser: a plugin's formats are --format choices
    except BundleError as exc:
        error(str(exc))
        return EXIT_USAGE
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            with ort_spin(getattr(args, "spin", False)):
                status = args.func(args)
            sys.stdout.flush()  # a closed pipe must fail here, inside the handler, not at interpreter exit
        return status
    except BrokenPipeError:
        return stdout_closed()
    except (BundleError, UsageError, CudaUnavailable, OSError, MemoryError) as exc:
        error(_user_sentence(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        error("interrupted")
        return 128 + 2
    except Exception as exc:
        if debug_mode():
            raise
        error(f"`{args.command}` failed unexpectedly ({type(exc).__name__}: {message_line(exc)}); this is a bug: "
               "rerun with EDGECLS_DEBUG=1 for the traceback and report it")
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
