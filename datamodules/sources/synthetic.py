"""Random images in balanced classes, generated on access: for tests and benchmarks that need no real pixels."""

from __future__ import annotations

from typing import Optional, Union

import numpy as np

from datamodules.datasets import SyntheticImages
from datamodules.sources.base import SPLITS, DataSource, LoadRequest, SourceData, SplitData
from datamodules.split import stratified_split
from deploy.preprocessing_rules import size_pair


class SyntheticSource(DataSource):
    """``count`` random images of ``size`` (default: data.image_size) in ``classes`` balanced classes."""

    name = "synthetic"

    def __init__(self, count: int = 1000, classes: int = 10, size: Optional[Union[int, list[int]]] = None) -> None:
        if classes < 2 or count < classes:
            raise ValueError(f"SyntheticSource needs classes >= 2 and count >= classes, got count={count} "
                             f"classes={classes}; raise data.source.count or lower data.source.classes")
        self.count, self.classes = int(count), int(classes)
        self.size = size_pair(size, "data.source.size")

    def class_names(self) -> list[str]:
        return [f"class_{i}" for i in range(self.classes)]

    def load(self, request: LoadRequest) -> SourceData:
        size = self.size or list(request.resize)
        labels = np.arange(self.count, dtype=np.int64) % self.classes
        parts = stratified_split(labels, request.split, request.seed)
        splits = {s: SplitData(SyntheticImages(labels, idx, size, self.classes, request.seed), labels[idx])
                  for s, idx in zip(SPLITS, parts)}
        return SourceData(self.class_names(), splits,
                          ["synthetic", self.count, self.classes, size, request.seed, parts[0].tolist()])
