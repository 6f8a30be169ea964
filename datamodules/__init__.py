"""Data layer: sources, splits, mean/std, albumentations pipelines and loaders behind one LightningDataModule."""

from datamodules.datamodule import ImageClassificationDataModule
from datamodules.presets import Preprocessing, build_eval_transform, build_train_transform

__all__ = ["ImageClassificationDataModule", "Preprocessing", "build_eval_transform", "build_train_transform"]
