"""Fit-end work as Lightning callbacks, listed in the experiment YAML's trainer.callbacks in the order they run.

A new fit-end step is one FitEndStep subclass in its own file (what it consumes and produces, and `run`) plus a
YAML line; it publishes what it makes into the run's records (callbacks/records.py), which DeployBundle reads.
"""

from callbacks.bundle import DeployBundle
from callbacks.cpu_quantization import CpuInt8Quantization
from callbacks.fit_end import FitEndStep
from callbacks.onnx_export import ONNXExport, export_onnx
from callbacks.qat import QuantizationAwareTraining
from callbacks.pruning import AtEpochs, MaskPruning, StructuredPruning, prune_channels
from callbacks.quantization import Int8Quantization, quantize_int8
from callbacks.tensorrt_build import TensorRTBuild

__all__ = ["FitEndStep", "CpuInt8Quantization", "AtEpochs", "MaskPruning", "StructuredPruning", "prune_channels", "DeployBundle", "Int8Quantization", "ONNXExport", "QuantizationAwareTraining", "TensorRTBuild", "export_onnx", "quantize_int8"]
