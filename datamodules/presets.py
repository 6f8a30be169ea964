"""Train and eval transforms side by side (albumentations 2.x), so their difference fits one screen.

The eval transform is the one the deploy bundle records: it is built from a plain description
(``Preprocessing``) that goes into ``manifest.json`` and that ``deploy`` re-implements without torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


@dataclass
class Preprocessing:
    """What the eval transform does, in the words of the bundle manifest (mean/std on the 0-1 scale)."""

    resize: list[int]  # [H, W]
    mean: list[float]
    std: list[float]
    crop: Optional[list[int]] = None  # [H, W] center crop after the resize, or None
    interpolation: str = "bilinear"
    color: str = "RGB"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {sorted(INTERPOLATIONS)}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got mean={self.mean} std={self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")

    @property
    def output_size(self) -> list[int]:
        return list(self.crop or self.resize)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalize_to_tensor(mean: Sequence[float], std: Sequence[float]) -> list[A.BasicTransform]:
    return [A.Normalize(mean=list(mean), std=list(std), max_pixel_value=255.0), ToTensorV2()]


def build_eval_transform(pre: Preprocessing) -> A.Compose:
    """Resize (+ optional center crop) + normalize: nothing random."""
    steps: list[A.BasicTransform] = [A.Resize(*pre.resize, interpolation=INTERPOLATIONS[pre.interpolation])]
    if pre.crop:
        steps.append(A.CenterCrop(*pre.crop))
    return A.Compose(steps + normalize_to_tensor(pre.mean, pre.std))
