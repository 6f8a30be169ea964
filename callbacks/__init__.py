"""Fit-end work as Lightning callbacks, listed in the experiment YAML's trainer.callbacks in the order they run."""

from callbacks.bundle import DeployBundle
from callbacks.onnx_export import ONNXExport, export_onnx
from callbacks.pruning import AtEpochs, StructuredPruning, prune_channels
from callbacks.quantization import Int8Quantization, quantize_int8
from callbacks.tensorrt_build import TensorRTBuild

__all__ = ["AtEpochs", "StructuredPruning", "prune_channels", "DeployBundle", "Int8Quantization", "ONNXExport", "TensorRTBuild", "export_onnx", "quantize_int8"]
