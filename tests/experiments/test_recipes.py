"""Every recipe in experiments/ as a user runs it: `python main.py fit --config <recipe>` on small real images, fit-end
chain included (ONNX, INT8 with the recipe's calibration method, TensorRT skipped here, the verified bundle).

quickstart.yaml and quickstart_pruned.yaml are covered by tests/callbacks/test_bundle.py and test_pruning.py, and
imagefolder_scratch.yaml by test_recipe_imagefolder_scratch.py, phone.yaml by tests/phone/, the CIFAR recipes by
test_recipes_cifar.py (both here, sharing recipe_helpers.py). Each recipe here is shrunk only where it
cannot run on 2 CPU cores and no network in seconds: fewer epochs and images, small inputs, and random MobileNetV2
weights from a local file in place of the ImageNet download. Each override says why where it is made; everything
else (model, optimizer, schedule, augmentation, calibration method, callbacks and their order) is the recipe's.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import yaml

from edgecls_testing import printed_top1, run_main
from recipe_data import write_image_folder
from recipe_helpers import (FAST_CLI, NO_WORKERS, check_bundle, cpu_seconds, measured_quickly,  # noqa: F401 (cpu_seconds: autouse)
                            onnx_initializers, random_mobilenet_v2, shrunk_recipe)

# --- the recipes --------------------------------------------------------------------------------------------------

@pytest.mark.slow  # a recipe end to end, fit-end chain included
def test_imagefolder_recipe_on_real_scans_and_photos_with_percentile_calibration_and_a_ragged_last_batch(tmp_path, cli):
    root = tmp_path / "my_images"
    total = write_image_folder(root, digits_per_class=27, photo_crops=27)  # 297 images, 11 classes
    weights = random_mobilenet_v2(tmp_path)
    recipe = measured_quickly(shrunk_recipe(tmp_path, "imagefolder.yaml", {
        "trainer": {"max_epochs": 1},  # 50 epochs of 224x224 is hours on 2 cores
        # ImageNet weights cannot be downloaded here: the same network from a local file (random values)
        "model": {"lr_scheduler": {"init_args": {"T_max": 1}}, "backbone_args": {"weights": None, "weights_path": str(weights)}},
        # 32x32 crops of a 40x40 resize instead of 224 of 256: the same transforms on 50x fewer pixels
        "data": {"source": {"init_args": {"root": str(root)}}, "image_size": 40, "crop_size": 32,
                 "cache_dir": str(tmp_path / "cache"),
                 **NO_WORKERS},
    }))
    cli(["fit", "--config", recipe, *FAST_CLI], tmp_path)

    run = tmp_path / "runs" / "imagefolder" / "version_0"
    train = (run / "split" / "train.jsonl").read_text().splitlines()
    assert 0.55 * total < len(train) < 0.65 * total
    # calibration (every train image: 512 asked) ends in a short batch, of 16 and of the batch size 32:
    # onnxruntime's percentile calibrator used to crash on it ("inhomogeneous shape")
    assert len(train) % 16 and len(train) % 32
    classes = [f"digit_{d}" for d in range(10)] + ["photo"]
    report = check_bundle(run, recipe, classes, [32, 32])
    for step in ("Int8Quantization", "CpuInt8Quantization"):
        if step in report["steps"]:
            assert report["steps"][step]["num_samples"] == len(train)
    # No accuracy bar: with the recipe's frozen features, random weights leave only a linear head on random
    # features to train, for one epoch.


@pytest.mark.slow  # a recipe end to end, fit-end chain included
def test_imagefolder_gpu_recipe_runs_on_a_cpu_with_its_workers_store_bf16_and_channels_last(tmp_path, cli):
    """The GPU recipe as shipped (bf16-mixed, channels_last, workers auto, the decoded store, the whole chain), on
    this CPU: it must run anywhere, only slower. Its speed on a GPU is benchmarks/gpu_throughput.py's."""
    root = tmp_path / "my_images"
    write_image_folder(root, digits_per_class=16, photo_crops=24)  # 184 images, 11 classes
    recipe = measured_quickly(shrunk_recipe(tmp_path, "imagefolder_gpu.yaml", {
        "trainer": {"max_epochs": 2},  # 30 epochs of 224x224 is hours on 2 cores
        # 32x32 instead of 224x224 and batch 32 instead of 128: the same pipeline on 49x fewer pixels
        "data": {"source": {"init_args": {"root": str(root)}}, "image_size": 32, "batch_size": 32,
                 "cache_dir": str(tmp_path / "cache")},
    }))
    assert yaml.safe_load(recipe.read_text())["data"]["num_workers"] == "auto"
    proc = cli(["fit", "--config", recipe, *FAST_CLI], tmp_path)

    run = tmp_path / "runs" / "imagefolder_gpu" / "version_0"
    classes = [f"digit_{d}" for d in range(10)] + ["photo"]
    check_bundle(run, recipe, classes, [32, 32])
    assert "decoded store: 184 images decoded once at 32x32" in proc.stderr
    stores = list((tmp_path / "cache").glob("decoded-*/images.npy"))
    assert len(stores) == 1 and np.load(stores[0], mmap_mode="r").shape == (184, 32, 32, 3)
    assert "bf16-mixed" in proc.stdout  # the epoch lines name the precision trained in


@pytest.fixture(scope="module")
def masks_fit(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("masks")
    recipe = shrunk_recipe(tmp_path, "quickstart_masks.yaml", {
        # 3 epochs at 16x16 instead of 10 at 32x32 (a minute on a quiet machine): 2 to learn, 1 to fine-tune
        "trainer": {"max_epochs": 3},
        "data": {"image_size": 16, "cache_dir": str(tmp_path / "cache")},
    })
    config = yaml.safe_load(recipe.read_text())
    pruning = next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith(("ModelPruning", "MaskPruning")))
    pruning["init_args"]["apply_pruning"]["init_args"]["epochs"] = [1]  # at the end of epoch 1 of 3, not 4 of 10
    recipe.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = run_main(["fit", "--config", recipe, *FAST_CLI], tmp_path, timeout=600)
    return tmp_path / "runs" / "quickstart_masks" / "version_0", proc


@pytest.mark.slow  # a recipe end to end, fit-end chain included
def test_quickstart_masks_recipe_zeroes_half_the_weights_and_exports_them_dense(masks_fit):
    run, proc = masks_fit
    assert re.search(r"Pruned: 0/\d+ \(0\.00%\) -> \d+/\d+ \(50\.00%\)", proc.stdout + proc.stderr)
    # made permanent: the checkpoints hold plain weights, no weight_orig / weight_mask pairs
    best = next((run / "checkpoints").glob("epoch*.ckpt"))
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    assert not [k for k in state if k.endswith(("_orig", "_mask"))]
    # its one fit-end step, ONNXExport, writes model.onnx (no bundle: the recipe lists no DeployBundle): as many
    # weights as unpruned, half of them zeros
    onnx_files = sorted(run.rglob("*.onnx"))
    assert [p.name for p in onnx_files] == ["model.onnx"], onnx_files
    from onnx import numpy_helper

    kernels = [numpy_helper.to_array(i) for i in onnx_initializers(onnx_files[0])]
    zeros = sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
    assert 0.45 < zeros < 0.55, zeros
    assert not (run / "bundle").exists()


@pytest.mark.slow  # a recipe end to end, fit-end chain included
def test_quickstart_masks_recipe_exports_and_tests_a_fine_tuned_network_that_beats_chance(masks_fit):
    _, proc = masks_fit
    assert printed_top1(proc.stdout) > 0.5, proc.stdout[-3000:]  # chance is 0.1
