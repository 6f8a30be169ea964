"""What a valid preprocessing is, in one place: training (datamodules) and the device (deploy) both read it.

Sizes, crop <= resize, interpolation names, mean/std: the DataModule checks its YAML values here, the eval
transform's ``Preprocessing`` and the bundle manifest's ``preprocessing`` block are checked here, and the one
table of interpolation names maps them to OpenCV's flags. No torch and no OpenCV at import: a manifest can be
checked on a machine that has neither.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

# name -> OpenCV flag name; albumentations takes the same cv2 flags, so training and the device resize alike
INTERPOLATIONS = {
    "nearest": "INTER_NEAREST",
    "bilinear": "INTER_LINEAR",
    "bicubic": "INTER_CUBIC",
    "area": "INTER_AREA",
    "lanczos": "INTER_LANCZOS4",
}
INTERPOLATION_NAMES = tuple(INTERPOLATIONS)
COLORS = ("RGB", "BGR")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
MEAN_STD_NAMES = ("auto", "imagenet")


class PreprocessingError(ValueError):
    """A preprocessing value that cannot be used; the message names the key, the value and the fix."""


def cv2_flag(interpolation: str) -> int:
    """The OpenCV flag of an interpolation name (checked first)."""
    import cv2

    return getattr(cv2, INTERPOLATIONS[check_interpolation(interpolation)])


def check_interpolation(name: Any, key: str = "interpolation") -> str:
    if name not in INTERPOLATIONS:
        raise PreprocessingError(f"{key} must be one of {list(INTERPOLATION_NAMES)}, got {name!r}")
    return name


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def size_pair(value: Any, key: str) -> Optional[list[int]]:
    """An int or [height, width] of positive ints -> [height, width]; None stays None."""
    if value is None:
        return None
    hw = [value, value] if _is_positive_int(value) else value
    if not (isinstance(hw, (list, tuple)) and len(hw) == 2 and all(_is_positive_int(v) for v in hw)):
        raise PreprocessingError(f"{key} must be a positive int or [height, width] of positive ints, got {value!r}")
    return [int(hw[0]), int(hw[1])]


def check_crop(crop: Optional[Sequence[int]], resize: Sequence[int], crop_key: str = "crop",
               resize_key: str = "resize") -> None:
    if crop and (crop[0] > resize[0] or crop[1] > resize[1]):
        raise PreprocessingError(f"{crop_key} {list(crop)} is larger than {resize_key} {list(resize)}; the crop is "
                                 f"taken from the resized image, so make it at most {list(resize)}")


def check_rgb(value: Any, key: str, positive: bool = False) -> list[float]:
    if not (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise PreprocessingError(f"{key} must be 3 numbers (R, G, B on the 0-1 scale), got {value!r}")
    if positive and any(v <= 0 for v in value):
        raise PreprocessingError(f"{key} values must be positive, got {list(value)}")
    return [float(v) for v in value]


def check_mean_std(value: Any, key: str = "mean_std") -> Any:
    """auto | imagenet | [[3 means], [3 positive stds]] -> the name, or the two lists as floats."""
    if isinstance(value, str):
        if value not in MEAN_STD_NAMES:
            raise PreprocessingError(f"{key} must be auto, imagenet or [[r, g, b], [r, g, b]], got {value!r}")
        return value
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise PreprocessingError(f"{key} as a list must be [[3 means], [3 positive stds]], got {value!r}")
    return [check_rgb(value[0], f"{key}[0] (mean)"), check_rgb(value[1], f"{key}[1] (std)", positive=True)]


def check_preprocessing(pre: Any, prefix: str = "preprocessing.") -> dict:
    """Check a ``preprocessing`` block (resize, crop, interpolation, mean, std, color) and return it unchanged."""
    if not isinstance(pre, dict):
        raise PreprocessingError(f"'{prefix.rstrip('.')}' must be an object, got {type(pre).__name__}")
    resize = pre.get("resize")
    if not (isinstance(resize, list) and size_pair(resize, f"'{prefix}resize'")):
        raise PreprocessingError(f"'{prefix}resize' must be [height, width] of positive integers, got {resize!r}")
    crop = pre.get("crop")
    if crop is not None:
        if not isinstance(crop, list):
            raise PreprocessingError(f"'{prefix}crop' must be null or [height, width] of positive integers, got {crop!r}")
        size_pair(crop, f"'{prefix}crop'")
        check_crop(crop, resize, f"'{prefix}crop'", f"'{prefix}resize'")
    check_interpolation(pre.get("interpolation", "bilinear"), f"'{prefix}interpolation'")
    check_rgb(pre.get("mean"), f"'{prefix}mean'")
    check_rgb(pre.get("std"), f"'{prefix}std'", positive=True)
    if pre.get("color", "RGB") not in COLORS:
        raise PreprocessingError(f"'{prefix}color' must be 'RGB' or 'BGR', got {pre.get('color')!r}")
    return pre
