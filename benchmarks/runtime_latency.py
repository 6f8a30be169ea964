"""MobileNetV2 at 224 on the CPU: torch eager, ONNX Runtime FP32 / INT8 in TensorRT's form / INT8 in the CPU
form, OpenVINO FP32 / INT8 (the CPU-form file), batch 1 and 32, one table.

    python benchmarks/runtime_latency.py [--iterations 50] [--threads 2] [--leak-iterations 1000]

Random weights are enough for latency (it does not depend on the values), and calibration runs on synthetic
batches. Every runtime is timed by the same deploy.benchmark.measure the CLI's `bench` uses, interleaved in
rounds. Below the table: the targets (best CPU path >= 10x torch eager and >= 2.5x ONNX Runtime FP32 at batch
1; CPU INT8 >= 1.5x FP32 in the same runtime; INT8 files <= 27 % of FP32), the overhead `measure` adds over a
bare loop, and resident memory growth over --leak-iterations calls. OpenVINO rows need the openvino extra.
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
from callbacks.cpu_quantization import cpu_family, cpu_int8_form  # noqa: E402
from callbacks.quantization import prepare_for_quantization, quantize_int8, quantize_static_int8  # noqa: E402
from deploy.benchmark import measure  # noqa: E402
from deploy.runners import RUNTIMES, OnnxRuntimeRunner, Runner, runner_for_file  # noqa: E402


def export(model: torch.nn.Module, path: str) -> str:
    """The bundles' own exporter: torch.export-based, opset 18, one file, dynamic batch."""
    return str(export_onnx(model, path, (224, 224)))


def quantize(fp32_path: str, out_path: str, cpu_out_path: str, batches: int = 4) -> tuple[str, str]:
    """The bundles' own two INT8 files (TensorRT's symmetric Q/DQ, and CpuInt8Quantization's form for this CPU
    family), calibrated here on the same synthetic batches."""
    calibration = np.random.default_rng(0).standard_normal((8 * batches, 3, 224, 224)).astype(np.float32)
    prepared = prepare_for_quantization(fp32_path, out_path + ".pre.onnx")
    quantize_int8(prepared, out_path, calibration)
    quantize_static_int8(prepared, cpu_out_path, calibration, cpu_int8_form(cpu_family()))
    os.unlink(prepared)
    return out_path, cpu_out_path


def interleaved(runners: dict, batch: int, iterations: int, rounds: int) -> list[dict]:
    """Alternate the runtimes in rounds and pool each one's samples: on a shared CPU, load that comes and
    goes then lands on all of them alike instead of on whichever ran at the wrong moment."""
    samples = {name: [] for name in runners}
    for name, runner in runners.items():
        measure(runner, batch, iterations=1, warmup=10 if batch == 1 else 2)
    for _ in range(rounds):
        for name, runner in runners.items():
            result = measure(runner, batch, iterations=max(iterations // rounds, 1), warmup=1, keep_times=True)
            samples[name] += result["times_ms"]
    rows = []
    for name, times in samples.items():
        times = np.asarray(times)
        rows.append({"runtime": name, "batch": batch, "p50_ms": float(np.percentile(times, 50)),
                     "p90_ms": float(np.percentile(times, 90)), "p99_ms": float(np.percentile(times, 99)),
                     "throughput": batch * len(times) / (times.sum() / 1000.0), "samples": len(times)})
    return rows


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
    parser.add_argument("--iterations", type=int, default=50, help="timed calls at batch 1 (batch 32 uses a fifth)")
    parser.add_argument("--threads", type=int, default=0, help="threads for torch and ONNX Runtime alike (0: defaults)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the iterations are split into")
    parser.add_argument("--leak-iterations", type=int, default=1000)
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=1000).eval()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export(model, os.path.join(tmp, "mobilenet_v2.onnx"))
        int8, int8_cpu = quantize(fp32, os.path.join(tmp, "mobilenet_v2.int8.onnx"),
                                  os.path.join(tmp, "mobilenet_v2.int8-cpu.onnx"))
        threads = args.threads or None
        files = {"torch eager": None, "ort fp32": fp32, "ort int8 trt-form": int8, "ort int8 cpu-form": int8_cpu,
                 "openvino fp32": fp32, "openvino int8 cpu-form": int8_cpu}
        runners = {"torch eager": TorchRunner(model, (3, 224, 224)),
                   "ort fp32": OnnxRuntimeRunner(fp32, threads=threads),
                   "ort int8 trt-form": OnnxRuntimeRunner(int8, threads=threads),
                   "ort int8 cpu-form": OnnxRuntimeRunner(int8_cpu, threads=threads)}
        if RUNTIMES["openvino"].available():
            runners["openvino fp32"] = runner_for_file(fp32, "onnx", threads=threads, runtime="openvino")
            runners["openvino int8 cpu-form"] = runner_for_file(int8_cpu, "onnx-int8", threads=threads,
                                                                runtime="openvino")
        else:
            print("openvino is not installed (pip install -e '.[openvino]'): no OpenVINO rows", file=sys.stderr)
        sizes = {name: (os.path.getsize(path) if path else None) for name, path in files.items()}
        probe = np.random.default_rng(2).standard_normal((2, 3, 224, 224)).astype(np.float32)
        with torch.inference_mode():
            parity = float(np.abs(runners["ort fp32"].infer(probe) - model(torch.from_numpy(probe)).numpy()).max())

        rows = []
        for batch in (1, 32):
            iterations = args.iterations if batch == 1 else max(args.iterations // 5, args.rounds)
            rows += interleaved(runners, batch, iterations, args.rounds)

        p50 = {(r["runtime"], r["batch"]): r["p50_ms"] for r in rows}
        print(f"MobileNetV2 224x224, random weights, {torch.get_num_threads()} torch threads, "
              f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), {args.rounds} interleaved rounds; "
              f"ONNX vs torch max |diff| {parity:.2e}; CPU-form INT8: {cpu_int8_form(cpu_family()).name}")
        header = f"{'runtime':<24}{'batch':>6}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'img/s':>9}" \
                 f"{'vs torch':>10}{'vs ORT fp32':>12}{'size MB':>9}"
        print(header)
        print("-" * len(header))
        for r in rows:
            size = sizes[r["runtime"]]
            b = r["batch"]
            print(f"{r['runtime']:<24}{b:>6}{r['p50_ms']:>9.2f}{r['p90_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                  f"{r['throughput']:>9.1f}{p50['torch eager', b] / r['p50_ms']:>9.2f}x"
                  f"{p50['ort fp32', b] / r['p50_ms']:>11.2f}x{(size / 1e6 if size else float('nan')):>9.2f}")

        def target(text: str, value: float, goal: float, unit: str = "x", lower_is_better: bool = False) -> None:
            met = value <= goal if lower_is_better else value >= goal
            print(f"target {text}: {value:.2f}{unit} -> {'met' if met else 'NOT met'}")

        print()
        cpu_paths = [name for name in runners if name != "torch eager"]
        best = min(cpu_paths, key=lambda name: p50[name, 1])
        target("ONNX Runtime FP32 >= 2x torch eager at batch 1", p50["torch eager", 1] / p50["ort fp32", 1], 2)
        target(f"best CPU path ({best}) >= 10x torch eager at batch 1", p50["torch eager", 1] / p50[best, 1], 10)
        target(f"best CPU path ({best}) >= 2.5x ONNX Runtime FP32 at batch 1", p50["ort fp32", 1] / p50[best, 1], 2.5)
        for fp32_name, int8_name in (("ort fp32", "ort int8 cpu-form"), ("openvino fp32", "openvino int8 cpu-form")):
            if int8_name in runners:
                target(f"{int8_name} >= 1.5x {fp32_name} at batch 1", p50[fp32_name, 1] / p50[int8_name, 1], 1.5)
        for name, path in (("INT8 TensorRT-form", int8), ("INT8 CPU-form", int8_cpu)):
            ratio = 100 * os.path.getsize(path) / sizes["ort fp32"]
            target(f"{name} file <= 27% of FP32 ({size_breakdown(path, sizes['ort fp32'])})", ratio, 27, "%",
                   lower_is_better=True)

        ort = runners["ort fp32"]
        timed, bare = bench_overhead(ort, 2 * args.iterations, args.rounds)
        overhead = timed / bare - 1
        print(f"bench overhead (measure p50 {timed:.2f} ms vs bare loop p50 {bare:.2f} ms): {100 * overhead:+.1f}% "
              f"-> {'met' if overhead < 0.05 else 'NOT met'} (< 5%)")
        leak = measure(ort, 1, iterations=args.leak_iterations, warmup=20)
        print(f"resident memory growth over {args.leak_iterations} iterations (onnxruntime fp32, batch 1): "
              f"{leak['rss_growth_mb']:+.2f} MB -> {'no leak' if leak['memory_ok'] else 'LEAK?'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
