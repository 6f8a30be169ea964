"""The backbone zoo at 224 on this CPU: the table a user reads to pick a backbone for a device.

    python benchmarks/zoo.py [--quick] [--threads 2] [--models mobilenet_v3_small,timm:lcnet_050,...]

For each model (ImageNet's 1000-class head, random weights: latency does not depend on the values): params,
MACs (torch-pruning's counter), the bundle's files (ONNX FP32, INT8 in TensorRT's form, INT8 in the CPU form,
calibrated on synthetic batches, each TensorRT file through the offline checker), then batch-1 p50 latency and
batch-32 throughput of every CPU runtime/precision a bundle offers (ONNX Runtime and, where installed, OpenVINO;
FP32 and CPU INT8), all runners interleaved in rounds so load that comes and goes lands on all alike. One table,
sorted by batch-1 latency; below it a `target ... -> met | NOT met` line per target. --quick: two models at 112.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from callbacks.int8_forms import cpu_family, cpu_int8_form  # noqa: E402
from callbacks.onnx_export import export_onnx  # noqa: E402
from callbacks.pruning import count_macs_params  # noqa: E402
from callbacks.quantization import prepare_for_quantization, quantize_int8, quantize_static_int8  # noqa: E402
from deploy.benchmark import measure, percentile  # noqa: E402
from deploy.runners import RUNTIMES, runner_for_file  # noqa: E402
from deploy.tensorrt_check import check_tensorrt  # noqa: E402
from lightning_modules import build_backbone  # noqa: E402

MODELS = ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "resnet18",
          "shufflenet_v2_x1_0", "regnet_x_400mf", "timm:mobilenetv3_small_050", "timm:lcnet_050"]
QUICK = ["mobilenet_v3_small", "timm:mobilenetv3_small_050"]
TARGET_MINUTES = 20.0


def make_files(name: str, size: int, folder: str, calibration: np.ndarray) -> dict:
    torch.manual_seed(0)
    net = build_backbone(name, 1000).eval()
    macs, params = count_macs_params(net, torch.zeros(1, 3, size, size))
    stem = os.path.join(folder, name.replace(":", "_"))
    fp32 = str(export_onnx(net, stem + ".onnx", (size, size)))
    prepared = prepare_for_quantization(fp32, stem + ".prepared.onnx")
    trt = str(quantize_int8(prepared, stem + ".int8.onnx", calibration))
    cpu = str(quantize_static_int8(prepared, stem + ".int8-cpu.onnx", calibration, cpu_int8_form(cpu_family())))
    os.unlink(prepared)
    checks = [check_tensorrt(p)["passed"] for p in (fp32, trt)]
    return {"params": params, "macs": macs, "fp32": fp32, "int8": cpu, "int8_trt": trt, "trt_check": all(checks),
            "mb": {"fp32": os.path.getsize(fp32) / 1e6, "int8": os.path.getsize(cpu) / 1e6}}


def interleaved(runners: dict, batch: int, iterations: int, rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for runner in runners.values():
        measure(runner, batch, iterations=1, warmup=3 if batch == 1 else 1)
    for _ in range(rounds):
        for key, runner in runners.items():
            samples[key] += measure(runner, batch, iterations=iterations, warmup=0, keep_times=True)["times_ms"]
    return samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two models at 112 px, fewer iterations (to debug)")
    ap.add_argument("--models", help="comma-separated backbone names (default: the zoo list)")
    ap.add_argument("--size", type=int, help="input size (default 224; 112 with --quick)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    start = time.perf_counter()
    models = args.models.split(",") if args.models else (QUICK if args.quick else MODELS)
    size = args.size or (112 if args.quick else 224)
    b1_iters, b32_iters = (3, 1) if args.quick else (20, 2)
    calibration = np.random.default_rng(0).standard_normal((16, 3, size, size)).astype(np.float32)
    runtimes = [n for n in ("onnxruntime", "openvino") if RUNTIMES[n].available()]

    files, failed = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            t = time.perf_counter()
            try:
                files[name] = make_files(name, size, tmp, calibration)
            except Exception as exc:  # noqa: BLE001 (a model that does not export is a row of the report, not a crash)
                failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            print(f"# {name}: files in {time.perf_counter() - t:.0f} s" + (f" FAILED {failed[name]}" if name in failed else ""),
                  flush=True)
        runners = {}
        for name, f in files.items():
            for rt in runtimes:
                for precision in ("fp32", "int8"):
                    fmt = "onnx" if precision == "fp32" else "onnx-int8"
                    runners[(name, rt, precision)] = runner_for_file(f[precision], fmt, threads=args.threads, runtime=rt)
        print(f"# timing {len(runners)} runners, {args.rounds} interleaved rounds, {args.threads} threads", flush=True)
        b1 = interleaved(runners, 1, b1_iters, args.rounds)
        b32 = interleaved(runners, 32, b32_iters, args.rounds)

    rows = []
    for key in runners:
        name, rt, precision = key
        f = files[name]
        rows.append((percentile(np.asarray(b1[key]), 50), name, rt, precision, f,
                     32 * len(b32[key]) / (sum(b32[key]) / 1000.0)))
    rows.sort(key=lambda r: r[0])
    print(f"\nbackbone zoo at {size}x{size}, 1000 classes, {args.threads} CPU threads ({os.cpu_count()} cores, shared "
          f"with other work: absolute numbers move with the load, the order within one run is what to read)")
    print(f"{'model':<28} {'params M':>8} {'MACs G':>7} {'runtime':<11} {'prec':<5} {'file MB':>7} "
          f"{'b1 p50 ms':>9} {'b32 img/s':>9} {'TRT chk':>7}")
    for p50, name, rt, precision, f, thr in rows:
        print(f"{name:<28} {f['params'] / 1e6:>8.2f} {f['macs'] / 1e9:>7.3f} {rt:<11} {precision:<5} "
              f"{f['mb'][precision]:>7.2f} {p50:>9.2f} {thr:>9.1f} {'ok' if f['trt_check'] else 'FAIL':>7}")
    for name, why in failed.items():
        print(f"{name:<28} failed: {why}")
    minutes = (time.perf_counter() - start) / 60
    all_ok = not failed and all(f["trt_check"] for f in files.values())
    print(f"\ntarget every model exports ONNX, both INT8 files and passes the TensorRT check -> "
          f"{'met' if all_ok else 'NOT met'} ({len(files)}/{len(models)})")
    print(f"target the table in <= {TARGET_MINUTES:.0f} minutes -> {'met' if minutes <= TARGET_MINUTES else 'NOT met'} "
          f"({minutes:.1f} min{', --quick' if args.quick else ''})")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
