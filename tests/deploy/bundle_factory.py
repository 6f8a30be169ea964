"""Small real models and data for the deploy tests: sklearn digits, a tiny CNN, ONNX export, Q/DQ INT8."""

from __future__ import annotations

import os

import numpy as np


def digits_uint8():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 8x8 gray, 0-16 -> 0-255
    return images, digits.target.astype(np.int64)


def tiny_cnn(num_classes: int = 10):
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 3 * 3, num_classes),
    )


def export_onnx(model, example, path: str) -> str:
    """The project's own exporter (callbacks.export_onnx), legacy path: one file, dynamic batch, fast in tests."""
    from callbacks.onnx_export import export_onnx as project_export

    return str(project_export(model, path, tuple(example.shape[2:]), exporter="torchscript"))


def quantize_int8(fp32_path: str, out_path: str, calibration: np.ndarray) -> str:
    """The project's own symmetric Q/DQ INT8 (what TensorRT accepts), calibrated on real preprocessed images."""
    from callbacks.quantization import prepare_for_quantization, quantize_int8 as project_quantize

    prepared = prepare_for_quantization(fp32_path, out_path + ".pre.onnx")
    project_quantize(prepared, out_path, calibration)
    os.unlink(prepared)
    return out_path
