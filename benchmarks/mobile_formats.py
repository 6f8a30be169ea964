"""The phone and Raspberry Pi files side by side: LiteRT (FP32, INT8), ExecuTorch with XNNPACK (FP32, INT8) and
NCNN (FP32, FP16) of torchvision's MobileNetV2, MobileNetV3-Small and ResNet-18 at 224 (random weights), against
the FP32 ONNX file in ONNX Runtime (and OpenVINO), each made by the same functions the fit-end steps use.

    python benchmarks/mobile_formats.py [--models mobilenet_v2,mobilenet_v3_small,resnet18] [--rounds 9]
                                        [--per-round 20] [--calibration 32] [--threads N] [--size 224] [--quick]

Random weights, with batch-norm statistics settled on the calibration images (settle_batch_norm: else activations
shrink to logits of 1e-9 that INT8 rounds to zero). Per model, on one batch of real photographs
(scikit-image's, preprocessed by deploy.preprocess at 224 with
ImageNet's mean and std): max |logit difference| of every file against the FP32 ONNX file (target <= 1e-3 for
FP32), and top-1 agreement with it in points (target: within 0.1 pt for FP32 and FP16; INT8 within the 0.5 pt
gate, else `not met` with the reason: with random weights the logits of different classes lie within INT8's
rounding of each other, so a trained model's gate is the fit-end table's). XNNPACK delegation: every convolution
of both programs. Then the first model listed (MobileNetV2) at batch 1, every runtime timed in interleaved rounds (deploy.benchmark.measure,
as benchmarks/runtime_latency.py does) with the INT8 >= 1.5x FP32 targets of LiteRT and ExecuTorch judged on
paired round ratios (met / NOT met / undecided on a 95% interval). INT8 speed-ups need the CPU's int8 dot
products (x86 VNNI, Arm dot-product); the CPU is printed with its flags. Calibration: random crops of the same
photographs (photo_crops), the nearest to a real calibration split this script has without a download. --quick:
ResNet-18 alone at 112 px (the quickest to convert), whose figures say only that every file is made and measured.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.runtime_latency import Rounds, paired_line  # noqa: E402
from callbacks.bundle import cpu_name  # noqa: E402
from callbacks.device_files import quiet, require  # noqa: E402
from callbacks.executorch_export import lower, quantize_pt2e  # noqa: E402
from callbacks.litert_export import convert_fp32, quantize_int8  # noqa: E402
from callbacks.ncnn_export import pnnx_convert  # noqa: E402
from callbacks.onnx_export import export_onnx  # noqa: E402
from deploy.benchmark import ratio_verdict  # noqa: E402
from deploy.cpu_features import has_vnni  # noqa: E402
from deploy.runners import OnnxRuntimeRunner, RUNTIMES  # noqa: E402
from torch_runtimes.executorch import ExecuTorchRunner  # noqa: E402
from deploy.runtimes.litert import LiteRTRunner  # noqa: E402
from deploy.runtimes.ncnn import NcnnRunner, weights_of  # noqa: E402

SIZE = 224  # input side; --size (--quick: 112)
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def photographs(size: int = 224) -> np.ndarray:
    """scikit-image's colour photographs (and their mirror images) through deploy.preprocess: NCHW float32."""
    import skimage.data

    from deploy.preprocess import preprocess

    names = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "cat", "retina", "immunohistochemistry")
    images = []
    for name in names:
        load = getattr(skimage.data, "stereo_motorcycle" if name == "motorcycle" else name, None)
        if load is None:
            continue
        image = load()
        image = image[0] if isinstance(image, tuple) else image
        if image.ndim == 3 and image.shape[2] == 3:
            images += [np.ascontiguousarray(image), np.ascontiguousarray(image[:, ::-1])]
    pre = {"resize": [size, size], "interpolation": "bilinear", **IMAGENET, "color": "RGB"}
    batch, _, errors = preprocess(images, pre)
    if errors:
        raise RuntimeError(f"preprocessing failed: {errors}")
    return batch


def photo_crops(photos: np.ndarray, count: int, seed: int = 0) -> list[np.ndarray]:
    """Calibration images: random crops (60-100 % of the side) of the photographs, resized back to their side, in
    batches of 8. Real images, not the ones scored: Gaussian noise calibrates ranges that photographs' activations
    leave (MobileNetV3-Small's LiteRT INT8 file agreed with FP32 on 0 of 16 photographs calibrated on noise, 10 of
    16 on these crops)."""
    rng = np.random.default_rng(seed)
    size = photos.shape[-1]
    out = []
    for i in range(max(count, 1)):
        side = int(rng.integers(int(0.6 * size), size + 1))
        top, left = rng.integers(0, size - side + 1, 2)
        crop = torch.from_numpy(photos[i % len(photos)][None, :, top:top + side, left:left + side])
        out.append(torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear").numpy())
    return [np.concatenate(out[i:i + 8]) for i in range(0, len(out), 8)]


def settle_batch_norm(model: torch.nn.Module, batches: list[np.ndarray]) -> torch.nn.Module:
    """Random weights with batch-norm statistics from `batches` (a cumulative average over them): freshly
    initialised statistics (mean 0, variance 1) let activations shrink layer after layer to logits of 1e-9, which
    INT8's smallest scale (float32 eps) rounds to zero; settled ones keep a trained network's O(1) ranges."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for x in batches:
            model(torch.from_numpy(x))
    return model.eval()


def make_files(model: torch.nn.Module, folder: str, calibration: list[np.ndarray], threads: int) -> tuple[dict, dict]:
    """Every file of one model, and the facts: sizes (bytes), conversion seconds, XNNPACK delegation."""
    tools = (("litert_torch", "litert-torch"), ("executorch", "executorch"), ("pnnx", "pnnx"),
             ("ai_edge_quantizer", "ai-edge-quantizer"))
    versions = {package: require(module, package, "litert,executorch,ncnn", "file") for module, package in tools}
    path = lambda name: os.path.join(folder, name)  # noqa: E731
    files, facts = {}, {"seconds": {}, "delegation": {}}

    def timed(name, make):
        start = time.perf_counter()
        with quiet():
            out = make()
        facts["seconds"][name] = time.perf_counter() - start
        return out

    files["onnx fp32"] = str(export_onnx(model, path("model.onnx"), (SIZE, SIZE)))
    files["litert fp32"] = str(timed("litert fp32", lambda: convert_fp32(model, Path(path("model.tflite")), (SIZE, SIZE),
                                                                         "NHWC", versions["litert-torch"])))
    nhwc = [np.ascontiguousarray(x.transpose(0, 2, 3, 1)[i:i + 1]) for x in calibration for i in range(len(x))]
    files["litert int8"] = str(timed("litert int8", lambda: quantize_int8(Path(files["litert fp32"]),
                                                                          Path(path("model.int8.tflite")), nhwc,
                                                                          versions["ai-edge-quantizer"])))
    example = (torch.zeros(1, 3, SIZE, SIZE),)

    def pte_fp32():
        facts["delegation"]["executorch fp32"] = lower(torch.export.export(model, example), path("model.pte"),
                                                       versions["executorch"])
        return path("model.pte")

    def pte_int8():
        program, _ = quantize_pt2e(model, example, calibration, versions["executorch"])
        facts["delegation"]["executorch int8"] = lower(program, path("model.int8.pte"), versions["executorch"])
        return path("model.int8.pte")

    files["executorch fp32"] = timed("executorch fp32", pte_fp32)
    files["executorch int8"] = timed("executorch int8", pte_int8)

    for precision in ("fp32", "fp16"):
        param, _ = timed(f"ncnn {precision}", lambda: pnnx_convert(model, Path(folder), f"model.{precision}",
                                                                   (SIZE, SIZE), precision == "fp16", versions["pnnx"]))
        files[f"ncnn {precision}"] = str(param)
    facts["bytes"] = {k: os.path.getsize(v) + (os.path.getsize(weights_of(v)) if k.startswith("ncnn") else 0)
                      for k, v in files.items()}
    return files, facts


def open_runners(files: dict, threads: int) -> dict:
    runners = {"onnx fp32": OnnxRuntimeRunner(files["onnx fp32"], threads=threads)}
    if RUNTIMES["openvino"].available():
        runners["openvino fp32"] = RUNTIMES["openvino"].open(files["onnx fp32"], threads=threads)
    for name, path in files.items():
        kind = name.split()[0]
        if kind == "litert":
            runners[name] = LiteRTRunner(path, threads)
        elif kind == "executorch":
            runners[name] = ExecuTorchRunner(path, threads)
        elif kind == "ncnn":
            runners[name] = NcnnRunner(path, threads)
    return runners


def accuracy_lines(model_name: str, runners: dict, batch: np.ndarray, facts: dict) -> list[tuple[str, bool]]:
    reference = runners["onnx fp32"].infer(batch)
    labels, scale = reference.argmax(1), float(np.abs(reference).max())
    lines = []
    print(f"\n{model_name}: {len(batch)} photographs; |logits| up to {scale:.2e} (random weights)")
    print(f"{'file':<18} {'MB':>6} {'convert s':>9} {'max |diff|':>11} {'rel diff':>9} {'top-1 agree %':>13} {'Δ pt':>6}")
    for name, runner in runners.items():
        if name.startswith(("onnx", "openvino")):
            continue
        logits = runner.infer(batch)
        diff = float(np.abs(logits - reference).max())
        agree = 100.0 * float((logits.argmax(1) == labels).mean())
        print(f"{name:<18} {facts['bytes'][name] / 1e6:>6.2f} {facts['seconds'].get(name, 0):>9.1f} {diff:>11.2e} "
              f"{diff / scale:>9.1e} {agree:>13.2f} {agree - 100:>+6.2f}")
        if name.endswith(("fp32", "fp16")):
            if name.endswith("fp32"):
                lines.append((f"target {model_name} {name} max |logit diff| vs ONNX FP32 <= 1e-3: {diff:.1e} (logits up to "
                              f"{scale:.1f})", diff <= 1e-3))
            flipped = np.flatnonzero(logits.argmax(1) != labels)
            why = ""
            if len(flipped):  # how close the photos FP16 (or FP32) classed differently were to a tie in ONNX FP32
                top2 = np.sort(reference[flipped], axis=1)[:, -2:]
                margin = float((top2[:, 1] - top2[:, 0]).max())
                near_tie = margin <= 2 * diff  # two logits each off by <= diff move their gap by <= 2 * diff
                why = (f" ({len(flipped)} of {len(batch)} photos: ONNX FP32's top-2 logits differ by at most {margin:.1e}, "
                       f"{'within' if near_tie else 'beyond'} twice this file's max |diff| {diff:.1e}: "
                       f"{'a near tie that random weights leave, not a conversion error' if near_tie else 'a real error'})")
            lines.append((f"target {model_name} {name} top-1 within 0.1 pt of ONNX FP32: {agree - 100:+.2f} pt{why}",
                          100 - agree <= 0.1))
        else:
            met = 100 - agree <= 0.5
            why = "" if met else (" (random weights: no trained margin separates the classes, so INT8's rounding "
                                  "reorders them, relative diff above; a trained model's gate is the fit-end table's)")
            lines.append((f"target {model_name} {name} top-1 within the 0.5 pt INT8 gate: {agree - 100:+.2f} pt{why}",
                          met))
    for name, d in facts["delegation"].items():
        lines.append((f"target {model_name} {name}: XNNPACK delegates every convolution: {d['convolutions_delegated']}"
                      f" of {d['convolutions']} ({d['delegated_nodes']} nodes delegated; left outside: "
                      f"{', '.join(d['not_delegated']) or 'none'})", d["convolutions_delegated"] == d["convolutions"]))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,mobilenet_v3_small,resnet18")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved batch-1 rounds (of the first model listed)")
    parser.add_argument("--per-round", type=int, default=20, help="timed calls per row and round")
    parser.add_argument("--calibration", type=int, default=32, help="calibration images (crops of the photographs)")
    parser.add_argument("--threads", type=int, default=0, help="threads for every runtime (0: all cores)")
    parser.add_argument("--size", type=int, default=224, help="input side in px (the targets are set at 224)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: ResNet-18 only (the quickest to convert) at 112 px, 16 calibration images, "
                             "few rounds")
    args = parser.parse_args()
    global SIZE
    SIZE = 112 if args.quick and args.size == 224 else args.size
    if args.quick:
        args.models, args.rounds, args.per_round, args.calibration = "resnet18", 4, 10, min(args.calibration, 16)
    threads = args.threads or os.cpu_count() or 1
    print(f"{cpu_name()}; VNNI: {has_vnni()}; threads {threads}; load average {os.getloadavg()[0]:.1f} at start "
          "(a shared machine: latency rows are paired-round medians)")
    batch = photographs(SIZE)
    calibration = photo_crops(batch, args.calibration)
    timed_model = args.models.split(",")[0]  # the speed targets are judged on the first model (MobileNetV2)
    targets: list[tuple[str, bool]] = []
    speed = []
    for model_name in args.models.split(","):
        torch.manual_seed(0)
        model = settle_batch_norm(getattr(torchvision.models, model_name)(weights=None), calibration)
        with tempfile.TemporaryDirectory() as tmp:
            files, facts = make_files(model, tmp, calibration, threads)
            runners = open_runners(files, threads)
            targets += accuracy_lines(model_name, runners, batch, facts)
            if model_name == timed_model:
                rounds = Rounds(runners, 1, args.per_round)
                rounds.run(args.rounds)
                print(f"\n{model_name} {SIZE}x{SIZE} batch 1, {args.rounds} interleaved rounds of {args.per_round} calls:")
                print(f"{'runtime':<18} {'p50 ms':>8} {'round p50 min..max':>20} {'img/s':>8}")
                for row in sorted(rounds.rows(), key=lambda r: r["p50_ms"]):
                    print(f"{row['runtime']:<18} {row['p50_ms']:>8.2f} {row['round_min_ms']:>9.2f}..{row['round_max_ms']:<9.2f}"
                          f" {row['throughput']:>8.0f}")
                for fp32, int8 in (("litert fp32", "litert int8"), ("executorch fp32", "executorch int8")):
                    verdict = ratio_verdict(rounds.round_p50[fp32], rounds.round_p50[int8], 1.5)
                    text = f"{int8} >= 1.5x {fp32}" + ("" if has_vnni() else " (no VNNI here: a figure, not a verdict)")
                    speed.append(paired_line(text, verdict, 0.95))
            for runner in runners.values():
                runner.close()
    print()
    for text, met in targets:
        print(f"{text} -> {'met' if met else 'NOT met'}")
    for line in speed:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
