"""What a DataModule tells the rest of a fit about its data, as one typed, read-only value: the model's head and
input, the leaderboard and the checkpoint checks read this instead of the DataModule's hyperparameters by key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union


@dataclass(frozen=True)
class DataFacts:
    """source: the source's name (DataSource.describe(): digits, imagefolder, cifar10, a class name ...).
    image_size, crop_size: [H, W] resize and optional center crop; input_size: what the network sees.
    mean_std: the normalization setting (auto, imagenet or [[r, g, b], [r, g, b]]); mean, std: the values in use,
    None until the DataModule's setup has resolved them. augment: a preset name or a list of transforms."""

    source: str
    num_classes: int
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    crop_size: Optional[tuple[int, int]]
    interpolation: str
    mean_std: Union[str, tuple[tuple[float, ...], tuple[float, ...]]]
    augment: Any
    batch_size: int
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None

    @property
    def input_size(self) -> tuple[int, int]:
        return self.crop_size or self.image_size
