"""LightningModules and the networks they wrap."""

from lightning_modules.backbones import BACKBONES, build_backbone, classifier_layer, register_backbone
from lightning_modules.classifier import SELECTION_METRIC, ImageClassifier

__all__ = ["BACKBONES", "ImageClassifier", "SELECTION_METRIC", "build_backbone", "classifier_layer", "register_backbone"]
