"""Fit-end work as Lightning callbacks, listed in the experiment YAML's trainer.callbacks in the order they run."""

from callbacks.onnx_export import ONNXExport, export_onnx

__all__ = ["ONNXExport", "export_onnx"]
