"""Networks chosen by name in YAML (`model.backbone`), each registered by a decorator beside its code, as timm's
`@register_model` does:

    from lightning_modules.backbones import register_backbone

    @register_backbone("tiny_cnn")
    def tiny_cnn(num_classes: int, width: int = 16) -> nn.Module: ...

A builder takes num_classes and the keyword arguments of model.backbone_args, and returns the network. Every module
in this package is imported on the first lookup, so a new built-in backbone is one new file here. A module of your
own is named in YAML as `<module>.<name>` (`backbone: my_backbones.tiny_cnn`) and imported on first use.
Families of names behind a prefix (`timm:<name>`, `tv:<name>`) are registered with `register_family`; torchvision's
classification models also answer to their bare names.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Callable, Iterable

from torch import nn

from lightning_modules.backbones.weights import (CLASSIFIER_ATTR, PRETRAINED_INPUT_ATTR, PretrainedInput,  # noqa: F401
                                                 pretrained_input)

BACKBONES: dict[str, Callable[..., nn.Module]] = {}


@dataclass(frozen=True)
class Family:
    """Names behind a prefix, built by one function: build(name, num_classes, **backbone_args)."""

    prefix: str
    build: Callable[..., nn.Module]
    names: Callable[[], Iterable[str]]  # the names it knows (for suggestions), prefix not included
    bare: bool = False  # its names also answer without the prefix, after the registered backbones


FAMILIES: dict[str, Family] = {}
_builtins_loaded = False


def register_backbone(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register `builder(num_classes, **backbone_args) -> nn.Module` under `name` (model.backbone)."""
    def register(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        known = BACKBONES.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (builder.__module__, builder.__qualname__):
            raise ValueError(f"backbone {name!r} is registered twice ({known.__module__}.{known.__qualname__} and "
                             f"{builder.__module__}.{builder.__qualname__}); give one of them another name")
        BACKBONES[name] = builder
        return builder
    return register


def register_family(prefix: str, names: Callable[[], Iterable[str]], bare: bool = False):
    """Register `build(name, num_classes, **backbone_args)` for every `<prefix><name>` (e.g. "timm:")."""
    def register(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        FAMILIES[prefix] = Family(prefix, build, names, bare)
        return build
    return register


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")


def available_backbones() -> list[str]:
    """The registered names and the family prefixes (`timm:<name>`), for messages and docs."""
    _load_builtins()
    return sorted(BACKBONES) + [f"{p}<name>" for p in sorted(FAMILIES)]


def _user_backbone(name: str) -> Callable[..., nn.Module] | None:
    """`my_backbones.tiny_cnn`: import my_backbones, whose @register_backbone("tiny_cnn") registers it."""
    module, _, short = name.rpartition(".")
    if not module:
        return None
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):  # the module itself is missing, not one it imports
            raise ValueError(f"backbone {name!r} (model.backbone) names the module {module!r}, which is not on the "
                             "Python path; put its file in the folder you run from or add that folder to PYTHONPATH") from None
        raise
    if short not in BACKBONES:
        raise ValueError(f"module {module!r} registers no backbone {short!r} (model.backbone {name!r}); decorate its "
                         f"builder with @register_backbone({short!r}) from lightning_modules.backbones")
    return BACKBONES[short]


def module_to_import(name: str) -> str | None:
    """The module build_backbone would import to find `name` (`my_backbones` for `my_backbones.tiny_cnn`); None for
    a registered name, a family's or a bare torchvision name, which import nothing of the user's."""
    _load_builtins()
    if "." not in name or name in BACKBONES or any(name.startswith(p) for p in FAMILIES):
        return None
    return name.rpartition(".")[0]


def _check_args(name: str, builder: Callable[..., nn.Module], kwargs: dict) -> None:
    params = inspect.signature(builder).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = set(params) - {"num_classes"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"backbone {name!r} does not take {unknown}; it accepts {sorted(accepted)} (model.backbone_args)")


def build_backbone(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a network by name: a registered backbone, `<prefix><name>` of a family, a bare torchvision name, or
    `<module>.<name>` of your own module. Unknown names or arguments are one clear sentence."""
    _load_builtins()
    builder = BACKBONES.get(name)
    if builder is None:
        family = next((f for p, f in FAMILIES.items() if name.startswith(p)), None)
        if family is not None:
            return family.build(name[len(family.prefix):], num_classes, **kwargs)
        family = next((f for f in FAMILIES.values() if f.bare and name in set(f.names())), None)
        if family is not None:
            return family.build(name, num_classes, **kwargs)
        builder = _user_backbone(name) if "." in name else None
    if builder is None:
        raise ValueError(unknown_backbone(name))
    _check_args(name, builder, kwargs)
    return builder(num_classes=num_classes, **kwargs)


def unknown_backbone(name: str) -> str:
    """The one sentence for a backbone name that nothing registered, with the close matches."""
    bare = [n for f in FAMILIES.values() if f.bare for n in f.names()]
    close = difflib.get_close_matches(name, sorted(set(BACKBONES) | set(bare)), n=5, cutoff=0.6)
    families = ", ".join(f"{p}<name>" for p in sorted(FAMILIES))
    return (f"unknown backbone {name!r} (model.backbone); " + (f"did you mean {', '.join(close)}? " if close else "")
            + f"use one of {sorted(BACKBONES)}, a torchvision classifier (torchvision.models.list_models()), "
            f"{families}, or <your module>.<name> registered with @register_backbone")


# The attribute that holds the head in torchvision's classification models (heads: ViT, head: Swin).
TORCHVISION_HEADS = ("classifier", "fc", "heads", "head")


def head_name(model: nn.Module, head_attr: str) -> str:
    """The dotted name of the last Linear (or 1x1 Conv, SqueezeNet) inside the head attribute."""
    head = getattr(model, head_attr)
    if isinstance(head, (nn.Linear, nn.Conv2d)):
        return head_attr
    layers = [n for n, m in head.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise ValueError(f"{type(model).__name__}.{head_attr} holds no Linear or Conv2d classifier layer")
    return f"{head_attr}.{layers[-1]}"


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
            return head_name(model, attr)
    raise ValueError(f"{type(model).__name__} has no classifier layer this project knows by name "
                     f"(none of {list(TORCHVISION_HEADS)}); set the attribute {CLASSIFIER_ATTR!r} on it to the "
                     "dotted name of its last layer")


def classifier_layer(model: nn.Module) -> nn.Module:
    """The final class-scoring layer, found by name (its outputs are the classes; pruning must keep them)."""
    return model.get_submodule(classifier_name(model))
