"""MobileNetV2 at 224 on the CPU: torch eager, ONNX Runtime FP32 / INT8 in TensorRT's form / INT8 in the CPU
form, OpenVINO FP32 (f32, exact) / bf16 (where the CPU has it) / INT8 (the CPU-form file), batch 1 and 32.

    python benchmarks/runtime_latency.py [--quick] [--iterations 200] [--rounds 5] [--threads N]
                                         [--bundle runs/quickstart/version_0/bundle ...]

Random weights are enough for latency (it does not depend on the values), and calibration runs on synthetic
batches. Every runner, torch included, uses the same thread count (default: the physical cores this process may
use) and is timed by the same deploy.benchmark.measure the CLI's `bench` uses, interleaved in rounds (A B C ...,
A B C ...): the table prints each row's pooled p50 and the spread of its per-round p50s, and a verdict line says
when the machine was too noisy to judge (load before the run, or a batch-1 round spread over --max-spread).
OpenVINO's two performance hints are measured both ways (latency vs throughput at batch 1 and at 32). Below the
table: the targets (best CPU path >= 10x torch eager and >= 2.5x ONNX Runtime FP32 at batch 1; OpenVINO FP32 <=
ONNX Runtime FP32; CPU INT8 >= 1.5x FP32 in the same runtime; INT8 files <= 27 % of FP32; with --bundle, the
bundle's bf16 row within 0.3 pt of its FP32 top-1), the overhead `measure` adds over a bare loop, and resident
memory growth over --leak-iterations calls. OpenVINO rows need the openvino extra. --quick: a smoke run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from callbacks.bundle import TorchRunner  # noqa: E402
from callbacks.onnx_export import export_onnx  # noqa: E402
from callbacks.int8_forms import cpu_family, cpu_int8_form  # noqa: E402
from callbacks.quantization import prepare_for_quantization, quantize_int8, quantize_static_int8  # noqa: E402
from deploy.benchmark import measure  # noqa: E402
from deploy.cpu_features import physical_cores  # noqa: E402
from deploy.runners import RUNTIMES, OnnxRuntimeRunner, Runner, runner_for_file  # noqa: E402


def export(model: torch.nn.Module, path: str) -> str:
    """The bundles' own exporter: torch.export-based, opset 18, one file, dynamic batch."""
    return str(export_onnx(model, path, (224, 224)))


def quantize(fp32_path: str, out_path: str, cpu_out_path: str, batches: int = 4) -> tuple[str, str]:
    """The bundles' own two INT8 files (TensorRT's symmetric Q/DQ, and Int8Quantization's CPU form for this CPU
    family), calibrated here on the same synthetic batches."""
    calibration = np.random.default_rng(0).standard_normal((8 * batches, 3, 224, 224)).astype(np.float32)
    prepared = prepare_for_quantization(fp32_path, out_path + ".pre.onnx")
    quantize_int8(prepared, out_path, calibration)
    quantize_static_int8(prepared, cpu_out_path, calibration, cpu_int8_form(cpu_family()))
    os.unlink(prepared)
    return out_path, cpu_out_path


def interleaved(runners: dict, batch: int, iterations: int, rounds: int) -> list[dict]:
    """Alternate the runners in rounds (A B C ..., A B C ...) and pool each one's samples: on a shared CPU, load
    that comes and goes then lands on all of them alike instead of on whichever ran at the wrong moment. Each
    row keeps its per-round p50s, whose spread says how steady the machine was while it ran."""
    samples = {name: [] for name in runners}
    round_p50 = {name: [] for name in runners}
    for name, runner in runners.items():
        measure(runner, batch, iterations=1, warmup=10 if batch == 1 else 2)
    for _ in range(rounds):
        for name, runner in runners.items():
            times = measure(runner, batch, iterations=max(iterations // rounds, 1), warmup=1,
                            keep_times=True)["times_ms"]
            samples[name] += times
            round_p50[name].append(float(np.median(times)))
    rows = []
    for name, times in samples.items():
        times, per_round = np.asarray(times), np.asarray(round_p50[name])
        rows.append({"runtime": name, "batch": batch, "p50_ms": float(np.percentile(times, 50)),
                     "p90_ms": float(np.percentile(times, 90)), "round_min_ms": float(per_round.min()),
                     "round_max_ms": float(per_round.max()),
                     "spread_pct": float(100 * (per_round.max() - per_round.min()) / np.median(per_round)),
                     "throughput": batch * len(times) / (times.sum() / 1000.0), "samples": len(times)})
    return rows


def bundle_bf16_deltas(bundle_dir: str) -> list[tuple[str, float]]:
    """(label, bf16 top-1 minus FP32 top-1 in points) for each bf16 run a bundle's manifest records, from its
    fit-end measurement on the test split."""
    from deploy.bundle import read_manifest

    found = []
    for entry in read_manifest(bundle_dir)["artifacts"]:
        fp32 = (entry.get("metrics") or {}).get("top1")
        for runtime, metrics in (entry.get("runtime_metrics") or {}).items():
            if metrics.get("precision") == "bf16" and fp32 is not None and metrics.get("top1") is not None:
                found.append((f"{entry['file']} in {runtime}", 100 * (metrics["top1"] - fp32)))
    return found


def size_breakdown(int8_path: str, fp32_bytes: int) -> str:
    """Where the INT8 file's bytes go, as % of the FP32 file: int8 weights vs per-channel scales and zero
    points vs int32 biases vs the graph itself."""
    import onnx
    from onnx import numpy_helper

    parts = {"int8 tensors": 0, "fp32 scales": 0, "int32 biases": 0}
    for init in onnx.load(int8_path).graph.initializer:
        array = numpy_helper.to_array(init)
        key = {"int8": "int8 tensors", "uint8": "int8 tensors", "float32": "fp32 scales",
               "int32": "int32 biases"}.get(str(array.dtype))
        if key:
            parts[key] += array.nbytes
    parts["graph"] = os.path.getsize(int8_path) - sum(parts.values())
    return ", ".join(f"{k} {100 * v / fp32_bytes:.1f}%" for k, v in parts.items())


def bench_overhead(runner: Runner, iterations: int, rounds: int) -> tuple[float, float]:
    """p50 through measure() (with the CLI's rich progress bar advancing every call) vs a bare timing loop,
    alternated in rounds so machine load lands on both alike."""
    from rich.console import Console
    from rich.progress import Progress

    batch = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    bare, timed = [], []
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("overhead", total=iterations * rounds)
        for _ in range(rounds):
            for _ in range(max(iterations // rounds, 1)):
                start = time.perf_counter()
                runner.infer(batch)
                bare.append(time.perf_counter() - start)
            result = measure(runner, 1, iterations=max(iterations // rounds, 1), warmup=1, keep_times=True,
                             progress=lambda n: bar.advance(task, n))
            timed += result["times_ms"]
    return float(np.median(timed)), float(np.median(bare) * 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200, help="timed calls at batch 1 (batch 32: a tenth)")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for torch, ONNX Runtime and OpenVINO alike (0: the usable physical cores)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the iterations are split into")
    parser.add_argument("--leak-iterations", type=int, default=1000)
    parser.add_argument("--max-spread", type=float, default=15.0,
                        help="batch-1 per-round p50 spread (%% of the median) above which the run is too noisy")
    parser.add_argument("--max-load", type=float, default=0.5,
                        help="1-minute load average before the run above which the machine is not quiet")
    parser.add_argument("--bundle", action="append", default=[],
                        help="a bundle folder whose fit-end bf16 row is checked against its FP32 top-1 (repeatable)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few iterations, 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.iterations, args.rounds, args.leak_iterations = 30, 3, 100

    load_before = os.getloadavg()[0]
    threads = args.threads or physical_cores()
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=1000).eval()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export(model, os.path.join(tmp, "mobilenet_v2.onnx"))
        int8, int8_cpu = quantize(fp32, os.path.join(tmp, "mobilenet_v2.int8.onnx"),
                                  os.path.join(tmp, "mobilenet_v2.int8-cpu.onnx"))
        files = {"torch eager": None, "ort fp32": fp32, "ort int8 trt-form": int8, "ort int8 cpu-form": int8_cpu,
                 "openvino fp32": fp32, "openvino bf16": fp32, "openvino int8 cpu-form": int8_cpu}
        runners = {"torch eager": TorchRunner(model, (3, 224, 224)),
                   "ort fp32": OnnxRuntimeRunner(fp32, threads=threads),
                   "ort int8 trt-form": OnnxRuntimeRunner(int8, threads=threads),
                   "ort int8 cpu-form": OnnxRuntimeRunner(int8_cpu, threads=threads)}
        other_hint = {}  # batch -> (row name, runner): OpenVINO FP32 under the hint auto does not use at that batch
        if RUNTIMES["openvino"].available():
            runners["openvino fp32"] = runner_for_file(fp32, "onnx", threads=threads, runtime="openvino")
            if RUNTIMES["openvino-bf16"].available():
                runners["openvino bf16"] = runner_for_file(fp32, "onnx", threads=threads, runtime="openvino-bf16")
            else:
                print(f"no bf16 row: {RUNTIMES['openvino-bf16'].status()[1]}", file=sys.stderr)
            runners["openvino int8 cpu-form"] = runner_for_file(int8_cpu, "onnx-int8", threads=threads,
                                                                runtime="openvino")
            for batch, hint in ((1, "throughput"), (32, "latency")):
                name = f"openvino fp32 {hint}-hint"
                other_hint[batch] = (name, runner_for_file(fp32, "onnx", threads=threads, runtime="openvino",
                                                           hint=hint))
                files[name] = fp32
        else:
            print("openvino is not installed (pip install -e '.[openvino]'): no OpenVINO rows", file=sys.stderr)
        sizes = {name: (os.path.getsize(path) if path else None) for name, path in files.items()}
        probe = np.random.default_rng(2).standard_normal((2, 3, 224, 224)).astype(np.float32)
        with torch.inference_mode():
            parity = float(np.abs(runners["ort fp32"].infer(probe) - model(torch.from_numpy(probe)).numpy()).max())

        rows = []
        for batch in (1, 32):
            per_round = 1 if args.quick else 2
            iterations = args.iterations if batch == 1 else max(args.iterations // 10, args.rounds * per_round)
            these = dict(runners)
            if batch in other_hint:
                these[other_hint[batch][0]] = other_hint[batch][1]
            rows += interleaved(these, batch, iterations, args.rounds)

        p50 = {(r["runtime"], r["batch"]): r["p50_ms"] for r in rows}
        print(f"MobileNetV2 224x224, random weights, {threads} threads for every runner (torch: "
              f"{torch.get_num_threads()}; {physical_cores()} usable physical cores, {os.cpu_count()} CPUs), "
              f"{args.rounds} interleaved rounds; load average {load_before:.2f} before the run; ONNX vs torch max "
              f"|diff| {parity:.2e}; CPU-form INT8: {cpu_int8_form(cpu_family()).name}; OpenVINO hint: latency at "
              "batch 1, throughput at 32")
        header = f"{'runtime':<30}{'batch':>6}{'p50 ms':>9}{'rounds p50 min..max':>21}{'spread':>8}{'img/s':>9}" \
                 f"{'vs torch':>10}{'vs ORT fp32':>12}{'size MB':>9}"
        print(header)
        print("-" * len(header))
        for r in rows:
            size = sizes[r["runtime"]]
            b = r["batch"]
            spread = f"{r['round_min_ms']:.2f}..{r['round_max_ms']:.2f}"
            print(f"{r['runtime']:<30}{b:>6}{r['p50_ms']:>9.2f}{spread:>21}{r['spread_pct']:>7.0f}%"
                  f"{r['throughput']:>9.1f}{p50['torch eager', b] / r['p50_ms']:>9.2f}x"
                  f"{p50['ort fp32', b] / r['p50_ms']:>11.2f}x{(size / 1e6 if size else float('nan')):>9.2f}")

        worst = max((r for r in rows if r["batch"] == 1), key=lambda r: r["spread_pct"])
        reasons = ([f"load average {load_before:.2f} before the run > {args.max_load}"]
                   if load_before > args.max_load else [])
        if worst["spread_pct"] > args.max_spread:
            reasons.append(f"{worst['runtime']}'s batch-1 round p50s spread {worst['spread_pct']:.0f}% > "
                           f"{args.max_spread:g}%")
        print()
        print("verdict: TOO NOISY TO JUDGE (" + "; ".join(reasons) + "): rerun on a quiet machine" if reasons else
              f"verdict: quiet enough to judge (load {load_before:.2f} before the run, worst batch-1 round spread "
              f"{worst['spread_pct']:.0f}%)")
        if other_hint:
            (name1, _), (name32, _) = other_hint[1], other_hint[32]
            print(f"OpenVINO FP32 hints: batch 1 latency {p50['openvino fp32', 1]:.2f} ms vs throughput "
                  f"{p50[name1, 1]:.2f} ms; batch 32 throughput {p50['openvino fp32', 32]:.2f} ms vs latency "
                  f"{p50[name32, 32]:.2f} ms")

        def target(text: str, value: float, goal: float, unit: str = "x", lower_is_better: bool = False) -> None:
            met = value <= goal if lower_is_better else value >= goal
            print(f"target {text}: {value:.2f}{unit} -> {'met' if met else 'NOT met'}")

        cpu_paths = [name for name in runners if name != "torch eager"]
        best = min(cpu_paths, key=lambda name: p50[name, 1])
        target("ONNX Runtime FP32 >= 2x torch eager at batch 1", p50["torch eager", 1] / p50["ort fp32", 1], 2)
        target(f"best CPU path ({best}) >= 10x torch eager at batch 1", p50["torch eager", 1] / p50[best, 1], 10)
        target(f"best CPU path ({best}) >= 2.5x ONNX Runtime FP32 at batch 1", p50["ort fp32", 1] / p50[best, 1], 2.5)
        if "openvino fp32" in runners:
            target("OpenVINO FP32 <= ONNX Runtime FP32 at batch 1 (p50 ratio)",
                   p50["openvino fp32", 1] / p50["ort fp32", 1], 1.0, lower_is_better=True)
        for fp32_name, int8_name in (("ort fp32", "ort int8 cpu-form"), ("openvino fp32", "openvino int8 cpu-form")):
            if int8_name in runners:
                target(f"{int8_name} >= 1.5x {fp32_name} at batch 1", p50[fp32_name, 1] / p50[int8_name, 1], 1.5)
        for name, path in (("INT8 TensorRT-form", int8), ("INT8 CPU-form", int8_cpu)):
            ratio = 100 * os.path.getsize(path) / sizes["ort fp32"]
            target(f"{name} file <= 27% of FP32 ({size_breakdown(path, sizes['ort fp32'])})", ratio, 27, "%",
                   lower_is_better=True)
        for bundle_dir in args.bundle:
            deltas = bundle_bf16_deltas(bundle_dir)
            if not deltas:
                print(f"target bf16 within 0.3 pt of FP32 top-1 ({bundle_dir}): no bf16 row in its manifest "
                      "-> NOT met")
            for label, delta in deltas:
                target(f"bf16 within 0.3 pt of FP32 test top-1 ({bundle_dir}: {label}, drop)", max(0.0, -delta), 0.3,
                       " pt", lower_is_better=True)

        ort = runners["ort fp32"]
        timed, bare = bench_overhead(ort, 2 * args.iterations // 5, args.rounds)
        overhead = timed / bare - 1
        print(f"bench overhead (measure p50 {timed:.2f} ms vs bare loop p50 {bare:.2f} ms): {100 * overhead:+.1f}% "
              f"-> {'met' if overhead < 0.05 else 'NOT met'} (< 5%)")
        leak = measure(ort, 1, iterations=args.leak_iterations, warmup=20)
        print(f"resident memory growth over {args.leak_iterations} iterations (onnxruntime fp32, batch 1): "
              f"{leak['rss_growth_mb']:+.2f} MB -> {'no leak' if leak['memory_ok'] else 'LEAK?'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
