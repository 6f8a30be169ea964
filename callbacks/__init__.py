"""Fit-end work as Lightning callbacks, listed in the experiment YAML's trainer.callbacks in the order they run.

A new fit-end step is one FitEndStep subclass in its own file (what it consumes and produces, and `run`) plus a
YAML line; it publishes what it makes into the run's record (callbacks/records.py), which DeployBundle reads.
FitEnd (callbacks/fit_end.py) owns the chain and runs the steps.

Names are imported on first use (`callbacks.ONNXExport` in a YAML imports callbacks.onnx_export only), so a
command that runs no fit-end step does not pay for ONNX Runtime's quantization tools.
"""

from importlib import import_module

_WHERE = {
    "DeployBundle": "bundle", "CpuInt8Quantization": "cpu_quantization", "FitEnd": "fit_end",
    "FitEndStep": "fit_end", "StepSkipped": "fit_end", "ONNXExport": "onnx_export", "export_onnx": "onnx_export",
    "QuantizationAwareTraining": "qat", "AtEpochs": "pruning", "MaskPruning": "pruning",
    "StructuredPruning": "pruning", "prune_channels": "pruning", "Int8Quantization": "quantization",
    "quantize_int8": "quantization", "TensorRTBuild": "tensorrt_build", "OpenVinoIR": "openvino_ir",
    "LiteRTExport": "litert_export",
    "ExecuTorchExport": "executorch_export", "NCNNExport": "ncnn_export",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'callbacks' has no attribute {name!r}")
    value = getattr(import_module(f"callbacks.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
