"""MobileNetV2 (torchvision's), with its head sized for the classes and optional ImageNet weights."""

from __future__ import annotations

from typing import Optional

from torch import nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2 as tv_mobilenet_v2

from lightning_modules.backbones import register_backbone
from lightning_modules.backbones.weights import (PRETRAINED_INPUT_ATTR, check_weights_args, download_error,
                                                 load_pretrained, read_state_dict, torchvision_input)


@register_backbone("mobilenet_v2")
def mobilenet_v2(
    num_classes: int,
    width_mult: float = 1.0,
    dropout: float = 0.2,
    freeze_features: bool = False,
    weights: Optional[str] = None,
    weights_path: Optional[str] = None,
) -> nn.Module:
    """torchvision's MobileNetV2 with its head sized for num_classes.

    weights: a torchvision weight name (IMAGENET1K_V1, IMAGENET1K_V2): its preprocessing (mean/std) goes to the
    data, and its tensors come from torchvision's cache (a download) unless weights_path gives a local file.
    weights_path: a local state-dict file (works offline; without weights, the DEFAULT weights' preprocessing).
    freeze_features: train only the classifier.
    """
    check_weights_args(weights, weights_path, freeze_features)
    model = tv_mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult, dropout=dropout)
    enum = None
    if weights:
        try:
            enum = MobileNet_V2_Weights[weights]
        except KeyError:
            raise ValueError(f"unknown MobileNetV2 weights {weights!r}; choose one of {[w.name for w in MobileNet_V2_Weights]}") from None
    if weights_path:
        load_pretrained(model, read_state_dict(weights_path), "classifier.", weights_path)
    elif enum is not None:
        try:
            state = enum.get_state_dict(progress=False)
        except Exception as exc:  # offline machines fail in many ways (URLError, socket errors, SSL)
            raise download_error(weights, enum.url, exc) from None
        load_pretrained(model, state, "classifier.", f"torchvision {weights}")
    if enum is not None or weights_path:
        setattr(model, PRETRAINED_INPUT_ATTR, torchvision_input(enum or MobileNet_V2_Weights.DEFAULT))
    if freeze_features:
        for p in model.features.parameters():
            p.requires_grad_(False)
    return model
