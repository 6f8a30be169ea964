"""INT8 on the hard case: PTQ alone (each calibration method, and on QAT's operators only), PTQ after the gate,
and QAT, side by side.

    python benchmarks/qat.py [--config experiments/qat.yaml]      # runs the fit (CPU, several minutes)
    python benchmarks/qat.py --run runs/qat/version_0             # a finished run: its bundle and config.yaml

Top-1 is ONNX Runtime's on the test split, each file in its own precision, the INT8 files with their Q/DQ run as
written (TensorRT's arithmetic); Δ is against the FP32 ONNX file, in points (positive = lost). The PTQ-alone rows
are this script's study: the bundle's model.onnx quantized here (no node kept in FP32) with each calibration method
on the calibration images QuantizationAwareTraining used, and once with minmax on only the operators QAT quantizes
(Conv/Gemm), scored on the test split of the run's own data (rebuilt from its config.yaml). The gated PTQ and QAT rows are the bundle's own files as the fit-end steps
scored them, with the bundle's latency (batch 1, p50, CPU). QAT's cost is its fine-tune's seconds against the
fit's training seconds (validation included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project's packages, run from anywhere
TARGETS = {"ptq_loss": 1.0, "qat_within": 0.3, "qat_cost": 0.30}


def run_fit(config: Path, workdir: Path) -> Path:
    subprocess.run([sys.executable, str(ROOT / "main.py"), "fit", "--config", str(config)], cwd=workdir, check=True)
    reports = sorted(workdir.glob("runs/*/version_*/bundle/report.json"))
    if not reports:
        raise SystemExit(f"the fit wrote no bundle under {workdir / 'runs'}")
    return reports[-1].parents[1]


def run_datamodule(run: Path, preprocessing: dict):
    """The run's DataModule, rebuilt from the `data` section of its config.yaml (same source, split, seed and
    resize) with the bundle's mean/std (`preprocessing` of its manifest: what its files were made for, also where
    they came from pretrained weights), set up without a trainer: nothing is written into the run."""
    import yaml
    from jsonargparse import ArgumentParser

    from datamodules import ImageClassificationDataModule

    config = run / "config.yaml"
    if not config.is_file():
        raise SystemExit(f"{run} has no config.yaml; give a run folder written by python main.py fit "
                         "(runs/<experiment>/version_N)")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ImageClassificationDataModule, "data")
    data = {**((yaml.safe_load(config.read_text()) or {}).get("data") or {}),
            "mean_std": [preprocessing["mean"], preprocessing["std"]]}
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # the name before jsonargparse 4.49
    dm = instantiate(parser.parse_object({"data": data})).data
    dm.setup()
    return dm


def ptq_study(run: Path, preprocessing: dict, num_samples: int, methods: list[str]) -> dict[str, float]:
    """Test top-1 of the bundle's model.onnx: FP32, plain PTQ with each of `methods` (no node kept in FP32), and
    minmax PTQ on Conv/Gemm only ("conv_gemm")."""
    from callbacks.fit_end import evaluate, numpy_batches
    from callbacks.qat import QAT_OP_TYPES
    from callbacks.quantization import loader_batches, prepare_for_quantization, quantize_int8
    from deploy.forms import accuracy_qdq
    from deploy.runners import OnnxRuntimeRunner

    dm = run_datamodule(run, preprocessing)

    def top1(path: Path, format: str = "onnx-int8") -> float:  # TensorRT-form files: scored as TensorRT computes them
        qdq = accuracy_qdq(format, "tensorrt")
        return evaluate(OnnxRuntimeRunner(str(path), qdq=qdq).infer, numpy_batches(dm.test_dataloader()))["top1"]

    def calibration():
        return loader_batches(dm.calibration_dataloader(num_samples, batch_size=16))

    fp32 = run / "bundle" / "model.onnx"
    out = {"fp32": top1(fp32, "onnx")}
    with tempfile.TemporaryDirectory(prefix="edgecls-ptq-") as tmp:
        prepared = prepare_for_quantization(fp32, Path(tmp) / "prepared.onnx")
        plain = Path(tmp) / "int8.onnx"
        for method in methods:
            quantize_int8(prepared, plain, calibration(), method)
            out[method] = top1(plain)
        # onnxruntime quantizes every operator it knows (SE Mul, HardSigmoid, ReduceMean, Add ...), ModelOpt only
        # the inputs and weights of Conv/Gemm: PTQ on QAT's operator set separates the two causes of loss
        quantize_int8(prepared, plain, calibration(), "minmax", op_types=QAT_OP_TYPES)
        out["conv_gemm"] = top1(plain)
    return out


def table(run: Path, methods: list[str]) -> tuple[list[tuple], dict]:
    bundle = run / "bundle"
    report = json.loads((bundle / "report.json").read_text())
    manifest = json.loads((bundle / "manifest.json").read_text())
    qat = report["steps"].get("QuantizationAwareTraining")
    if not qat or "test_top1" not in qat:
        raise SystemExit(f"{bundle / 'report.json'} has no QuantizationAwareTraining result; give a run of a recipe "
                         "with that step (experiments/qat.yaml) whose step did not fail")
    gate = report["steps"].get("Int8Quantization", {})
    latency = {a["file"]: a["metrics"].get("latency_ms") for a in manifest["artifacts"] if a.get("status") == "ok"}
    test = qat["test_top1"]
    study = ptq_study(run, manifest["preprocessing"], qat["num_samples"], methods)
    ref = 100 * test["fp32"]

    def drop(top1: float) -> float:
        return ref - 100 * top1

    rows = [("FP32 ONNX", ref, 0.0, latency.get("model.onnx"), "")]
    for method in methods:
        rows.append((f"PTQ {method}, alone", 100 * study[method], drop(study[method]), None, "not shipped"))
    if qat.get("ptq_gated_drop_pts") is not None:
        kept = gate.get("excluded_nodes", [])
        rows.append((f"PTQ minmax + gate ({len(kept)} node(s) FP32)", 100 * test["ptq_gated"], qat["ptq_gated_drop_pts"],
                     latency.get("model.int8.onnx"), "model.int8.onnx"))
    rows.append(("PTQ minmax, Conv/Gemm only (QAT's operators)", 100 * study["conv_gemm"], drop(study["conv_gemm"]),
                 None, "not shipped"))
    shipped = "model.int8-qat.onnx" if qat["beats_ptq_on_val"] else "not shipped (did not beat PTQ on val)"
    kept = qat.get("qat_epoch_kept")
    rows.append((f"QAT (epoch {kept} of {qat['epochs']} kept on val, ModelOpt)", 100 * test["qat"], qat["qat_drop_pts"],
                 latency.get("model.int8-qat.onnx"), shipped))
    if abs(study["fp32"] - test["fp32"]) > 1e-9:
        print(f"warning: the FP32 file scores {100 * study['fp32']:.2f} % here and {ref:.2f} % in the run's report; "
              "the data under the run's config.yaml changed since the fit", file=sys.stderr)
    return rows, qat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "qat.yaml")
    parser.add_argument("--run", type=Path, help="a finished run folder (runs/<experiment>/version_N) to read instead")
    parser.add_argument("--methods", nargs="+", default=["minmax", "entropy", "percentile"],
                        choices=["minmax", "entropy", "percentile"], help="PTQ calibration methods of the study")
    args = parser.parse_args()
    if args.run is not None:
        run = args.run
    else:
        workdir = Path(tempfile.mkdtemp(prefix="edgecls-qat-"))
        run = run_fit(args.config.resolve(), workdir)
    rows, qat = table(run, list(dict.fromkeys(args.methods)))
    samples = qat.get("test_samples")
    per_image = f", {100 / samples:.2f} pt an image" if samples else ""
    print(f"\nINT8 on the hard case ({run}); test split of {samples or '?'} images{per_image}, ONNX Runtime, "
          f"CPU {os.cpu_count()} cores (shared, loaded)")
    print(f"{'artifact':44s} {'top-1 %':>8s} {'Δ pt lost':>10s} {'latency ms':>11s}  file")
    for label, top1, drop, ms, file in rows:
        print(f"{label:44s} {top1:8.2f} {drop:+10.2f} {(f'{ms:.3f}' if ms else '-'):>11s}  {file}")
    cost = qat["qat_cost_of_fit"]
    print(f"QAT fine-tune {qat['qat_seconds']:.0f} s (validation after each epoch included), fit training "
          f"{qat['fit_seconds']:.0f} s; val top-1 by QAT epoch (0 = calibrated start): "
          + " ".join(f"{100 * v:.2f}" for v in qat.get("qat_val_top1_by_epoch", [])))
    parity = qat.get("qat_export_parity")
    if parity:
        print(f"QAT export vs the fake-quantized network ({parity['images']} val images): max |Δlogit| "
              f"{parity['max_abs_diff']:.2e} (largest logit {parity['max_abs_logit']:.1f}), top-1 agreement "
              f"{100 * parity['top1_agreement']:.1f} %")
    checks = [
        (f"PTQ alone (minmax) loses >= {TARGETS['ptq_loss']} pt", qat["ptq_drop_pts"] >= TARGETS["ptq_loss"],
         f"{qat['ptq_drop_pts']:+.2f} pt"),
        (f"QAT within {TARGETS['qat_within']} pt of FP32", qat["qat_drop_pts"] <= TARGETS["qat_within"],
         f"{qat['qat_drop_pts']:+.2f} pt lost"),
        (f"QAT fine-tune <= {100 * TARGETS['qat_cost']:.0f} % of the fit's time",
         cost is not None and cost <= TARGETS["qat_cost"], f"{100 * cost:.0f} %" if cost is not None else "unknown"),
        ("QAT is the shipped TensorRT INT8 file", bool(qat["beats_ptq_on_val"]), str(qat["beats_ptq_on_val"])),
    ]
    for what, ok, value in checks:
        print(f"target {what}: {value} -> {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
