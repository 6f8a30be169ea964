"""Any torchvision classification model, by its own name (`mobilenet_v3_small`) or as `tv:<name>`."""

from __future__ import annotations

from typing import Optional

from torch import nn

from lightning_modules.backbones import CLASSIFIER_ATTR, TORCHVISION_HEADS, head_name, register_family
from lightning_modules.backbones.weights import (PRETRAINED_INPUT_ATTR, check_weights_args, download_error, finish,
                                                 load_pretrained, torchvision_input)


def torchvision_names() -> list[str]:
    import torchvision.models

    return list(torchvision.models.list_models(module=torchvision.models))  # classification models only


def build_error(name: str, exc: Exception) -> ValueError:
    return ValueError(f"backbone {name!r} could not be built from model.backbone_args ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else exc!r}); check the argument names against the "
                      "model's own constructor")


@register_family("tv:", torchvision_names, bare=True)
def torchvision_backbone(name: str, num_classes: int, weights: Optional[str] = None, weights_path: Optional[str] = None,
                         dropout: Optional[float] = None, freeze_features: bool = False,
                         bn_momentum: Optional[float] = None, **model_args) -> nn.Module:
    """Any torchvision classification model by name, its head sized for num_classes.

    weights: a weight-enum name of that model (IMAGENET1K_V1, DEFAULT): its preprocessing (mean/std) goes to the
    data, and its tensors come from torchvision's cache (a download) unless weights_path gives a local file.
    weights_path: a local state dict or checkpoint (weights_only=True); without weights, the DEFAULT weights'
    preprocessing. dropout: where the model has one. freeze_features: train only the head. bn_momentum: every
    BatchNorm's (see weights.set_bn_momentum). Other arguments go to the model's constructor (e.g. width_mult).
    """
    import torchvision.models

    if name not in torchvision_names():
        from lightning_modules.backbones import unknown_backbone

        raise ValueError(unknown_backbone(f"tv:{name}"))
    check_weights_args(weights, weights_path, freeze_features)
    if name in ("googlenet", "inception_v3"):
        # Their auxiliary heads make train-mode forward return a tuple, which neither the loss nor ONNX expects.
        model_args.setdefault("aux_logits", False)
        model_args.setdefault("init_weights", False)
    if dropout is not None:
        model_args["dropout"] = dropout
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **model_args)
    except TypeError as exc:
        if dropout is not None and "dropout" in str(exc):
            raise ValueError(f"backbone {name!r} has no dropout to set; remove dropout from model.backbone_args") from None
        raise build_error(name, exc) from None
    head_attr = next(a for a in TORCHVISION_HEADS if hasattr(model, a))
    setattr(model, CLASSIFIER_ATTR, head_name(model, head_attr))
    enum = None
    if weights or weights_path:
        enum_cls = torchvision.models.get_model_weights(name)
        try:
            enum = enum_cls[weights or "DEFAULT"]
        except KeyError:
            raise ValueError(f"unknown {name} weights {weights!r}; choose one of {[w.name for w in enum_cls]} or "
                             "DEFAULT (model.backbone_args.weights)") from None
        setattr(model, PRETRAINED_INPUT_ATTR, torchvision_input(enum))
    if weights and not weights_path:
        try:
            state = enum.get_state_dict(progress=False)
        except Exception as exc:  # offline machines fail in many ways (URLError, socket errors, SSL)
            raise download_error(f"{name} {enum.name}", enum.url, exc) from None
        load_pretrained(model, state, head_attr + ".", f"torchvision {name} {enum.name}")
    return finish(model, head_attr, weights_path, bool(weights), bn_momentum, freeze_features)
