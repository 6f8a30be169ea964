"""Small real models and data for the deploy tests: sklearn digits, a tiny CNN, ONNX export, Q/DQ INT8."""

from __future__ import annotations

import os
import warnings

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
    """Legacy exporter at opset 17: one file, dynamic batch, inside TensorRT 10.0's opset range."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, path, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def quantize_int8(fp32_path: str, out_path: str, calibration: np.ndarray) -> str:
    """Symmetric Q/DQ INT8 (what TensorRT accepts), calibrated on real preprocessed images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": calibration[i:i + 16]} for i in range(0, len(calibration), 16)])

        def get_next(self):
            return next(self.batches, None)

    prepared = out_path + ".pre.onnx"
    quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
    quantize_static(prepared, out_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    os.unlink(prepared)
    return out_path
