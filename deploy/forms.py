"""What an artifact is (its form) and what measured it (a runtime), in the words every table prints.

A file's form says what it was made for: "INT8 TensorRT-form" (symmetric Q/DQ that TensorRT parses, also runnable
by CPU runtimes, slowly), "INT8 CPU-form" (uint8 activations, the layout CPU kernels run fast), "FP32". The runtime
column of a table is always the runtime that ran that row here, never the runtime the file was made for.
"""

from __future__ import annotations

from typing import Optional, Sequence

RUNTIME_NAMES = {"pytorch": "PyTorch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO",
                 "openvino-bf16": "OpenVINO bf16", "tensorrt": "TensorRT",
                 "litert": "LiteRT", "executorch": "ExecuTorch", "ncnn": "NCNN"}


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
    if format == "openvino-ir":  # OpenVINO's own IR; its INT8 is NNCF's post-training quantization
        return f"{precision} OpenVINO IR" + (" (NNCF)" if precision == "INT8" else "")
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


# How the manifest and the report say a TensorRT-form file's top-1 was measured.
EXACT_ACCURACY = "ONNX Runtime, Q/DQ run as written (TensorRT's arithmetic)"


def tensorrt_form(format: str, made_for: Optional[str]) -> bool:
    """A Q/DQ INT8 file in TensorRT's S8S8 symmetric form: format onnx-int8 made for neither the CPU runtimes nor
    dynamic INT8 (as artifact_form names it; a bundle older than the CPU form lists it with no runtime)."""
    return format == "onnx-int8" and made_for not in ("cpu", "onnxruntime")


def accuracy_qdq(format: str, made_for: Optional[str]) -> str:
    """How ONNX Runtime runs a file to measure its accuracy: a TensorRT-form file exact (what TensorRT computes,
    on any CPU), any other file fused (the CPU-form file is made for ONNX Runtime's own kernels)."""
    return "exact" if tensorrt_form(format, made_for) else "fused"


def device_qdq(format: str, made_for: Optional[str], runtime: str, providers: Sequence[str] = ("cpu",)) -> str:
    """How a device runs a file in `runtime`: exact where ONNX Runtime's fused int8 kernels would get a
    TensorRT-form file wrong (CPU only, x86 without VNNI), else fused."""
    from deploy.cpu_features import cpu_family_name, has_vnni

    cpu_only = all(p.lower() in ("cpu", "cpuexecutionprovider") for p in providers)
    saturates = cpu_family_name() == "x86_64" and not has_vnni()
    return "exact" if runtime == "onnxruntime" and tensorrt_form(format, made_for) and cpu_only and saturates \
        else "fused"


def exact_notice(file: str) -> str:
    """The one line a device prints where it runs a TensorRT-form file exact (device_qdq)."""
    return (f"{file} is TensorRT's INT8 form, whose int8 × int8 sums ONNX Runtime's fused kernels saturate on an x86 "
            "CPU without VNNI like this one, so it runs here with its Q/DQ as written (right answers, TensorRT's "
            "arithmetic); model.int8-cpu.onnx is the INT8 file for this CPU")


# What `deploy infer` adds to its `using` line where it runs a TensorRT-form file exact (device_qdq).
EXACT_USING = (" with its Q/DQ as written (this CPU's fused int8 kernels saturate on TensorRT's form; "
               "model.int8-cpu.onnx is the INT8 file made for this CPU)")
