"""Any timm model as `timm:<name>` (pip install timm), its classifier named by timm's own pretrained_cfg."""

from __future__ import annotations

import difflib
from typing import Optional

from torch import nn

from lightning_modules.backbones import CLASSIFIER_ATTR, register_family
from lightning_modules.backbones.torchvision_zoo import build_error
from lightning_modules.backbones.weights import PRETRAINED_INPUT_ATTR, check_weights_args, finish, timm_input


def timm_names() -> list[str]:
    try:
        import timm
    except ImportError:
        return []
    return list(timm.list_models())


def _timm():
    try:
        import timm
    except ImportError:
        raise ValueError("timm: backbones need the optional timm package; pip install 'edgecls[timm]' (or pip install "
                         "timm) and run again") from None
    return timm


@register_family("timm:", timm_names)
def timm_backbone(name: str, num_classes: int, weights: Optional[str] = None, weights_path: Optional[str] = None,
                  dropout: Optional[float] = None, freeze_features: bool = False,
                  bn_momentum: Optional[float] = None, **model_args) -> nn.Module:
    """Any timm model (`timm:<name>`), its classifier sized for num_classes.

    weights: a timm pretrained tag ("default" or e.g. "ra_in1k"): its pretrained_cfg (mean/std) goes to the data, and
    its tensors come through the Hugging Face cache (a download) unless weights_path gives a local file.
    weights_path: a local state dict or checkpoint (weights_only=True); without weights, the default tag's config.
    dropout: timm's drop_rate before the classifier. freeze_features: train only the classifier. bn_momentum: as
    for torchvision models. Other arguments go to timm.create_model.
    """
    timm = _timm()
    check_weights_args(weights, weights_path, freeze_features)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(f"unknown timm model {name!r}" + (f"; did you mean {', '.join('timm:' + c for c in close)}?"
                         if close else "; list them with python -c \"import timm; print(timm.list_models('*mobile*'))\""))
    if dropout is not None:
        model_args["drop_rate"] = dropout
    full = name if not weights or weights == "default" else f"{name}.{weights}"
    try:
        model = timm.create_model(full, pretrained=bool(weights) and not weights_path, num_classes=num_classes, **model_args)
    except TypeError as exc:
        raise build_error(f"timm:{name}", exc) from None
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
    if weights or weights_path:
        setattr(model, PRETRAINED_INPUT_ATTR, timm_input(model, name))
    return finish(model, head, weights_path, bool(weights), bn_momentum, freeze_features)
