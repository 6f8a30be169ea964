"""Per-operator profiles from each runtime's own profiler, for `python -m deploy bench --profile <dir>`.

ONNX Runtime writes a Chrome trace (open it in chrome://tracing or https://ui.perfetto.dev); OpenVINO's CPU
plugin gives per-layer counters (PERF_COUNT), written here as JSON. A profile runs in its own session after
the timed bench, so the profiler's overhead never reaches the latency columns. A profiler is registered by
runtime name in PROFILERS, like the runners.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from typing import Callable, Optional

import numpy as np

from deploy.bundle import BundleError, atomic_write_json

TOP = 10


def _input_batch(shape, batch: int, seed: int = 0) -> np.ndarray:
    dims = tuple(d if isinstance(d, int) and d > 0 else 224 for d in shape)
    return np.random.default_rng(seed).standard_normal((batch,) + dims).astype(np.float32)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _summary(runtime: str, path: str, batch: int, runs: int, profile: str, durations: dict, kinds: dict) -> dict:
    # The median call of each operator, times its calls per run: one run stalled by another process on a busy
    # device would otherwise decide the ranking.
    per_run = {name: float(np.median(us)) * len(us) / runs for name, us in durations.items()}
    everything = sum(per_run.values()) or 1.0
    operators = [{"name": name, "op": kinds.get(name, "?"), "ms_per_run": us / 1000.0, "share": us / everything}
                 for name, us in sorted(per_run.items(), key=lambda item: -item[1])]
    return {"runtime": runtime, "artifact": os.path.basename(path), "batch": batch, "runs": runs, "profile": profile,
            "total_ms_per_run": everything / 1000.0, "operators": operators}


def profile_onnxruntime(path: str, out_dir: str, batch: int = 1, iterations: int = 20, threads: Optional[int] = None,
                        providers=("cpu",), hint: Optional[str] = None) -> dict:
    """ONNX Runtime's profiler over `iterations` runs (after one warm-up run, left out of the totals)."""
    import onnxruntime as ort

    from deploy.runtimes.onnxruntime import ORT_PROVIDERS

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(out_dir, ".ort-profile")
    if threads:
        options.intra_op_num_threads = int(threads)
    chosen = [ORT_PROVIDERS.get(p.lower(), p) for p in providers]
    chosen = [p for p in chosen if p in ort.get_available_providers()] + ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(path, sess_options=options, providers=list(dict.fromkeys(chosen)))
    except Exception as exc:
        raise BundleError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]}); re-export the model")
    inp = session.get_inputs()[0]
    x = _input_batch(inp.shape[1:], batch)
    for _ in range(1 + iterations):
        session.run(None, {inp.name: x})
    raw = session.end_profiling()
    target = os.path.join(out_dir, f"onnxruntime-{_safe(os.path.basename(path))}-b{batch}.json")
    os.replace(raw, target)
    with open(target, encoding="utf-8") as handle:
        events = json.load(handle)
    run_spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    warmup_end = run_spans[0][1] if run_spans else -1
    totals, kinds = defaultdict(list), {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time") or event["ts"] <= warmup_end:
            continue
        name = event["name"][:-len("_kernel_time")]
        totals[name].append(event["dur"])  # microseconds
        kinds[name] = (event.get("args") or {}).get("op_name", "?")
    return _summary("onnxruntime", path, batch, iterations, target, totals, kinds)


def profile_openvino(path: str, out_dir: str, batch: int = 1, iterations: int = 20, threads: Optional[int] = None,
                     providers=("cpu",), hint: Optional[str] = "auto", precision: str = "f32") -> dict:
    """OpenVINO's per-layer counters (PERF_COUNT) over `iterations` runs after one warm-up run, compiled as
    OpenVinoRunner compiles it (its threads, hint and precision)."""
    from deploy.cpu_features import physical_cores

    try:
        import openvino as ov
    except ImportError as exc:
        raise BundleError(f"openvino is not importable ({exc}); install it with pip install openvino") from None
    hint = hint or "auto"
    if hint == "auto":
        hint = "latency" if batch == 1 else "throughput"
    config = {"PERF_COUNT": True, "PERFORMANCE_HINT": hint.upper(), "INFERENCE_PRECISION_HINT": precision,
              "INFERENCE_NUM_THREADS": int(threads or physical_cores())}
    try:
        compiled = ov.Core().compile_model(path, "CPU", config)
    except Exception as exc:
        raise BundleError(f"{path}: OpenVINO cannot compile it ({str(exc).splitlines()[0]}); re-export the model")
    request = compiled.create_infer_request()
    x = _input_batch([d.get_length() if d.is_static else None for d in compiled.inputs[0].get_partial_shape()][1:],
                     batch)
    request.infer({0: x})
    totals, kinds, layers = defaultdict(list), {}, {}
    for _ in range(iterations):
        request.infer({0: x})
        for info in request.get_profiling_info():  # the counters of the last inference only
            if str(info.status).endswith("EXECUTED") and not str(info.status).endswith("NOT_EXECUTED"):
                totals[info.node_name].append(info.real_time.total_seconds() * 1e6)
                kinds[info.node_name] = info.node_type
                layers[info.node_name] = info.exec_type
    runtime = "openvino" if precision == "f32" else f"openvino-{precision}"  # bf16's profile beside f32's, not over it
    target = os.path.join(out_dir, f"{runtime}-{_safe(os.path.basename(path))}-b{batch}.json")
    summary = _summary(runtime, path, batch, iterations, target, totals, kinds)
    atomic_write_json(target, {"runs": iterations, "batch": batch, "layers": [
        {"name": o["name"], "type": o["op"], "exec_type": layers[o["name"]], "real_time_us_per_run": 1000 * o["ms_per_run"],
         "share": o["share"]} for o in summary["operators"]]})
    return summary


PROFILERS: dict[str, Callable[..., dict]] = {
    "onnxruntime": profile_onnxruntime, "openvino": profile_openvino,
    "openvino-bf16": lambda *args, **kwargs: profile_openvino(*args, **kwargs, precision="bf16")}


def format_profile(result: dict, top: int = TOP) -> str:
    """The top operators by time with their share, under a line that names the artifact and the profile file."""
    head = (f"{result['artifact']} in {result['runtime']}, batch {result['batch']}: "
            f"{result['total_ms_per_run']:.3f} ms of operators per run; profile: {result['profile']}")
    ops = result["operators"][:top]
    width = max([len(o["name"]) for o in ops] + [8])
    kind = max([len(o["op"]) for o in ops] + [2])
    lines = [head, f"  {'operator'.ljust(width)}  {'op'.ljust(kind)}  {'ms/run':>8}  {'share':>6}"]
    lines += [f"  {o['name'].ljust(width)}  {o['op'].ljust(kind)}  {o['ms_per_run']:8.3f}  {100 * o['share']:5.1f}%"
              for o in ops]
    return "\n".join(lines)
