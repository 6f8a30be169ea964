"""The TensorBoard logger every run gets: Lightning's, with its two tags that open the Scalars and Time Series
tabs moved into the `train` section, so those tabs read test, train, val, then the gradient norms."""

from __future__ import annotations

import re
from typing import Mapping, Optional

from pytorch_lightning.loggers import TensorBoardLogger

# LearningRateMonitor names its tags "lr-<Optimizer>" (and "lr-<Optimizer>/pg<N>" per parameter group) unless a
# scheduler is named; the logger connector adds "epoch" to every logged step. As top-level sections both would
# sort before test/train/val and open the tabs.
_LR = re.compile(r"^lr-[^/-]+")


def reading_order_tag(tag: str) -> str:
    """`epoch` -> `train/epoch`, `lr-AdamW` -> `train/lr`, `lr-SGD/pg1` -> `train/lr/pg1`; other tags unchanged."""
    if tag == "epoch":
        return "train/epoch"
    return _LR.sub("train/lr", tag, count=1)


class RunLogger(TensorBoardLogger):
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        super().log_metrics({reading_order_tag(k): v for k, v in metrics.items()}, step)
