"""Networks, one builder function each, chosen by name in YAML (`model.backbone`).

A new backbone is one function here plus one line in BACKBONES.
"""

from __future__ import annotations

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


def build_backbone(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered network by name; unknown names or arguments are one clear sentence."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)} (model.backbone)")
    builder = BACKBONES[name]
    accepted = set(inspect.signature(builder).parameters) - {"num_classes"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"backbone {name!r} does not take {unknown}; it accepts {sorted(accepted)} (model.backbone_args)")
    return builder(num_classes=num_classes, **kwargs)


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The final Linear layer (its outputs are the classes; pruning must keep them)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no Linear classifier layer")
    return linears[-1]
