"""What a data source is: a class chosen in YAML (``data.source``) that checks its own options when built and
hands the DataModule class names (cheaply, before set-up) and train/val/test images with labels.

Every source returns the same ``SourceData``, so splitting, statistics, transforms and loaders are one code path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from datamodules.datasets import ArrayImages, ImageStore
from datamodules.split import stratified_split
from datamodules.stats import PixelSums
from datamodules.workers import SharedArray

SPLITS = ("train", "val", "test")


@dataclass
class SplitData:
    images: ImageStore
    labels: np.ndarray


@dataclass
class SourceData:
    class_names: list[str]
    splits: dict[str, SplitData]
    identity: list[Any]  # what the pixels depend on, for the mean/std cache fingerprint
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    train_pixel_sums: Optional[PixelSums] = None  # set when indexing already decoded the train images

    @classmethod
    def from_arrays(cls, class_names: list[str], images: np.ndarray, labels: np.ndarray, request: LoadRequest,
                    identity: list[Any]) -> SourceData:
        """In-memory uint8 [N, H, W, 3] RGB images and int labels, split by ``data.split`` (stratified, seeded).

        ``identity``: what the pixels depend on (the source's name and options), for the mean/std cache."""
        labels = np.asarray(labels, dtype=np.int64)
        parts = stratified_split(labels, request.split, request.seed)
        return cls(list(class_names), from_indices(np.ascontiguousarray(images), labels, parts, f"{identity[0]}:"),
                   [*identity, list(request.resize), request.interpolation, [p.tolist() for p in parts]])


@dataclass
class LoadRequest:
    """What every source is given by the DataModule: the settings that all sources share and that shape loading."""

    resize: list[int]  # [H, W] of data.image_size
    interpolation: str
    split: list[float]  # [train, val, test] fractions, for sources without a fixed split
    seed: int
    cache_dir: Optional[str] = None
    index_threads: int = 1
    stats: Any = None  # imagefolder.StatsRequest when mean_std is auto: statistics in the indexing decode pass
    decoded: Any = None  # imagefolder.StoreRequest when data.decoded_cache is on: the decoded store to build or reuse


class DataSource:
    """Where images come from. A subclass takes its own options as ``__init__`` arguments (what YAML's
    ``init_args`` holds), checks them there with one sentence each, and implements ``class_names`` and ``load``.

    ``name`` is how the log line, the leaderboard and checkpoint checks call it (default: the class name).
    """

    name: str = ""

    def class_names(self) -> list[str]:
        """The label names in label order, without loading images: the model's head is sized from them."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Once, on one process, before ``load`` (a download); nothing by default."""

    def load(self, request: LoadRequest) -> SourceData:
        """Train, val and test images with their labels."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name or type(self).__name__


def from_indices(array: np.ndarray, labels: np.ndarray, parts: Sequence[np.ndarray], name_prefix: str) -> dict:
    """Splits of one in-memory uint8 [N, H, W, 3] array: one copy in shared memory for every split and loader worker."""
    shared = SharedArray(array)
    return {s: SplitData(ArrayImages(shared, idx, name_prefix), labels[idx]) for s, idx in zip(SPLITS, parts)}
