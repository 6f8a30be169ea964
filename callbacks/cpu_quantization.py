"""CpuInt8Quantization: a second INT8 file, in the form CPU runtimes run fast, behind the same accuracy gate.

ONNX Runtime's x86 int8 kernels (MLAS, VPMADDUBSW / VNNI's VPDPBUSD) multiply uint8 activations by int8
weights: fed the symmetric S8S8 file TensorRT needs, it converts around every convolution and ends slower than
FP32 (MobileNetV2 224, 2 cores: S8S8 Q/DQ 4.7-5.3 ms, U8S8 Q/DQ 1.5 ms, FP32 3.0 ms). So the CPU flavour is
its own file, model.int8-cpu.onnx, chosen per CPU family (the device's `platform.machine()`):

  x86_64   U8S8: uint8 asymmetric activations, int8 symmetric per-channel weights, int32 biases, Q/DQ.
           Without VNNI, weights use 7 bits (reduce_range): ONNX Runtime's advice against VPMADDUBSW's
           16-bit saturation on AVX2/AVX-512 parts without VNNI.
  aarch64  S8S8 (int8 asymmetric activations, int8 symmetric weights), Q/DQ: ONNX Runtime's documented default
           and first choice; Arm's dot-product kernels take signed activations and have no saturation issue.

Q/DQ rather than QOperator on x86: ONNX Runtime fuses the Q/DQ pairs into the same QLinearConv kernels, and on
MobileNetV2 (2-core Xeon with VNNI, shared and loaded) Q/DQ measured 12.0-14.8 ms p50 vs QOperator 14.8, never
slower; OpenVINO reads Q/DQ too (on this file it is the fastest CPU path: benchmarks/runtime_latency.py).
`quant_format: qoperator` is there to measure the other on a given device.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Literal, Optional

import onnx
import pytorch_lightning as pl
from onnxruntime.quantization import QuantFormat, QuantType
from pytorch_lightning.utilities import rank_zero_info

from callbacks.fit_end import FitEndStep, evaluate, first_batch, numpy_batches
from callbacks.quantization import (METHODS, Int8Form, gated_quantization, loader_batches, prepare_for_quantization,
                                    quantize_static_int8)
from callbacks.records import ArtifactRecord, FitEndRecord
from deploy.runners import OnnxRuntimeRunner

FAMILIES = {"x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64", "i686": "x86_64",
            "aarch64": "aarch64", "arm64": "aarch64", "armv8": "aarch64"}
FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
CPU_RUNTIME = "cpu"  # the manifest's "runtime it is for": ONNX Runtime's and OpenVINO's CPU back ends alike


def cpu_family(machine: Optional[str] = None) -> str:
    """x86_64 or aarch64 from a `platform.machine()` string (this machine's when None)."""
    name = (machine or platform.machine()).lower()
    if name not in FAMILIES:
        raise ValueError(f"CpuInt8Quantization target {name!r} is not a CPU family it knows; set target to one of "
                         f"{sorted(set(FAMILIES.values()))}")
    return FAMILIES[name]


def has_vnni() -> bool:
    """True where this CPU has AVX-512 VNNI or AVX-VNNI (Linux /proc/cpuinfo; assumed True where unreadable)."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), None)
    except OSError:
        return True
    return True if flags is None else bool({"avx512_vnni", "avx_vnni"} & set(flags))


def cpu_int8_form(family: str, quant_format: str = "qdq", reduce_range: bool = False) -> Int8Form:
    """The INT8 form ONNX Runtime runs fastest on one CPU family (see the module docstring for why)."""
    fmt = FORMATS[quant_format]
    if family == "x86_64":
        return Int8Form("U8S8 (uint8 activations, int8 per-channel weights, int32 biases)", QuantType.QUInt8,
                        QuantType.QInt8, activation_symmetric=False, weight_symmetric=True, quantize_bias=True,
                        quant_format=fmt, reduce_range=reduce_range)
    return Int8Form("S8S8 asymmetric activations (int8 activations, int8 per-channel weights, int32 biases)",
                    QuantType.QInt8, QuantType.QInt8, activation_symmetric=False, weight_symmetric=True,
                    quantize_bias=True, quant_format=fmt)


def activation_zero_point_types(path: str | os.PathLike) -> set[str]:
    """The element types of the activation zero points in a quantized file (weights' are initializers that feed
    a DequantizeLinear only): {"UINT8"} for a U8S8 file, {"INT8"} for S8S8."""
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    types = set()
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in inits:
            types.add(onnx.TensorProto.DataType.Name(inits[node.input[2]].data_type))
        elif node.op_type in ("QLinearConv", "QLinearMatMul") and len(node.input) > 7 and node.input[7] in inits:
            types.add(onnx.TensorProto.DataType.Name(inits[node.input[7]].data_type))
    return types


class CpuInt8Quantization(FitEndStep):
    """Quantize model.onnx to model.int8-cpu.onnx, the INT8 form CPU runtimes run fast, behind an accuracy gate.

    The same streamed calibration and gate as Int8Quantization (the worst-SQNR nodes are kept in FP32 until
    INT8 is within `max_drop` top-1 points of FP32 on the validation split); the form follows the CPU family
    the bundle is for. Int8Quantization's file stays TensorRT's; DeployBundle scores both on the test split.

    Args:
        num_samples: calibration images from the train split, eval-transformed.
        method: calibration: minmax | entropy | percentile.
        per_channel: per-output-channel weight scales.
        max_drop: the gate: the most top-1 points INT8 may lose against FP32 on the validation split.
        max_excluded: the most nodes the gate may keep in FP32 while it searches.
        calibration_batch: images per calibration batch.
        target: the device's CPU family: auto (this machine's) | x86_64 | aarch64.
        quant_format: qdq | qoperator (qdq measured faster on x86 and is what OpenVINO reads).
        reduce_range: 7-bit weights; None = where the target is this x86 machine and it lacks VNNI.
    """

    PRODUCES = (f"onnx-int8:int8@{CPU_RUNTIME}",)

    def __init__(self, num_samples: int = 512, method: Literal["minmax", "entropy", "percentile"] = "minmax",
                 per_channel: bool = True, max_drop: float = 0.5, max_excluded: int = 8, calibration_batch: int = 16,
                 target: str = "auto", quant_format: Literal["qdq", "qoperator"] = "qdq",
                 reduce_range: Optional[bool] = None) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"CpuInt8Quantization method {method!r} is not one of {sorted(METHODS)}")
        if quant_format not in FORMATS:
            raise ValueError(f"CpuInt8Quantization quant_format {quant_format!r} is not one of {sorted(FORMATS)}")
        if num_samples < 1 or calibration_batch < 1:
            raise ValueError(f"CpuInt8Quantization num_samples and calibration_batch must be 1 or more, got "
                             f"{num_samples} and {calibration_batch}")
        self.family = cpu_family(None if target == "auto" else target)  # a bad target is a sentence at startup
        self.num_samples, self.method, self.per_channel = num_samples, method, per_channel
        self.max_drop, self.max_excluded, self.calibration_batch = max_drop, max_excluded, calibration_batch
        self.target, self.quant_format = target, quant_format
        if reduce_range is None:
            here = target == "auto" or cpu_family(target) == cpu_family()
            reduce_range = self.family == "x86_64" and here and not has_vnni()
        self.reduce_range = bool(reduce_range)

    def consumes(self) -> tuple[str, ...]:
        return ("onnx:fp32",)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: FitEndRecord) -> None:
        fp32 = record.find("onnx", "fp32")
        dm = trainer.datamodule
        form = cpu_int8_form(self.family, self.quant_format, self.reduce_range)

        def val_top1(path: Path) -> float:
            return evaluate(OnnxRuntimeRunner(str(path)).infer, numpy_batches(dm.val_dataloader()))["top1"]

        fp32_top1 = val_top1(fp32.file)
        out = self.staging / "model.int8-cpu.onnx"
        calibration = loader_batches(dm.calibration_dataloader(self.num_samples, batch_size=self.calibration_batch))
        prepared = prepare_for_quantization(fp32.file, self.staging / ".model.prepared-cpu.onnx")
        cache = self.staging / ".calibration-cpu.json"

        def quantize(excluded) -> Path:
            return quantize_static_int8(prepared, out, calibration, form, self.method, self.per_channel, excluded,
                                        calibration_cache=cache)

        try:
            gate = gated_quantization(quantize, prepared, out, val_top1, fp32_top1, self.max_drop, self.max_excluded,
                                      lambda n: first_batch(dm.val_dataloader(), n), what="CPU INT8")
        finally:
            prepared.unlink(missing_ok=True)
            cache.unlink(missing_ok=True)
        r = {"mode": "static", "method": self.method, "num_samples": calibration.samples, **gate,
             "cpu_family": self.family, "target": self.target, **form.describe()}
        record.publish(ArtifactRecord(self.name, "onnx-int8", "int8", CPU_RUNTIME, file=out, label="ONNX INT8 (CPU)",
                                      facts={"quantization": {**r, "calibration": self.method, "method": "ptq"}}))
        kept = ", ".join(r["excluded_nodes"]) or "none"
        verdict = "met" if r["gate_met"] else "NOT met"
        record.note(self.name, "INT8 (CPU)",
                    f"{form.name} {form.quant_format.name} for {self.family} ({self.method}, {r['num_samples']} "
                    f"calibration images), Δ {r['delta_pts']:+.2f} pt top-1 vs FP32 on the validation split (gate: at "
                    f"most {self.max_drop} pt lost, {verdict}); nodes kept in FP32: {kept}", facts=r)
        rank_zero_info(f"INT8 (CPU, {self.family}): top-1 {100 * r['int8_top1']:.2f} % vs FP32 {100 * fp32_top1:.2f} % "
                       f"on val (Δ {r['delta_pts']:+.2f} pt, gate {self.max_drop} pt: {verdict}), "
                       f"{os.path.getsize(out) / 1e6:.2f} MB")
