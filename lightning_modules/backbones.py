"""Networks chosen by name in YAML (`model.backbone`): the project's own (BACKBONES), any torchvision
classification model by its name, and `timm:<name>` where the optional timm package is installed.

A new own backbone is one function here plus one line in BACKBONES.
"""

from __future__ import annotations

import difflib
import inspect
import os
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2 as tv_mobilenet_v2


# --- MobileNetV2 (seed 1) --------------------------------------------------------------------------

def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights_path {path!r} does not exist; give the path of a saved state dict (torch.save(model.state_dict(), path))")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"weights_path {path!r} does not hold a state dict of tensors")
    return obj


def _load_pretrained(model: nn.Module, state: dict[str, torch.Tensor], head_prefix: str, source: str) -> None:
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


def mobilenet_v2(
    num_classes: int,
    width_mult: float = 1.0,
    dropout: float = 0.2,
    freeze_features: bool = False,
    weights: Optional[str] = None,
    weights_path: Optional[str] = None,
) -> nn.Module:
    """torchvision's MobileNetV2 with its head sized for num_classes.

    weights: a torchvision weight name (IMAGENET1K_V1, IMAGENET1K_V2), fetched through torchvision's cache;
    weights_path: a local state-dict file (works offline). freeze_features: train only the classifier.
    """
    if weights and weights_path:
        raise ValueError("give either weights (a torchvision weight name) or weights_path (a local file), not both")
    if freeze_features and not (weights or weights_path):
        raise ValueError("backbone_args.freeze_features is true but neither weights nor weights_path is set: frozen "
                         "random features learn nothing; give weights or weights_path, or set freeze_features false")
    model = tv_mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult, dropout=dropout)
    if weights:
        try:
            enum = MobileNet_V2_Weights[weights]
        except KeyError:
            raise ValueError(f"unknown MobileNetV2 weights {weights!r}; choose one of {[w.name for w in MobileNet_V2_Weights]}") from None
        try:
            state = enum.get_state_dict(progress=False)
        except Exception as exc:  # offline machines fail in many ways (URLError, socket errors, SSL)
            raise RuntimeError(
                f"could not download the torchvision weights {weights} ({type(exc).__name__}); download "
                f"{enum.url} on a machine with internet and set backbone_args.weights_path to the file"
            ) from None
        _load_pretrained(model, state, "classifier.", f"torchvision {weights}")
    elif weights_path:
        _load_pretrained(model, _read_state_dict(weights_path), "classifier.", weights_path)
    if freeze_features:
        for p in model.features.parameters():
            p.requires_grad_(False)
    return model


# --- CIFAR-style ResNet (seed 2) -------------------------------------------------------------------

class BasicBlock(nn.Module):
    """Two 3x3 convs with a projection shortcut (1x1 conv + BN) where shape changes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images: 3x3 stride-1 stem, no max-pool, four stages of width w, 2w, 4w, 8w."""

    def __init__(self, num_classes: int, num_blocks: Sequence[int] = (2, 2, 2, 2), width: int = 64) -> None:
        super().__init__()
        if len(num_blocks) != 4 or any(n < 1 for n in num_blocks):
            raise ValueError(f"num_blocks needs four positive block counts, got {list(num_blocks)}")
        if width < 1:
            raise ValueError(f"width must be a positive channel count, got {width}")
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, in_planes = [], width
        for i, (blocks, stride) in enumerate(zip(num_blocks, (1, 2, 2, 2))):
            planes = width * 2**i
            layers = []
            for s in [stride] + [1] * (blocks - 1):
                layers.append(BasicBlock(in_planes, planes, s))
                in_planes = planes * BasicBlock.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(num_classes: int, num_blocks: Sequence[int] = (2, 2, 2, 2), width: int = 64) -> nn.Module:
    """The custom CIFAR-style ResNet of seed 2 (ResNet-18 layout at num_blocks [2,2,2,2], width 64)."""
    return CifarResNet(num_classes, num_blocks=tuple(num_blocks), width=width)


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "mobilenet_v2": mobilenet_v2,
    "resnet": resnet,
}

# The attribute that holds the head in torchvision's classification models (heads: ViT, head: Swin).
TORCHVISION_HEADS = ("classifier", "fc", "heads", "head")
# Set on every network built here: the dotted name of its final class-scoring layer, so pruning, freezing and
# weight loading never have to guess it (a plain string attribute: not a parameter, not in the state dict).
CLASSIFIER_ATTR = "edgecls_classifier"
TIMM_PREFIX = "timm:"


def torchvision_names() -> list[str]:
    import torchvision.models

    return list(torchvision.models.list_models(module=torchvision.models))  # classification models only


def _check_weights_args(name: str, weights: Optional[str], weights_path: Optional[str], freeze_features: bool) -> None:
    if weights and weights_path:
        raise ValueError("give either weights (a pretrained weight name) or weights_path (a local file), not both")
    if freeze_features and not (weights or weights_path):
        raise ValueError("backbone_args.freeze_features is true but neither weights nor weights_path is set: frozen "
                         "random features learn nothing; give weights or weights_path, or set freeze_features false")


def _head_name(model: nn.Module, head_attr: str) -> str:
    """The dotted name of the last Linear (or 1x1 Conv, SqueezeNet) inside the head attribute."""
    head = getattr(model, head_attr)
    if isinstance(head, (nn.Linear, nn.Conv2d)):
        return head_attr
    layers = [n for n, m in head.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise ValueError(f"{type(model).__name__}.{head_attr} holds no Linear or Conv2d classifier layer")
    return f"{head_attr}.{layers[-1]}"


def _freeze_all_but(model: nn.Module, keep_prefix: str) -> None:
    for n, p in model.named_parameters():
        if not n.startswith(keep_prefix):
            p.requires_grad_(False)


def _set_bn_momentum(model: nn.Module, momentum: Optional[float], pretrained: bool) -> None:
    """MobileNetV3 and EfficientNet ship BatchNorm momentum 0.01, tuned for ImageNet's thousands of steps an
    epoch: trained from scratch on a small set, the running statistics are still mostly their 0/1 start after
    hundreds of steps and eval-mode accuracy sits at chance while train accuracy climbs. From scratch the
    PyTorch default 0.1 is used unless bn_momentum is given; pretrained statistics keep the library's value."""
    if momentum is None and pretrained:
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None:
            m.momentum = momentum if momentum is not None else max(m.momentum, 0.1)


def _build_error(name: str, exc: Exception) -> ValueError:
    return ValueError(f"backbone {name!r} could not be built from model.backbone_args ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else exc!r}); check the argument names against the "
                      "model's own constructor")


def torchvision_backbone(name: str, num_classes: int, weights: Optional[str] = None, weights_path: Optional[str] = None,
                         dropout: Optional[float] = None, freeze_features: bool = False,
                         bn_momentum: Optional[float] = None, **model_args) -> nn.Module:
    """Any torchvision classification model by name, its head sized for num_classes.

    weights: a weight-enum name of that model (IMAGENET1K_V1, DEFAULT), fetched through torchvision's cache;
    weights_path: a local state dict or checkpoint (weights_only=True). dropout: where the model has one.
    freeze_features: train only the head. bn_momentum: every BatchNorm's (see _set_bn_momentum). Other arguments
    go to the model's constructor (e.g. width_mult).
    """
    import torchvision.models

    _check_weights_args(name, weights, weights_path, freeze_features)
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
        raise _build_error(name, exc) from None
    head_attr = next(a for a in TORCHVISION_HEADS if hasattr(model, a))
    setattr(model, CLASSIFIER_ATTR, _head_name(model, head_attr))
    if weights:
        enum_cls = torchvision.models.get_model_weights(name)
        try:
            enum = enum_cls[weights]
        except KeyError:
            raise ValueError(f"unknown {name} weights {weights!r}; choose one of {[w.name for w in enum_cls]} or "
                             "DEFAULT (model.backbone_args.weights)") from None
        try:
            state = enum.get_state_dict(progress=False)
        except Exception as exc:  # offline machines fail in many ways (URLError, socket errors, SSL)
            raise RuntimeError(
                f"could not download the torchvision weights {name} {enum.name} ({type(exc).__name__}); download "
                f"{enum.url} on a machine with internet and set backbone_args.weights_path to the file") from None
        _load_pretrained(model, state, head_attr + ".", f"torchvision {name} {enum.name}")
    return _finish(model, head_attr, weights_path, bool(weights), bn_momentum, freeze_features)


def _finish(model: nn.Module, head: str, weights_path: Optional[str], pretrained: bool,
            bn_momentum: Optional[float], freeze_features: bool) -> nn.Module:
    """What every library's builder does last: local weights, BatchNorm momentum, frozen features."""
    if weights_path:
        _load_pretrained(model, _read_state_dict(weights_path), head + ".", weights_path)
    _set_bn_momentum(model, bn_momentum, pretrained or bool(weights_path))
    if freeze_features:
        _freeze_all_but(model, head + ".")
    return model


def _timm():
    try:
        import timm
    except ImportError:
        raise ValueError("timm: backbones need the optional timm package; pip install 'edgecls[timm]' (or pip install "
                         "timm) and run again") from None
    return timm


def timm_backbone(name: str, num_classes: int, weights: Optional[str] = None, weights_path: Optional[str] = None,
                  dropout: Optional[float] = None, freeze_features: bool = False,
                  bn_momentum: Optional[float] = None, **model_args) -> nn.Module:
    """Any timm model (`timm:<name>`), its classifier sized for num_classes.

    weights: a timm pretrained tag ("default" or e.g. "ra_in1k"), fetched through the Hugging Face cache;
    weights_path: a local state dict or checkpoint (weights_only=True). dropout: timm's drop_rate before the
    classifier. freeze_features: train only the classifier. bn_momentum: as for torchvision models. Other
    arguments go to timm.create_model.
    """
    timm = _timm()
    _check_weights_args(name, weights, weights_path, freeze_features)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(f"unknown timm model {name!r}" + (f"; did you mean {', '.join('timm:' + c for c in close)}?"
                         if close else "; list them with python -c \"import timm; print(timm.list_models('*mobile*'))\""))
    if dropout is not None:
        model_args["drop_rate"] = dropout
    full = name if not weights or weights == "default" else f"{name}.{weights}"
    try:
        model = timm.create_model(full, pretrained=bool(weights), num_classes=num_classes, **model_args)
    except TypeError as exc:
        raise _build_error(f"timm:{name}", exc) from None
    except Exception as exc:  # noqa: BLE001 (hub downloads fail in many ways offline; unknown tags raise RuntimeError)
        if not weights:
            raise
        raise RuntimeError(f"could not load the timm weights {full} ({type(exc).__name__}); download them on a machine "
                           "with internet (timm.create_model(name, pretrained=True) then torch.save(model.state_dict(), "
                           "path)) and set backbone_args.weights_path to the file") from None
    head = model.pretrained_cfg.get("classifier") or ""
    head = head if isinstance(head, str) else head[0]
    if not head or not isinstance(model.get_submodule(head), (nn.Linear, nn.Conv2d)):
        raise ValueError(f"timm:{name} has no single classifier layer this project can resize (pretrained_cfg classifier "
                         f"{model.pretrained_cfg.get('classifier')!r}); pick another model")
    setattr(model, CLASSIFIER_ATTR, head)
    return _finish(model, head, weights_path, bool(weights), bn_momentum, freeze_features)


def _check_args(name: str, builder: Callable[..., nn.Module], kwargs: dict) -> None:
    accepted = set(inspect.signature(builder).parameters) - {"num_classes"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"backbone {name!r} does not take {unknown}; it accepts {sorted(accepted)} (model.backbone_args)")


def build_backbone(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a network by name: the project's own (BACKBONES), then any torchvision classification model, then
    `timm:<name>`. Unknown names or arguments are one clear sentence."""
    if name in BACKBONES:
        builder = BACKBONES[name]
        _check_args(name, builder, kwargs)
        model = builder(num_classes=num_classes, **kwargs)
    elif name.startswith(TIMM_PREFIX):
        return timm_backbone(name[len(TIMM_PREFIX):], num_classes, **kwargs)
    elif name in torchvision_names():
        return torchvision_backbone(name, num_classes, **kwargs)
    else:
        known = sorted(set(BACKBONES) | set(torchvision_names()))
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        raise ValueError(f"unknown backbone {name!r} (model.backbone); "
                         + (f"did you mean {', '.join(close)}? " if close else "")
                         + f"use one of {sorted(BACKBONES)}, a torchvision classifier (torchvision.models.list_models()) "
                         "or timm:<name>")
    return model


def classifier_name(model: nn.Module) -> str:
    """The dotted name of the layer whose outputs are the classes."""
    recorded = getattr(model, CLASSIFIER_ATTR, None)
    if isinstance(recorded, str):
        return recorded
    head = getattr(model, "pretrained_cfg", {}).get("classifier") if hasattr(model, "pretrained_cfg") else None
    if isinstance(head, str):
        return head
    for attr in TORCHVISION_HEADS:
        if isinstance(getattr(model, attr, None), nn.Module):
            return _head_name(model, attr)
    raise ValueError(f"{type(model).__name__} has no classifier layer this project knows by name "
                     f"(none of {list(TORCHVISION_HEADS)})")


def classifier_layer(model: nn.Module) -> nn.Module:
    """The final class-scoring layer, found by name (its outputs are the classes; pruning must keep them)."""
    return model.get_submodule(classifier_name(model))
