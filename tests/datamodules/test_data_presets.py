"""Augmentation presets and YAML lists build with albumentations 2.x and yield the network's shape and dtype."""

import numpy as np
import pytest
import torch

from datamodules import ImageClassificationDataModule
from datamodules.presets import TRAIN_PRESETS, Preprocessing, build_eval_transform, build_train_transform


@pytest.mark.parametrize("preset", sorted(TRAIN_PRESETS))
@pytest.mark.parametrize("crop", [None, [24, 24]])
def test_every_preset_builds_and_yields_shape_and_dtype(preset, crop):
    pre = Preprocessing(resize=[28, 28], mean=[0.5] * 3, std=[0.25] * 3, crop=crop)
    transform = build_train_transform(preset, pre)
    for shape in ((37, 53, 3), (28, 28, 3), (12, 9, 3)):
        x = transform(image=np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))["image"]
        assert x.dtype == torch.float32 and tuple(x.shape) == (3, *pre.output_size)


def test_yaml_list_of_transforms():
    pre = Preprocessing(resize=[20, 20], mean=[0.5] * 3, std=[0.25] * 3)
    spec = [{"name": "RandomResizedCrop", "size": [20, 20], "scale": [0.5, 1.0]},
            {"class_path": "albumentations.HorizontalFlip", "init_args": {"p": 0.5}},
            {"name": "CoarseDropout", "num_holes_range": [1, 2], "hole_height_range": [0.1, 0.2],
             "hole_width_range": [0.1, 0.2]}]
    x = build_train_transform(spec, pre)(image=np.zeros((30, 40, 3), np.uint8))["image"]
    assert tuple(x.shape) == (3, 20, 20) and x.dtype == torch.float32


@pytest.mark.parametrize("spec, words", [
    ([{"name": "NoSuchTransform"}], "not an albumentations transform"),
    ([{"name": "CoarseDropout", "max_holes": 8}], "does not take"),  # albumentations 1.x argument name
    ([{"name": "HorizontalFlip"}], "network expects"),  # no resize: output size would follow the input
    ("s3", "not one of"),
])
def test_bad_augment_is_one_clear_error(spec, words):
    pre = Preprocessing(resize=[20, 20], mean=[0.5] * 3, std=[0.25] * 3)
    with pytest.raises(ValueError, match=words):
        build_train_transform(spec, pre)


def test_eval_transform_is_deterministic_and_described(tmp_path):
    dm = ImageClassificationDataModule(image_size=24, crop_size=20, interpolation="bicubic", augment="rrc_affine_dropout",
                                       cache_dir=str(tmp_path))
    assert dm.input_size == [20, 20]
    dm.setup("fit")
    described = dm.preprocessing.to_dict()
    assert described["resize"] == [24, 24] and described["crop"] == [20, 20]
    assert described["interpolation"] == "bicubic" and described["color"] == "RGB"
    image = np.random.default_rng(1).integers(0, 256, (31, 17, 3), dtype=np.uint8)
    eval_tf = build_eval_transform(dm.preprocessing)
    assert torch.equal(eval_tf(image=image)["image"], eval_tf(image=image)["image"])
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape[1:] == (3, 20, 20) and x.dtype == torch.uint8 and y.dtype == torch.int64


@pytest.mark.parametrize("preset, mirrors", [("shift_color", False), ("pad_crop_flip", True)])
def test_shift_color_never_mirrors_a_left_to_right_image(preset, mirrors):
    from datamodules.datasets import seed_transform

    pre = Preprocessing(resize=[32, 32], mean=[0.5] * 3, std=[0.25] * 3)
    transform = build_train_transform(preset, pre)
    ramp = np.repeat(np.repeat(np.linspace(0, 255, 40, dtype=np.uint8)[None, :, None], 40, axis=0), 3, axis=2)
    flipped = 0
    for index in range(40):
        seed_transform(transform, 0, 0, index)
        x = transform(image=ramp)["image"]
        flipped += bool(x[:, :, :8].mean() > x[:, :, -8:].mean())
    assert (flipped > 0) == mirrors


@pytest.mark.parametrize("old, new", [("light", "pad_crop_flip"), ("s1", "rrc_flip_jitter"),
                                      ("s2", "rrc_affine_dropout")])
def test_earlier_preset_names_still_work_with_a_one_line_warning(old, new):
    with pytest.warns(FutureWarning, match=rf"^augment preset '{old}' is now called '{new}'; .* write augment: {new}$"):
        dm = ImageClassificationDataModule(augment=old, image_size=16)
    assert dm.augment == dm.hparams.augment == new  # the run's records say the new name
    pre = Preprocessing(resize=[16, 16], mean=[0.5] * 3, std=[0.25] * 3)
    image = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    with pytest.warns(FutureWarning):
        old_transform = build_train_transform(old, pre)
    a, b = old_transform, build_train_transform(new, pre)
    a.set_random_seed(7)
    b.set_random_seed(7)
    assert torch.equal(a(image=image)["image"], b(image=image)["image"])
