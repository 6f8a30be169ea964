"""What every backbone builder does with pretrained weights: load a local state dict (a head of another class count
left fresh), freeze the features, set BatchNorm momentum, and describe the input the weights expect."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

# Set on every network built here: the dotted name of its final class-scoring layer, so pruning, freezing and
# weight loading never have to guess it (a plain string attribute: not a parameter, not in the state dict).
CLASSIFIER_ATTR = "edgecls_classifier"
# Set on a network built with pretrained weights: the PretrainedInput those weights expect.
PRETRAINED_INPUT_ATTR = "edgecls_pretrained_input"


@dataclass(frozen=True)
class PretrainedInput:
    """The input a network's pretrained weights were trained on, read from the weights' own config (torchvision's
    `weights.transforms()`, timm's `pretrained_cfg`) without downloading anything."""

    source: str  # e.g. "torchvision MobileNet_V2_Weights.IMAGENET1K_V1", "timm mobilenetv3_small_100.lamb_in1k"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: Optional[tuple[int, int]] = None  # [H, W] the weights are evaluated at (after the crop)
    resize_size: Optional[int] = None  # the shorter side before the centre crop
    interpolation: Optional[str] = None  # bilinear, bicubic, ...


def torchvision_input(enum: Any) -> PretrainedInput:
    """From a torchvision weights enum: its eval preset (weights.transforms()) holds mean, std and sizes."""
    preset = enum.transforms()
    crop = list(getattr(preset, "crop_size", []) or [])
    resize = list(getattr(preset, "resize_size", []) or [])
    interpolation = getattr(preset, "interpolation", None)
    return PretrainedInput(
        source=f"torchvision {type(enum).__name__}.{enum.name}",
        mean=tuple(float(v) for v in preset.mean), std=tuple(float(v) for v in preset.std),
        input_size=(int(crop[0]), int(crop[-1])) if crop else None, resize_size=int(resize[0]) if resize else None,
        interpolation=getattr(interpolation, "value", interpolation))


def timm_input(model: nn.Module, name: str) -> PretrainedInput:
    """From a timm model's pretrained_cfg (present whether or not the weights were loaded)."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    size = cfg.get("input_size") or (3, 224, 224)
    crop_pct = cfg.get("crop_pct")
    tag = cfg.get("tag")
    return PretrainedInput(
        source=f"timm {name}{'.' + tag if tag else ''}",
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
        input_size=(int(size[-2]), int(size[-1])), resize_size=round(size[-2] / crop_pct) if crop_pct else None,
        interpolation=cfg.get("interpolation"))


def pretrained_input(model: nn.Module) -> Optional[PretrainedInput]:
    """The PretrainedInput of a network built here, or None (random initialisation, or not built here)."""
    found = getattr(model, PRETRAINED_INPUT_ATTR, None)
    return found if isinstance(found, PretrainedInput) else None


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights_path {path!r} does not exist; give the path of a saved state dict (torch.save(model.state_dict(), path))")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"weights_path {path!r} does not hold a state dict of tensors")
    return obj


def load_pretrained(model: nn.Module, state: dict[str, torch.Tensor], head_prefix: str, source: str) -> None:
    """Load everything that fits; a head of another class count (ImageNet's 1000) is left freshly initialised."""
    own = model.state_dict()
    mismatch = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in mismatch}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(head_prefix)]
    if missing or unexpected or any(not k.startswith(head_prefix) for k in mismatch):
        missing = missing + [k for k in mismatch if not k.startswith(head_prefix)]
        raise ValueError(
            f"weights from {source} do not fit this network (missing {missing[:3]}..., unexpected {unexpected[:3]}...); "
            "check backbone and width_mult"
        )


def check_weights_args(weights: Optional[str], weights_path: Optional[str], freeze_features: bool) -> None:
    if freeze_features and not (weights or weights_path):
        raise ValueError("backbone_args.freeze_features is true but neither weights nor weights_path is set: frozen "
                         "random features learn nothing; give weights or weights_path, or set freeze_features false")


def download_error(what: str, url: str, exc: Exception) -> RuntimeError:
    return RuntimeError(f"could not download the torchvision weights {what} ({type(exc).__name__}); download {url} on "
                        "a machine with internet and set backbone_args.weights_path to the file (keep weights: it "
                        "names the file's preprocessing)")


def set_bn_momentum(model: nn.Module, momentum: Optional[float], pretrained: bool) -> None:
    """MobileNetV3 and EfficientNet ship BatchNorm momentum 0.01, tuned for ImageNet's thousands of steps an
    epoch: trained from scratch on a small set, the running statistics are still mostly their 0/1 start after
    hundreds of steps and eval-mode accuracy sits at chance while train accuracy climbs. From scratch the
    PyTorch default 0.1 is used unless bn_momentum is given; pretrained statistics keep the library's value."""
    if momentum is None and pretrained:
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None:
            m.momentum = momentum if momentum is not None else max(m.momentum, 0.1)


def finish(model: nn.Module, head: str, weights_path: Optional[str], pretrained: bool,
           bn_momentum: Optional[float], freeze_features: bool) -> nn.Module:
    """What every library's builder does last: local weights, BatchNorm momentum, frozen features."""
    if weights_path:
        load_pretrained(model, read_state_dict(weights_path), head + ".", weights_path)
    set_bn_momentum(model, bn_momentum, pretrained or bool(weights_path))
    if freeze_features:
        for n, p in model.named_parameters():
            if not n.startswith(head + "."):
                p.requires_grad_(False)
    return model
