"""Data layer: sources, splits, mean/std, albumentations pipelines and loaders behind one LightningDataModule."""

import os

# Before albumentations is imported anywhere: its import-time version check waits on DNS when there is no network
# (measured: 14.6 s an import, in every loader worker). NO_ALBUMENTATIONS_UPDATE=0 in the environment keeps it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from datamodules.datamodule import ImageClassificationDataModule  # noqa: E402
from datamodules.facts import DataFacts  # noqa: E402
from datamodules.presets import BatchNormalizer, Preprocessing, build_eval_transform, build_train_transform  # noqa: E402

__all__ = ["BatchNormalizer", "DataFacts", "ImageClassificationDataModule", "Preprocessing", "build_eval_transform",
           "build_train_transform"]
