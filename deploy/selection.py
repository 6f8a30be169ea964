"""`--runtime auto`: the fastest runtime × artifact on this device within the bundle's accuracy budget.

Candidates are every artifact the bundle holds times every runtime installed here that reads its format. Those
whose test top-1 in the manifest is more than `budget_pts` below the FP32 ONNX's are left out (an artifact with
no test top-1 is kept only at fp32 or fp16: an engine built on the device has no score yet, and fp16 costs a
classifier no measurable top-1). A runtime that computes in its own precision (openvino-bf16 runs the FP32
file in bf16) is judged by its own test top-1 from the manifest's `runtime_metrics`, and left out without one.
The rest are timed once at batch 1, interleaved, and the lowest p50 wins. The choice is cached in the bundle
folder (`.runtime-choice.json`), keyed by this device (CPU model, core count, runtime versions, threads, hint)
and the candidates' sha256s, so a new engine, a re-quantized file or an upgraded runtime measures again; where
the bundle folder is read-only the cache lives under ~/.cache/edgecls.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

import deploy.runtimes  # noqa: F401 (the built-in runtimes register themselves)
from deploy.bundle import Bundle, BundleError, atomic_write_json, verify_artifact

CACHE_NAME = ".runtime-choice.json"
CACHE_SCHEMA = 1
CACHE_ENTRIES = 32  # one per device × settings; a bundle on a shared disk serves several devices
BUDGET_PTS = 0.5
# Which manifest `runtime` tags each runtime prefers when one format has several files (onnx-int8: TensorRT's
# symmetric form and the CPU form).
PREFERRED_TAGS = {"onnxruntime": ("cpu", "onnxruntime"), "openvino": ("cpu", "openvino"), "tensorrt": ("tensorrt",)}


@dataclass(frozen=True)
class Candidate:
    entry: dict
    runtime: str

    @property
    def key(self) -> str:
        return f"{self.runtime}:{self.entry['file']}"


@dataclass
class Choice:
    entry: dict
    runtime: str
    source: str  # "only" (one candidate), "cache", "measured"
    timings: dict = field(default_factory=dict)  # candidate key -> batch-1 p50 ms (when measured)
    cache_path: Optional[str] = None

    @property
    def key(self) -> str:
        return f"{self.runtime}:{self.entry['file']}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(("model name", "Hardware", "Model")):  # x86, older Arm kernels, Raspberry Pi
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_runtimes() -> list[str]:
    from deploy.registry import RUNTIMES

    return [name for name, spec in RUNTIMES.items() if spec.available()]


_SKIPPED_SAID: set[str] = set()


def bf16_not_offered(entry: dict) -> Optional[str]:
    """Why OpenVINO's bf16 run of this file is not offered (None: it is). bf16 is offered only where it was
    measured faster than the same file in OpenVINO f32, at fit end (the manifest's runtime_metrics): a CPU with
    AVX512_BF16 but no AMX may run it slower (its bf16 convolutions and the conversions around them), and a
    slower run that also rounds is no offer."""
    measured = entry.get("runtime_metrics") or {}
    bf16, f32 = ((measured.get(name) or {}).get("latency_ms") for name in ("openvino-bf16", "openvino"))
    if bf16 is None or f32 is None:
        return "it was not measured against f32 at fit end"
    if bf16 >= f32:
        where = (measured["openvino-bf16"].get("device") or "the fit's CPU").removeprefix("CPU ")
        return (f"at fit end on {where} it ran {bf16:.3g} ms against {f32:.3g} ms in f32 at batch 1, and bf16 is "
                f"offered only where it is measured faster (AMX on this CPU: {'yes' if has_amx() else 'no'})")
    return None


def has_amx() -> bool:
    from deploy.cpu_features import cpu_flags

    return "amx_bf16" in cpu_flags()


def candidates(bundle: Bundle, runtime: Optional[str] = None, format: Optional[str] = None,
               precision: Optional[str] = None, left_out: Optional[list] = None) -> list[Candidate]:
    """Every (artifact, runtime) pair the flags allow; an explicit runtime is tried even where it looks
    unavailable, so its own sentence says why it cannot run. A bf16 run that was not measured faster than f32
    is left out unless --runtime names it (`left_out` collects (file, runtime, why) for each)."""
    from deploy.registry import FORMATS, runtime_spec, unrunnable_notice

    names = [runtime_spec(runtime).name] if runtime else available_runtimes()
    found = []
    for entry in bundle.artifacts:
        if format not in (None, entry["format"]) or precision not in (None, entry["precision"]):
            continue
        if entry["format"] not in FORMATS:  # a plugin's format without its plugin here: the rest still runs
            if entry["file"] not in _SKIPPED_SAID:  # one line per file, however often a command asks
                _SKIPPED_SAID.add(entry["file"])
                warnings.warn(unrunnable_notice(entry), RuntimeWarning, stacklevel=2)
            continue
        for name in names:
            if entry["format"] not in runtime_spec(name).formats:
                continue
            why = bf16_not_offered(entry) if runtime_spec(name).precision == "bf16" and not runtime else None
            if why is not None:
                if left_out is not None:
                    left_out.append((entry["file"], name, why))
                continue
            found.append(Candidate(entry, name))
    if not found:
        bundle.artifact(format, precision)  # raises the "no such artifact" sentence when there is none at all
        raise BundleError(f"{bundle.path}: no artifact in this bundle runs in {runtime or 'any runtime here'}"
                          f"{' as ' + format if format else ''}; pass another --runtime or --format")
    return found


def reference_top1(bundle: Bundle) -> Optional[float]:
    for entry in bundle.artifacts:
        if entry["format"] == "onnx" and entry["precision"] == "fp32":
            return (entry.get("metrics") or {}).get("top1")
    return None


def runtime_scores(entry: dict, runtime: Optional[str] = None) -> tuple[str, dict]:
    """The precision an artifact computes in within `runtime`, and its manifest metrics there: the entry's
    `runtime_metrics[runtime]` where the fit-end step measured that pair (OpenVINO's bf16 run of the FP32
    file has its own top-1), else the file's own. A runtime that computes in another precision than the
    file and was never scored has no metrics: its accuracy is unknown, not the file's."""
    from deploy.registry import RUNTIMES

    spec = RUNTIMES.get(runtime) if runtime else None
    own = (entry.get("runtime_metrics") or {}).get(runtime) if runtime else None
    precision = (spec.precision if spec is not None else None) or entry["precision"]
    if isinstance(own, dict):
        return own.get("precision", precision), own
    if precision != entry["precision"]:
        return precision, {}
    return precision, entry.get("metrics") or {}


def within_budget(entry: dict, reference: Optional[float], budget_pts: float, runtime: Optional[str] = None) -> bool:
    precision, metrics = runtime_scores(entry, runtime)
    top1 = metrics.get("top1")
    if top1 is None or reference is None:
        return precision in ("fp32", "fp16")
    return 100 * (reference - top1) <= budget_pts + 1e-9


def device_identity(threads: Optional[int], hint: Optional[str], providers: Sequence[str]) -> dict:
    from deploy.registry import RUNTIMES

    from deploy.runtimes.onnxruntime import ort_spinning

    return {"cpu": cpu_model(), "machine": platform.machine(), "cores": os.cpu_count(),
            "runtimes": {name: spec.version() for name, spec in RUNTIMES.items() if spec.available()},
            "threads": threads, "hint": hint or "auto", "providers": list(providers), "ort_spin": ort_spinning()}


def cache_key(identity: dict, cands: Sequence[Candidate], budget_pts: float) -> str:
    payload = {"identity": identity, "budget_pts": budget_pts,
               "candidates": sorted([c.runtime, c.entry["file"], c.entry["sha256"]] for c in cands)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def cache_paths(bundle_path: str) -> list[str]:
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    tag = hashlib.sha256(os.path.abspath(bundle_path).encode("utf-8")).hexdigest()[:16]
    return [os.path.join(bundle_path, CACHE_NAME), os.path.join(home, "edgecls", f"runtime-choice-{tag}.json")]


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    ok = isinstance(data, dict) and data.get("schema_version") == CACHE_SCHEMA and isinstance(data.get("choices"), dict)
    return data if ok else {}  # a damaged or foreign cache is only a cache: measure again


def read_cached(bundle_path: str, key: str) -> Optional[tuple[dict, str]]:
    for path in cache_paths(bundle_path):
        record = _read(path).get("choices", {}).get(key)
        if isinstance(record, dict) and isinstance(record.get("chosen"), dict):
            return record, path
    return None


def write_cached(bundle_path: str, key: str, record: dict) -> Optional[str]:
    """Write atomically into the bundle folder, else (read-only) the user cache; None where neither is writable
    (a cache that cannot be written is not an error)."""
    for path in cache_paths(bundle_path):
        data = _read(path) or {"schema_version": CACHE_SCHEMA, "choices": {}}
        choices = data["choices"]
        choices.pop(key, None)
        choices[key] = record
        while len(choices) > CACHE_ENTRIES:
            choices.pop(next(iter(choices)))
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write_json(path, data)
        except OSError:
            continue
        return path
    return None


def time_candidates(bundle: Bundle, cands: Sequence[Candidate], providers: Sequence[str], threads: Optional[int],
                    hint: Optional[str], iterations: int = 20, rounds: int = 2) -> dict[str, float]:
    """Batch-1 p50 ms per candidate key, timed in interleaved rounds so load that comes and goes on the device
    lands on all of them alike; a candidate that cannot run here is left out with a warning."""
    from deploy.benchmark import measure
    from deploy.registry import open_runner

    runners, samples = {}, {}
    try:
        for cand in cands:
            try:
                runners[cand.key] = open_runner(bundle, cand.entry, providers, threads, cand.runtime, hint,
                                                say=False)
            except (BundleError, RuntimeError) as exc:
                warnings.warn(f"--runtime auto leaves out {cand.entry['file']} in {cand.runtime}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", RuntimeWarning)
                continue
            measure(runners[cand.key], 1, iterations=1, warmup=3)
            samples[cand.key] = []
        for _ in range(rounds):
            for key, runner in runners.items():
                samples[key] += measure(runner, 1, iterations=max(iterations // rounds, 1), warmup=1,
                                        keep_times=True)["times_ms"]
    finally:
        for runner in runners.values():
            runner.close()
    return {key: float(np.percentile(times, 50)) for key, times in samples.items() if times}


def choose(bundle: Bundle, runtime: Optional[str] = None, format: Optional[str] = None,
           precision: Optional[str] = None, providers: Sequence[str] = ("cpu",), threads: Optional[int] = None,
           hint: Optional[str] = None, budget_pts: float = BUDGET_PTS,
           timings: Optional[dict[str, float]] = None) -> Choice:
    """The runtime × artifact to run. `timings` (candidate key -> batch-1 p50 ms, e.g. from `bench`) replaces
    the short timing run and the cache read, and refreshes the cache."""
    cands = candidates(bundle, runtime, format, precision)
    reference = reference_top1(bundle)
    # An INT8 file that missed its accuracy gate at fit end is never picked on its own (--format/--runtime may name it)
    gated = [c for c in cands if c.entry.get("gate") != "not met"]
    eligible = [c for c in gated if within_budget(c.entry, reference, budget_pts, c.runtime)]
    # Flags that narrow the choice are the user's word: with none of theirs in budget, the fastest of theirs.
    eligible = eligible or gated or cands
    if len(eligible) == 1:
        verify_artifact(bundle.path, eligible[0].entry)
        return Choice(eligible[0].entry, eligible[0].runtime, "only")
    identity = device_identity(threads, hint, providers)
    key = cache_key(identity, eligible, budget_pts)
    if timings is None:
        cached = read_cached(bundle.path, key)
        if cached is not None:
            record, path = cached
            chosen = f"{record['chosen'].get('runtime')}:{record['chosen'].get('file')}"
            hit = next((c for c in eligible if c.key == chosen), None)
            if hit is not None:
                verify_artifact(bundle.path, hit.entry)
                return Choice(hit.entry, hit.runtime, "cache", dict(record.get("timings") or {}), path)
        for cand in eligible:
            verify_artifact(bundle.path, cand.entry)  # a damaged file is the bundle's fault, not a slow candidate
        timings = time_candidates(bundle, eligible, providers, threads, hint)
    timed = [c for c in eligible if c.key in timings]
    if not timed:
        raise BundleError(f"{bundle.path}: none of the artifacts {', '.join(c.key for c in eligible)} can run here "
                          "(see the warnings above); pass --runtime and --format explicitly")
    best = min(timed, key=lambda c: timings[c.key])
    record = {"chosen": {"runtime": best.runtime, "file": best.entry["file"], "sha256": best.entry["sha256"]},
              "timings": {c.key: timings[c.key] for c in timed}, "identity": identity, "budget_pts": budget_pts,
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    path = write_cached(bundle.path, key, record)
    return Choice(best.entry, best.runtime, "measured", record["timings"], path)


def resolve(bundle: Bundle, runtime: str, format: Optional[str], precision: Optional[str], providers: Sequence[str],
            threads: Optional[int], hint: Optional[str], budget_pts: float = BUDGET_PTS) -> Choice:
    """What `infer` runs: `auto` chooses (measured, cached); a named runtime with --format picks that format's
    file meant for it (the CPU-form INT8 for a CPU runtime); a named runtime alone chooses among its files."""
    if runtime == "auto":
        return choose(bundle, None, format, precision, providers, threads, hint, budget_pts)
    if format is not None:
        entry = bundle.artifact(format, precision, prefer=PREFERRED_TAGS.get(runtime, ()))
        verify_artifact(bundle.path, entry)
        return Choice(entry, runtime, "only")
    return choose(bundle, runtime, None, precision, providers, threads, hint, budget_pts)
