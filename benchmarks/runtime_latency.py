"""MobileNetV2 at 224: torch eager vs ONNX Runtime FP32 vs ONNX Runtime INT8 (Q/DQ), batch 1 and 32, one table.

    python benchmarks/runtime_latency.py [--iterations 50] [--leak-iterations 1000]

Random weights are enough: latency does not depend on the values. Every runtime is timed by the same
deploy.benchmark.measure the CLI's `bench` uses. Below the table: the targets (ONNX Runtime FP32 >= 2x
torch eager at batch 1, INT8 file <= 27 % of FP32), the overhead `measure` adds over a bare loop, and
resident memory growth over --leak-iterations calls.
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
from callbacks.quantization import prepare_for_quantization, quantize_int8  # noqa: E402
from deploy.benchmark import measure  # noqa: E402
from deploy.runners import OnnxRuntimeRunner, Runner  # noqa: E402


def export(model: torch.nn.Module, path: str) -> str:
    """The bundles' own exporter: torch.export-based, opset 18, one file, dynamic batch."""
    return str(export_onnx(model, path, (224, 224)))


def quantize(fp32_path: str, out_path: str, batches: int = 4) -> str:
    """The bundles' own INT8: symmetric Q/DQ, per-channel weights, calibrated here on synthetic batches."""
    calibration = np.random.default_rng(0).standard_normal((8 * batches, 3, 224, 224)).astype(np.float32)
    prepared = prepare_for_quantization(fp32_path, out_path + ".pre.onnx")
    quantize_int8(prepared, out_path, calibration)
    os.unlink(prepared)
    return out_path


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
        key = {"int8": "int8 tensors", "float32": "fp32 scales", "int32": "int32 biases"}.get(str(array.dtype))
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
        int8 = quantize(fp32, os.path.join(tmp, "mobilenet_v2.int8.onnx"))
        sizes = {"torch eager": None, "onnxruntime fp32": os.path.getsize(fp32), "onnxruntime int8": os.path.getsize(int8)}
        threads = args.threads or None
        runners = {"torch eager": TorchRunner(model, (3, 224, 224)),
                   "onnxruntime fp32": OnnxRuntimeRunner(fp32, threads=threads),
                   "onnxruntime int8": OnnxRuntimeRunner(int8, threads=threads)}
        probe = np.random.default_rng(2).standard_normal((2, 3, 224, 224)).astype(np.float32)
        with torch.inference_mode():
            parity = float(np.abs(runners["onnxruntime fp32"].infer(probe) - model(torch.from_numpy(probe)).numpy()).max())

        rows = []
        for batch in (1, 32):
            iterations = args.iterations if batch == 1 else max(args.iterations // 5, args.rounds)
            rows += interleaved(runners, batch, iterations, args.rounds)

        torch_p50 = {r["batch"]: r["p50_ms"] for r in rows if r["runtime"] == "torch eager"}
        print(f"MobileNetV2 224x224, random weights, {torch.get_num_threads()} torch threads, "
              f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), {args.rounds} interleaved rounds; ONNX vs torch max |diff| {parity:.2e}")
        header = f"{'runtime':<18}{'batch':>6}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'img/s':>10}" \
                 f"{'vs torch':>10}{'size MB':>10}"
        print(header)
        print("-" * len(header))
        for r in rows:
            size = sizes[r["runtime"]]
            print(f"{r['runtime']:<18}{r['batch']:>6}{r['p50_ms']:>10.2f}{r['p90_ms']:>10.2f}{r['p99_ms']:>10.2f}"
                  f"{r['throughput']:>10.1f}{torch_p50[r['batch']] / r['p50_ms']:>9.2f}x"
                  f"{(size / 2**20 if size else float('nan')):>10.2f}")

        speedup = torch_p50[1] / next(r["p50_ms"] for r in rows if r["runtime"] == "onnxruntime fp32" and r["batch"] == 1)
        ratio = sizes["onnxruntime int8"] / sizes["onnxruntime fp32"]
        print()
        print(f"target ONNX Runtime FP32 >= 2x torch eager at batch 1: {speedup:.2f}x -> {'met' if speedup >= 2 else 'NOT met'}")
        print(f"target INT8 file <= 27% of FP32: {100 * ratio:.1f}% -> {'met' if ratio <= 0.27 else 'NOT met'} "
              f"({size_breakdown(int8, sizes['onnxruntime fp32'])})")

        ort = runners["onnxruntime fp32"]
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
