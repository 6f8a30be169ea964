"""The DataModule's eval transform, rebuilt with numpy + OpenCV from the manifest's ``preprocessing`` block.

It mirrors albumentations step by step (cv2.resize with the same flag, the same center-crop arithmetic,
a float32 lookup table for the normalization) so a device sees the same tensor training evaluated on.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence

import cv2
import numpy as np

from deploy.bundle import validate_preprocessing
from deploy.errors import message_line
from deploy.images import ImageDecodeError, ImageSource, read_image
from deploy.preprocessing_rules import cv2_flag


class Preprocessor:
    """HWC uint8 RGB image -> CHW float32 tensor, exactly as the training eval transform makes it."""

    def __init__(self, preprocessing: dict):
        pre = validate_preprocessing(dict(preprocessing), "preprocessing")
        self.resize = tuple(pre["resize"])
        self.crop = tuple(pre["crop"]) if pre.get("crop") else None
        self.interpolation = cv2_flag(pre.get("interpolation", "bilinear"))
        self.bgr = pre.get("color", "RGB") == "BGR"
        mean = np.asarray(pre["mean"], dtype=np.float64) * 255.0
        scale = 1.0 / (np.asarray(pre["std"], dtype=np.float64) * 255.0)
        # albumentations normalizes uint8 through a float32 table, (v - mean) * (1 / std); the same table
        # here gives bit-identical values and costs one gather per pixel.
        values = np.arange(256, dtype=np.float32)
        self.lut = ((values[None, :] - mean.astype(np.float32)[:, None]) * scale.astype(np.float32)[:, None]).astype(np.float32)

    @property
    def output_size(self) -> tuple[int, int]:
        return self.crop or self.resize

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {rgb.shape} dtype {rgb.dtype}")
        height, width = self.resize
        if rgb.shape[:2] != (height, width):  # albumentations skips resize at the target size; so do we
            rgb = cv2.resize(rgb, (width, height), interpolation=self.interpolation)
        if self.crop:
            crop_h, crop_w = self.crop
            top, left = (height - crop_h) // 2, (width - crop_w) // 2
            rgb = rgb[top:top + crop_h, left:left + crop_w]
        if self.bgr:
            rgb = rgb[:, :, ::-1]
        chw = np.empty((3,) + rgb.shape[:2], dtype=np.float32)
        for c in range(3):
            chw[c] = self.lut[c][rgb[:, :, c]]
        return chw


def preprocess_image(source: ImageSource, preprocessing: dict | Preprocessor, name: Optional[str] = None) -> np.ndarray:
    """Decode one image (path, bytes or HWC uint8 array) and return its CHW float32 tensor."""
    prep = preprocessing if isinstance(preprocessing, Preprocessor) else Preprocessor(preprocessing)
    return prep(read_image(source, name))


def source_name(source: ImageSource, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"{'array' if isinstance(source, np.ndarray) else 'bytes'}[{index}]"


def preprocess(sources: Sequence[ImageSource], preprocessing: dict | Preprocessor,
               names: Optional[Sequence[str]] = None) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Preprocess a batch; returns (NCHW float32 of the readable inputs, their indices, [(index, error)]).

    An unreadable input becomes one error sentence and does not stop the rest of the batch, whatever the
    decoder raised: PIL has exception types of its own (DecompressionBombError is not an OSError), and one
    odd file must never cost the other images their output.
    """
    prep = preprocessing if isinstance(preprocessing, Preprocessor) else Preprocessor(preprocessing)
    height, width = prep.output_size
    batch = np.empty((len(sources), 3, height, width), dtype=np.float32)
    kept: list[int] = []
    errors: list[tuple[int, str]] = []
    for i, source in enumerate(sources):
        name = names[i] if names is not None else source_name(source, i)
        try:
            batch[len(kept)] = prep(read_image(source, name))
        except ImageDecodeError as exc:
            errors.append((i, str(exc)))
            continue
        except (ValueError, cv2.error) as exc:
            errors.append((i, f"{name}: cannot be preprocessed ({message_line(exc)})"))
            continue
        except Exception as exc:  # noqa: BLE001 - see the docstring: per-file, never per-batch
            errors.append((i, f"{name}: cannot be read ({_describe(exc)})"))
            continue
        kept.append(i)
    return batch[:len(kept)], kept, errors


def _describe(exc: BaseException) -> str:
    """'Type: first line', or just the type where the message is empty (MemoryError usually is)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def expand_inputs(paths: Iterable[str]) -> list[str]:
    """Files as given; folders become their image files, sorted, so `infer DIR` does what a user means."""
    from deploy.images import is_image_file

    out: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                out.extend(os.path.join(root, f) for f in sorted(files) if is_image_file(f))
        else:
            out.append(path)
    return out
