"""The CIFAR recipes in experiments/ as a user runs them, shrunk as test_recipes.py shrinks every recipe (its
docstring says how): resnet_cifar10.yaml and mobilenetv2_cifar100.yaml on real digit scans written in CIFAR's
on-disk format, fit-end chain included. A file of their own, so that the two pytest workers share the recipe runs."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from deploy.bundle import load_bundle
from edgecls_testing import printed_top1
from recipe_data import digits_rgb32, handwritten_digits, write_cifar_of
from recipe_helpers import (FAST_CLI, NO_WORKERS, check_bundle, cpu_seconds, measured_quickly,  # noqa: F401 (cpu_seconds: autouse)
                            onnx_initializers, random_mobilenet_v2, shrunk_recipe)


@pytest.mark.slow  # about 60 s of CPU even shrunk: 3 epochs of a [2,2,2,2] ResNet, pruning, two entropy calibrations
def test_resnet_cifar10_recipe_prunes_channels_mid_fit_calibrates_with_entropy_and_beats_chance(tmp_path, cli):
    x, y = handwritten_digits(per_class=110)
    train, test = np.r_[0:800], np.r_[800:1100]  # 1,100 scans: 600 train, 200 val (held out of train), 300 test
    order = np.random.default_rng(0).permutation(len(y))
    x, y = digits_rgb32(x[order]), y[order]
    write_cifar_of(tmp_path / "data", "cifar10", (x[train], y[train]), (x[test], y[test]), [str(d) for d in range(10)])
    recipe = measured_quickly(shrunk_recipe(tmp_path, "resnet_cifar10.yaml", {
        "trainer": {"max_epochs": 3},  # 30 epochs of CIFAR is hours on 2 cores
        # width 16 instead of 64 (16x fewer MACs); pruning 30 % at round_to 8 (rounded down) leaves 8 channels
        "model": {"backbone_args": {"num_blocks": [2, 2, 2, 2], "width": 16}},
        # 16x16 instead of 32x32 inputs: 4x fewer MACs again; batch 32 instead of 128, so 600 images make 18 steps
        "data": {"source": {"init_args": {"root": str(tmp_path / "data")}}, "image_size": 16, "batch_size": 32,
                 "cache_dir": str(tmp_path / "cache"), **NO_WORKERS},
    }, callbacks={"callbacks.StructuredPruning": {"at_epoch": 1},  # pruned at the start of epoch 1 of 3, not 20 of 30
                  # the recipe's entropy calibration on 128 of the 600 train images instead of 512: its histograms
                  # are the slowest calibration on 2 cores, and the method, not the count, is what is tested
                  "callbacks.Int8Quantization": {"num_samples": 128}}))  # both forms
    proc = cli(["fit", "--config", recipe, *FAST_CLI], tmp_path)

    run = tmp_path / "runs" / "resnet_cifar10" / "version_0"
    report = check_bundle(run, recipe, [str(d) for d in range(10)], [16, 16])
    pruning = report["steps"]["StructuredPruning"]
    assert pruning["epoch"] == 1 and pruning["params_after"] < 0.6 * pruning["params_before"]
    # the bundle is the pruned network: its checkpoint is from after the pruning, and its ONNX holds fewer weights
    checkpoint = load_bundle(run / "bundle").manifest["source"]["checkpoint"]
    assert int(re.search(r"epoch(\d+)", checkpoint).group(1)) >= 1, checkpoint
    weights = sum(int(np.prod(i.dims)) for i in onnx_initializers(run / "bundle" / "model.onnx"))
    assert weights < 0.6 * pruning["params_before"]
    # 3 short epochs at the recipe's lr 1e-3 with s2 augmentation learn little (0.16 here): above chance (0.10) by
    # 2 standard deviations of a 300-image guess, no more
    assert printed_top1(proc.stdout) > 0.13, proc.stdout[-3000:]


def digit_pairs(count_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """100 classes of real scans: class 10a+b is digit a beside digit b, each squeezed to 16x28 in a 32x32 image."""
    x, y = handwritten_digits(per_class=2 * count_per_class)
    halves = np.stack([np.asarray(Image.fromarray(im).resize((16, 28), Image.BILINEAR)) for im in x])
    rng = np.random.default_rng(seed)
    by_digit = [rng.permutation(np.flatnonzero(y == d)) for d in range(10)]
    images, labels = [], []
    for label in range(100):
        tens, units = divmod(label, 10)
        for i in range(count_per_class):
            image = np.zeros((32, 32), np.uint8)
            image[2:30, 0:16] = halves[by_digit[tens][(units * count_per_class + i) % len(by_digit[tens])]]
            image[2:30, 16:32] = halves[by_digit[units][(tens * count_per_class + i) % len(by_digit[units])]]
            images.append(image)
            labels.append(label)
    return np.repeat(np.stack(images)[..., None], 3, axis=3), np.array(labels, np.int64)


@pytest.mark.slow  # a recipe end to end, fit-end chain included
def test_mobilenetv2_cifar100_recipe_with_local_weights_and_percentile_calibration(tmp_path, cli):
    x, y = digit_pairs(count_per_class=8, seed=0)  # 100 classes: 450 train, 150 val, 200 test
    order = np.random.default_rng(1).permutation(len(y))
    x, y = x[order], y[order]
    names = [f"pair_{c:02d}" for c in range(100)]
    write_cifar_of(tmp_path / "data", "cifar100", (x[:600], y[:600]), (x[600:], y[600:]), names)
    weights = random_mobilenet_v2(tmp_path)
    recipe = measured_quickly(shrunk_recipe(tmp_path, "mobilenetv2_cifar100.yaml", {
        "trainer": {"max_epochs": 1},  # 100 epochs of 224x224 CIFAR-100 is days on 2 cores
        # ImageNet weights cannot be downloaded here: the same network from a local file (random values)
        "model": {"lr_scheduler": {"init_args": {"T_max": 1}}, "backbone_args": {"weights": None, "weights_path": str(weights)}},
        # 32x32 (CIFAR's own size) instead of the 224 upscale: 49x fewer pixels through the same network
        "data": {"source": {"init_args": {"root": str(tmp_path / "data")}}, "image_size": 32,
                 "cache_dir": str(tmp_path / "cache"), **NO_WORKERS},
    }, callbacks={"callbacks.Int8Quantization": {"num_samples": 128}}))  # both forms: the recipe's percentile on 128 images
    cli(["fit", "--config", recipe, *FAST_CLI], tmp_path)

    run = tmp_path / "runs" / "mobilenetv2_cifar100" / "version_0"
    report = check_bundle(run, recipe, names, [32, 32])
    assert all("top5" in r for r in report["rows"])  # 100 classes: top-5 is scored too
    # mean_std auto with MobileNetV2 weights: the weights' own ImageNet statistics, not the digit pairs'
    preprocessing = load_bundle(run / "bundle").manifest["preprocessing"]
    assert preprocessing["mean"] == pytest.approx([0.485, 0.456, 0.406]) and preprocessing["std"] == pytest.approx([0.229, 0.224, 0.225])
    # No accuracy bar: frozen random features and one epoch (see the imagefolder test).
