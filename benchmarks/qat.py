"""INT8 on the hard case: PTQ alone (each calibration method), PTQ after the gate, and QAT, side by side.

    python benchmarks/qat.py [--config experiments/qat.yaml]      # runs the fit (CPU, several minutes)
    python benchmarks/qat.py --run runs/qat/version_0             # reads a finished run's bundle

Top-1 is ONNX Runtime's on the test split, each file in its own precision; Δ is against the FP32 ONNX file, in
points (positive = lost). The PTQ-alone rows are computed by QuantizationAwareTraining on plain files (no node
kept in FP32), one of them quantizing only the operators QAT quantizes (Conv/Gemm); the gated PTQ and QAT rows are the bundle's own files, with the bundle's latency (batch 1, p50,
CPU). QAT's cost is its fine-tune's seconds against the fit's training seconds (validation included).
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
TARGETS = {"ptq_loss": 1.0, "qat_within": 0.3, "qat_cost": 0.30}


def run_fit(config: Path, workdir: Path) -> Path:
    subprocess.run([sys.executable, str(ROOT / "main.py"), "fit", "--config", str(config)], cwd=workdir, check=True)
    reports = sorted(workdir.glob("runs/*/version_*/bundle/report.json"))
    if not reports:
        raise SystemExit(f"the fit wrote no bundle under {workdir / 'runs'}")
    return reports[-1].parents[1]


def table(run: Path) -> tuple[list[tuple], dict]:
    bundle = run / "bundle"
    report = json.loads((bundle / "report.json").read_text())
    manifest = json.loads((bundle / "manifest.json").read_text())
    qat = report["steps"]["QuantizationAwareTraining"]
    gate = report["steps"].get("Int8Quantization", {})
    latency = {a["file"]: a["metrics"].get("latency_ms") for a in manifest["artifacts"] if a.get("status") == "ok"}
    test = qat["test_top1"]
    rows = [("FP32 ONNX", 100 * test["fp32"], 0.0, latency.get("model.onnx"), "")]
    for method, drop in qat["ptq_drop_pts_by_method"].items():
        rows.append((f"PTQ {method}, alone", 100 * test["fp32"] - drop, drop, None, "not shipped"))
    if qat.get("ptq_gated_drop_pts") is not None:
        kept = gate.get("excluded_nodes", [])
        rows.append((f"PTQ minmax + gate ({len(kept)} node(s) FP32)", 100 * test["ptq_gated"], qat["ptq_gated_drop_pts"],
                     latency.get("model.int8.onnx"), "model.int8.onnx"))
    if "ptq_conv_gemm" in test:  # onnxruntime quantizes SE Mul, HardSigmoid, Add ...; QAT only Conv/Gemm
        rows.append(("PTQ minmax, Conv/Gemm only (QAT's operators)", 100 * test["ptq_conv_gemm"],
                     qat["ptq_conv_gemm_drop_pts"], None, "not shipped"))
    shipped = "model.int8-qat.onnx" if qat["beats_ptq_on_val"] else "not shipped (did not beat PTQ on val)"
    kept = qat.get("qat_epoch_kept")
    rows.append((f"QAT (epoch {kept} of {qat['epochs']} kept on val, ModelOpt)", 100 * test["qat"], qat["qat_drop_pts"],
                 latency.get("model.int8-qat.onnx"), shipped))
    return rows, qat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "qat.yaml")
    parser.add_argument("--run", type=Path, help="a finished run folder (runs/<experiment>/version_N) to read instead")
    args = parser.parse_args()
    if args.run is not None:
        run = args.run
    else:
        workdir = Path(tempfile.mkdtemp(prefix="edgecls-qat-"))
        run = run_fit(args.config.resolve(), workdir)
    rows, qat = table(run)
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
