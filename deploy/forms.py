"""What an artifact is (its form) and what measured it (a runtime), in the words every table prints.

A file's form says what it was made for: "INT8 TensorRT-form" (symmetric Q/DQ that TensorRT parses, also runnable
by CPU runtimes, slowly), "INT8 CPU-form" (uint8 activations, the layout CPU kernels run fast), "FP32". The runtime
column of a table is always the runtime that ran that row here, never the runtime the file was made for.
"""

from __future__ import annotations

RUNTIME_NAMES = {"pytorch": "PyTorch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO",
                 "openvino-bf16": "OpenVINO bf16", "tensorrt": "TensorRT"}


def runtime_name(key: str) -> str:
    """"ONNX Runtime" for "onnxruntime"; an unknown key as it is."""
    return RUNTIME_NAMES.get(key, key)


def artifact_form(format: str, precision: str, made_for: str | None = None, method: str | None = None) -> str:
    """The form of a file of that manifest format and precision, made for `made_for` (the manifest's `runtime`:
    tensorrt, cpu, onnxruntime, any) by `method` (ptq, qat, dynamic)."""
    precision = precision.upper()
    if format == "tensorrt":
        return f"{precision} TensorRT engine"
    if format == "pytorch":
        return f"{precision} PyTorch"
    if format != "onnx-int8":
        return precision
    if method == "dynamic" or made_for == "onnxruntime":
        return f"{precision} dynamic (CPU)"
    form = f"{precision} CPU-form" if made_for == "cpu" else f"{precision} TensorRT-form"
    return f"{form}, QAT" if method == "qat" else form


def entry_form(entry: dict) -> str:
    """The manifest entry's `form`, or, for a bundle written before entries had one, the form its format,
    precision, runtime and quantization say."""
    if isinstance(entry.get("form"), str) and entry["form"]:
        return entry["form"]
    quantization = entry.get("quantization") or {}
    method = "dynamic" if quantization.get("mode") == "dynamic" else quantization.get("method")
    return artifact_form(entry.get("format", ""), entry.get("precision", ""), entry.get("runtime"), method)
