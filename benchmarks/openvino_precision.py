"""What OpenVINO's CPU plugin actually executes under the f32 and the bf16 precision hint, and which is faster here.

    python benchmarks/openvino_precision.py [--rounds 20] [--calls 20] [--threads N] [--batch 1]

MobileNetV2 224 (random weights), exported by the bundles' exporter, compiled twice as deploy's OpenVinoRunner
compiles it (latency hint, static shape, the usable physical cores) with INFERENCE_PRECISION_HINT f32 and bf16 and
PERF_COUNT on. For each: the compiled model's runtime graph (`get_runtime_model()`: every node's layerType and
runtimePrecision, counted), and the per-node perf counters of one call summed by node type and the kernel that ran
it (exec_type, e.g. brgconv_avx512_1x1_bf16: oneDNN's AVX-512 bf16 kernel; a *_f32 kernel under the bf16 hint
means that node stayed f32). Then both timed in interleaved rounds, judged on the paired per-round ratio, and the
verdict deploy follows: bf16 is offered only where it is faster (deploy.selection.bf16_not_offered).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from callbacks.onnx_export import export_onnx  # noqa: E402
from deploy.benchmark import ratio_verdict  # noqa: E402
from deploy.cpu_features import cpu_flags, physical_cores  # noqa: E402
from deploy.selection import cpu_model  # noqa: E402


def runtime_precisions(compiled) -> collections.Counter:
    """(layerType, runtimePrecision) -> node count, from the compiled model's runtime graph."""
    counts = collections.Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        counts[tuple(info[k].astype(str) if k in info else "?" for k in ("layerType", "runtimePrecision"))] += 1
    return counts


def kernel_times(request) -> dict:
    """(node_type, exec_type) -> (nodes, microseconds) over one call's perf counters."""
    out = collections.defaultdict(lambda: [0, 0.0])
    for info in request.get_profiling_info():
        key = (info.node_type, info.exec_type)
        out[key][0] += 1
        out[key][1] += info.real_time.total_seconds() * 1e6
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=20, help="timed calls per precision per round")
    parser.add_argument("--threads", type=int, default=0, help="0: the usable physical cores")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    import openvino as ov

    threads = args.threads or physical_cores()
    flags = cpu_flags()
    torch.manual_seed(0)
    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(export_onnx(torchvision.models.mobilenet_v2(weights=None).eval(), os.path.join(tmp, "m.onnx"),
                               (224, 224)))
        model = core.read_model(path)
        model.reshape({model.inputs[0]: [args.batch, 3, 224, 224]})
        x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
        compiled, requests = {}, {}
        for precision in ("f32", "bf16"):
            compiled[precision] = core.compile_model(model, "CPU", {
                "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
                "INFERENCE_PRECISION_HINT": precision, "PERF_COUNT": True})
            requests[precision] = compiled[precision].create_infer_request()
            for _ in range(10):
                requests[precision].infer({0: x})
        print(f"CPU: {cpu_model()} (AVX512_BF16 {'yes' if 'avx512_bf16' in flags else 'no'}, AMX "
              f"{'yes' if 'amx_bf16' in flags else 'no'}); OpenVINO {ov.__version__}, {threads} threads, batch "
              f"{args.batch}; the plugin's capabilities: {core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES')}")
        for precision in ("f32", "bf16"):
            print(f"\n== hint {precision}: runtime graph (layerType, runtimePrecision): nodes")
            for key, n in sorted(runtime_precisions(compiled[precision]).items()):
                print(f"   {key[0]:<18}{key[1]:<10}{n:>4}")
            times = kernel_times(requests[precision])
            total = sum(t for _, t in times.values())
            print(f"== hint {precision}: one call's perf counters by node type and kernel (total {total:.0f} us)")
            for (node, kernel), (n, us) in sorted(times.items(), key=lambda kv: -kv[1][1]):
                if us > 0:
                    print(f"   {node:<18}{kernel:<30}{n:>4} nodes {us:>9.0f} us")
        p50 = {p: [] for p in requests}
        for number in range(args.rounds):
            for precision in (("f32", "bf16") if number % 2 == 0 else ("bf16", "f32")):
                samples = []
                for _ in range(args.calls):
                    start = time.perf_counter()
                    requests[precision].infer({0: x})
                    samples.append(time.perf_counter() - start)
                p50[precision].append(1000 * float(np.median(samples)))
    verdict = ratio_verdict(p50["f32"], p50["bf16"], 1.0, False)
    print(f"\nf32 p50 {np.median(p50['f32']):.2f} ms, bf16 p50 {np.median(p50['bf16']):.2f} ms over {args.rounds} "
          f"interleaved rounds; f32 / bf16 {verdict['ratio']:.2f}x (95% interval {verdict['low']:.2f}.."
          f"{verdict['high']:.2f}) -> bf16 "
          + {"met": "faster here: deploy offers it", "NOT met": "slower here: deploy does not offer it",
             "undecided": "undecided (noisy): rerun"}[verdict["verdict"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
