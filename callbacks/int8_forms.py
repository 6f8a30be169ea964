"""The INT8 forms: which integers a static INT8 file holds, for which runtime (Int8Quantization's `form`).

TensorRT wants symmetric int8 everywhere and float biases (it rejects DequantizeLinear nodes with INT32 inputs).
ONNX Runtime's x86 int8 kernels (MLAS, VPMADDUBSW / VNNI's VPDPBUSD) multiply uint8 activations by int8
weights: fed the symmetric S8S8 file TensorRT needs, it converts around every convolution and ends slower than
FP32 (MobileNetV2 224, 2 cores: S8S8 Q/DQ 4.7-5.3 ms, U8S8 Q/DQ 1.5 ms, FP32 3.0 ms). One file cannot serve
both, so the CPU form is its own file, model.int8-cpu.onnx, chosen per CPU family (the device's
`platform.machine()`):

  x86_64   U8S8: uint8 asymmetric activations, int8 symmetric per-channel weights, int32 biases, Q/DQ.
           Without VNNI, weights use 7 bits (reduce_range): ONNX Runtime's advice against VPMADDUBSW's
           16-bit saturation on AVX2/AVX-512 parts without VNNI.
  aarch64  S8S8 (int8 asymmetric activations, int8 symmetric weights), Q/DQ: ONNX Runtime's documented default
           and first choice; Arm's dot-product kernels take signed activations and have no saturation issue.

Q/DQ rather than QOperator on x86: ONNX Runtime fuses the Q/DQ pairs into the same QLinearConv kernels, and on
MobileNetV2 (2-core Xeon with VNNI, shared and loaded) Q/DQ measured 12.0-14.8 ms p50 vs QOperator 14.8, never
slower; OpenVINO reads Q/DQ too (on this file it is the fastest CPU path: benchmarks/runtime_latency.py).
`quant_format: qoperator` is there to measure the other on a given device.

The TensorRT form's accuracy is measured as TensorRT computes it (int8 × int8 summed in int32: exact), by ONNX
Runtime with its Q/DQ nodes run as written (OnnxRuntimeRunner qdq="exact"), never by ONNX Runtime's fused int8
kernels: on x86 without VNNI those sum pairs of products in saturating int16 (VPMADDUBSW), which full 8-bit
weights overflow. On a 2-core AMD Zen 3 (AVX2, no VNNI), quickstart's digits model quantized to this form with no
node kept in FP32 scored val top-1 70.19 % fused against 98.61 % with its Q/DQ as written (FP32 98.33 %; test
70.47 % against 97.49 %), so a fused gate would keep nodes in FP32 for a loss TensorRT never has, and differently
on a CPU with VNNI. `deploy` runs the file that way on such a CPU too (deploy.forms.device_qdq). The CPU form is
made for the fused kernels (7-bit weights without VNNI) and measured fused: 98.61 % both ways there.

x86 without VNNI (2-core Zen 3, AVX2; ONNX Runtime 1.32; MobileNetV2 224, batch 1, one thread, CPU time per call
over 15 paired rounds, so other processes' load does not decide it): FP32 / INT8 is 1.45x and 1.47x in two runs (95%
intervals 1.38..1.50, 1.45..1.51). Everything ONNX Runtime can fuse is fused (52 QLinearConv, 10 QLinearAdd, QGemm);
outside them only the input's QuantizeLinear and NHWC Transpose and the pooling's Transpose, DequantizeLinear,
ReduceMean and QuantizeLinear remain, 0.2 ms together. What bounds it is MLAS's AVX2 kernels: per node, FP32 / INT8
is 1.5-2.0x for the 1x1 convolutions, 0.7-1.2x for the depthwise ones and 0.75x for the 3-channel stem. Against this
form, nothing measured was faster beyond noise (its time / the variant's, 95% interval; with and without
reduce_range they run alike, 1.01 (0.98..1.02)): per-tensor weights 1.01 (0.97..1.06), QOperator 1.00 (0.97..1.03),
stem kept in FP32 1.00 (0.98..1.04), GlobalAveragePool instead of ReduceMean (fused to QLinearGlobalAveragePool)
1.01 (1.00..1.02), QDQKeepRemovableActivations 1.02 (0.99..1.03), AddQDQPairToWeight 1.00, graph level extended
0.82; slower were depthwise convolutions kept in FP32 0.94, uint8 weights 0.75, and (two threads, wall time)
Conv/Gemm only 0.69, S8S8 0.65. On a trained MobileNetV2 (5,000 MNIST digits at 64 px, 1,000 test images, FP32
97.2 %) every Q/DQ variant above stayed within 0.4 pt of FP32 (this form with reduce_range 97.0 %, without 97.3 %),
so the form and its 7-bit weights stay: the saturation guard costs no time here.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType

FAMILIES = {"x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64", "i686": "x86_64",
            "aarch64": "aarch64", "arm64": "aarch64", "armv8": "aarch64"}
FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
CPU_RUNTIME = "cpu"  # the manifest's "runtime it is for": ONNX Runtime's and OpenVINO's CPU back ends alike


@dataclass(frozen=True)
class Int8Form:
    """The settings handed to quantize_static for one form."""

    name: str
    activation_type: QuantType = QuantType.QInt8
    weight_type: QuantType = QuantType.QInt8
    activation_symmetric: bool = True
    weight_symmetric: bool = True
    quantize_bias: bool = False
    quant_format: QuantFormat = QuantFormat.QDQ
    reduce_range: bool = False

    def describe(self) -> dict:
        return {"form": self.name, "activations": self.activation_type.name, "weights": self.weight_type.name,
                "activation_symmetric": self.activation_symmetric, "quant_format": self.quant_format.name,
                "int32_bias": self.quantize_bias, "reduce_range": self.reduce_range}


# QuantizeBias False: TensorRT rejects DequantizeLinear nodes with INT32 inputs, so biases stay float.
TENSORRT_FORM = Int8Form("S8S8 symmetric Q/DQ, float biases (TensorRT)")


def cpu_family(machine: Optional[str] = None) -> str:
    """x86_64 or aarch64 from a `platform.machine()` string (this machine's when None)."""
    name = (machine or platform.machine()).lower()
    if name not in FAMILIES:
        raise ValueError(f"Int8Quantization target {name!r} is not a CPU family it knows; set target to one of "
                         f"{sorted(set(FAMILIES.values()))}")
    return FAMILIES[name]


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


def asymmetric_zero_points(path: str | os.PathLike) -> list[str]:
    """Q/DQ nodes whose zero point is not an INT8 zero (TensorRT rejects those)."""
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    bad = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
            zp = inits.get(node.input[2])
            if zp is None:
                continue
            values = numpy_helper.to_array(zp)
            if zp.data_type != onnx.TensorProto.INT8 or np.any(values != 0):
                bad.append(node.name or node.output[0])
    return bad


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
