"""Train and eval transforms side by side (albumentations 2.x), so their difference fits one screen.

The eval transform is the one the deploy bundle records: it is built from a plain description
(``Preprocessing``) that goes into ``manifest.json`` and that ``deploy`` re-implements without torch.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np

from deploy.preprocessing_rules import (IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS,  # noqa: F401 (re-exported)
                                        check_preprocessing, cv2_flag)


class _OnFirstUse:
    """A module imported when one of its names is first used: building the CLI's parser (`main.py --help`) does
    not pay albumentations' 0.3 s import; a DataModule's set-up does, once."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


A = _OnFirstUse("albumentations")
_pytorch = _OnFirstUse("albumentations.pytorch")



@dataclass
class Preprocessing:
    """What the eval transform does, in the words of the bundle manifest (mean/std on the 0-1 scale)."""

    resize: list[int]  # [H, W]
    mean: list[float]
    std: list[float]
    crop: Optional[list[int]] = None  # [H, W] center crop after the resize, or None
    interpolation: str = "bilinear"
    color: str = "RGB"

    def __post_init__(self) -> None:
        check_preprocessing(self.to_dict())  # the rules the bundle manifest is read with on the device

    @property
    def output_size(self) -> list[int]:
        return list(self.crop or self.resize)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalize_to_tensor(mean: Sequence[float], std: Sequence[float], normalize: bool = True) -> list[A.BasicTransform]:
    """The last steps of every pipeline: CHW tensor, float32 normalized, or uint8 (``normalize=False``: the loaders'
    form, normalized by ``BatchNormalizer`` where the batch lands)."""
    if not normalize:
        return [_pytorch.ToTensorV2()]
    return [A.Normalize(mean=list(mean), std=list(std), max_pixel_value=255.0), _pytorch.ToTensorV2()]


def resize_step(pre: Preprocessing) -> A.Resize:
    """The first step of the eval transform, and what the decoded store holds of each file."""
    return A.Resize(*pre.resize, interpolation=cv2_flag(pre.interpolation))


def build_eval_transform(pre: Preprocessing, normalize: bool = True) -> A.Compose:
    """Resize (+ optional center crop) + normalize: nothing random."""
    steps: list[A.BasicTransform] = [resize_step(pre)]
    if pre.crop:
        steps.append(A.CenterCrop(*pre.crop))
    return A.Compose(steps + normalize_to_tensor(pre.mean, pre.std, normalize))


class BatchNormalizer:
    """uint8 NCHW batch -> float32 normalized, on whatever device the batch is (the GPU after transfer).

    The arithmetic is the device's (deploy.preprocess.Preprocessor): (v - mean*255) * (1 / (std*255)) in float32 with
    the constants rounded from float64, so a batch normalized here is bit-identical to the bundle's preprocessing.
    Loaders move uint8 (a quarter of float32's bytes to collate, pin and copy) and the GPU does the arithmetic."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        import torch

        self._offset = torch.tensor(np.asarray(mean, np.float64) * 255.0, dtype=torch.float32).view(1, 3, 1, 1)
        self._scale = torch.tensor(1.0 / (np.asarray(std, np.float64) * 255.0), dtype=torch.float32).view(1, 3, 1, 1)
        self._on: dict = {}

    def __call__(self, x):
        if x.is_floating_point():  # already normalized (a batch from somewhere else)
            return x
        if x.device not in self._on:
            self._on[x.device] = (self._offset.to(x.device), self._scale.to(x.device))
        offset, scale = self._on[x.device]
        return (x.float() - offset) * scale

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_on": {}}


# --- train transforms -------------------------------------------------------------------------------------------
# Each preset maps (Preprocessing) -> the random steps that replace the eval transform's Resize/CenterCrop; every
# train pipeline ends with the same Normalize + ToTensorV2 as eval, so only the geometry/color jitter differs.

def _resize_steps(pre: Preprocessing) -> list[A.BasicTransform]:
    steps: list[A.BasicTransform] = [resize_step(pre)]
    if pre.crop:
        steps.append(A.CenterCrop(*pre.crop))
    return steps


def _pad_crop_flip(pre: Preprocessing) -> list[A.BasicTransform]:
    """CIFAR-style pad + random crop + flip: for small images, where a RandomResizedCrop destroys the object."""
    h, w = pre.output_size
    pad = max(2, round(min(h, w) / 8))  # 4 px at 32 px, the classic CIFAR recipe
    return _resize_steps(pre) + [
        A.PadIfNeeded(min_height=h + 2 * pad, min_width=w + 2 * pad, border_mode=cv2.BORDER_CONSTANT, fill=0),
        A.RandomCrop(height=h, width=w),
        A.HorizontalFlip(p=0.5),
    ]


def _shift_color(pre: Preprocessing) -> list[A.BasicTransform]:
    """Pad + random crop (a shift of up to 1/8 of the side) + mild brightness/contrast/saturation: no flip, no
    rotation, so it is safe for classes that a mirror or a turn changes (digits, text, left/right, arrows)."""
    h, w = pre.output_size
    pad = max(2, round(min(h, w) / 8))
    return _resize_steps(pre) + [
        A.PadIfNeeded(min_height=h + 2 * pad, min_width=w + 2 * pad, border_mode=cv2.BORDER_CONSTANT, fill=0),
        A.RandomCrop(height=h, width=w),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.0, p=0.8),
    ]


def _rrc_flip_jitter(pre: Preprocessing) -> list[A.BasicTransform]:
    """torchvision's ImageNet training crop: RandomResizedCrop + flip + ColorJitter(brightness, contrast) on every
    image."""
    return [
        A.RandomResizedCrop(size=tuple(pre.output_size), interpolation=cv2_flag(pre.interpolation)),
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.0, hue=0.0, p=1.0),
    ]


def _rrc_affine_dropout(pre: Preprocessing) -> list[A.BasicTransform]:
    """RandomResizedCrop, transpose and both flips, a shift/scale/rotate, hue/saturation/brightness/contrast jitter
    and coarse dropout: strong augmentation for photos whose classes a turn or a mirror does not change.

    ShiftScaleRotate's defaults (shift 0.0625, scale 0.1, rotate 45) become Affine. The seed's HSV limits (0.2)
    were torchvision-style fractions that are no-ops on albumentations' 0-180/0-255 scales, so the library
    defaults are used. CoarseDropout's 1.x "8 holes of 32 px at 224" becomes 1-8 holes of 5-15 % of the side.
    """
    h, w = pre.output_size
    return [
        A.RandomResizedCrop(size=(h, w), interpolation=cv2_flag(pre.interpolation)),
        A.Transpose(p=0.5) if h == w else A.NoOp(),  # a transpose of a non-square crop would change the shape
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1), rotate=(-45, 45),
                 interpolation=cv2_flag(pre.interpolation), border_mode=cv2.BORDER_CONSTANT, p=0.5),
        A.HueSaturationValue(hue_shift_limit=20, sat_shift_limit=30, val_shift_limit=20, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=(-0.1, 0.1), contrast_limit=(-0.1, 0.1), p=0.5),
        A.CoarseDropout(num_holes_range=(1, 8), hole_height_range=(0.05, 0.15), hole_width_range=(0.05, 0.15),
                        fill=0, p=0.5),
    ]


TRAIN_PRESETS = {"none": _resize_steps, "pad_crop_flip": _pad_crop_flip, "shift_color": _shift_color,
                 "rrc_flip_jitter": _rrc_flip_jitter, "rrc_affine_dropout": _rrc_affine_dropout}
PRESET_ALIASES = {"light": "pad_crop_flip", "s1": "rrc_flip_jitter", "s2": "rrc_affine_dropout"}  # earlier names


def preset_name(name: str) -> str:
    """A preset name, or an earlier alias of one (warned about once), -> the preset's name; else one sentence."""
    if name in PRESET_ALIASES:
        new = PRESET_ALIASES[name]
        warnings.warn(f"augment preset {name!r} is now called {new!r}; the old name still works but will go, so "
                      f"write augment: {new}", FutureWarning, stacklevel=2)
        return new
    if name not in TRAIN_PRESETS:
        raise ValueError(f"augment preset {name!r} is not one of {list(TRAIN_PRESETS)}; or give a list of "
                         "albumentations transforms")
    return name


def _as_tuples(value: Any) -> Any:
    # YAML has no tuples; albumentations 2.x range arguments are typed as tuples.
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _as_tuples(v) for k, v in value.items()}
    return value


def transform_from_spec(spec: dict[str, Any]) -> A.BasicTransform:
    """One YAML entry -> one albumentations transform.

    Accepts ``{name: HorizontalFlip, p: 0.5}`` or ``{class_path: albumentations.HorizontalFlip, init_args: {p: 0.5}}``.
    """
    spec = dict(spec)
    if "class_path" in spec:
        name = str(spec.pop("class_path")).rsplit(".", 1)[-1]
        args = dict(spec.pop("init_args", None) or {})
        args.update(spec)
    elif "name" in spec:
        name = str(spec.pop("name"))
        args = spec
    else:
        raise ValueError(f"augment entry {spec} needs a 'name' (an albumentations transform such as HorizontalFlip)")
    cls = getattr(A, name, None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
        raise ValueError(f"augment entry {name!r} is not an albumentations transform; check the spelling against "
                         f"albumentations {A.__version__}")
    params = inspect.signature(cls).parameters
    unknown = [k for k in args if k not in params]
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise ValueError(f"augment entry {name} does not take {unknown} in albumentations {A.__version__}; "
                         f"valid arguments: {[p for p in params if p not in ('self', 'args', 'kwargs')]}")
    if name in ("Resize", "RandomResizedCrop", "Affine", "Rotate", "SafeRotate", "LongestMaxSize",
                "SmallestMaxSize") and isinstance(args.get("interpolation"), str):
        args["interpolation"] = cv2_flag(args["interpolation"])
    return cls(**_as_tuples(args))


def build_train_transform(augment: Union[str, Sequence[dict[str, Any]]], pre: Preprocessing,
                          normalize: bool = True) -> A.Compose:
    """A named preset (one of ``TRAIN_PRESETS``) or a YAML list of transforms, then normalize.

    A list is used as written; it must turn an image of any size into ``pre.output_size`` (checked here on two
    blank images, so a wrong list fails at setup, not in a worker).
    """
    if isinstance(augment, str):
        steps = TRAIN_PRESETS[preset_name(augment)](pre)
    else:
        steps = [transform_from_spec(s) for s in augment]
        h, w = pre.resize
        for probe in ((h + 7, w + 5), (max(1, h // 2), max(1, w // 2))):  # real images come in any size
            try:
                out = A.Compose(steps)(image=np.zeros((*probe, 3), np.uint8))["image"].shape[:2]
            except Exception as exc:  # noqa: BLE001 (any failure here is a bad list, said in one sentence)
                raise ValueError(f"the augment list fails on a {list(probe)} image ({exc}); start it with a "
                                 "Resize or RandomResizedCrop") from None
            if list(out) != list(pre.output_size):
                raise ValueError(f"the augment list turns a {list(probe)} image into {list(out)}, but the network "
                                 f"expects {pre.output_size}; end the list with a crop or Resize to that size")
    return A.Compose(steps + normalize_to_tensor(pre.mean, pre.std, normalize))
