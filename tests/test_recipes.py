"""Every recipe in experiments/ as a user runs it: `python main.py fit --config <recipe>` on small real images, fit-end
chain included (ONNX, INT8 with the recipe's calibration method, TensorRT skipped here, the verified bundle).

quickstart.yaml and quickstart_pruned.yaml are covered by tests/callbacks/test_bundle.py and test_pruning.py, and
imagefolder_scratch.yaml by tests/test_recipe_imagefolder_scratch.py, phone.yaml by tests/phone/, the CIFAR recipes by
tests/test_recipes_cifar.py (with this file's helpers). Each recipe here is shrunk only where it
cannot run on 2 CPU cores and no network in seconds: fewer epochs and images, small inputs, and random MobileNetV2
weights from a local file in place of the ImageNet download. Each override says why where it is made; everything
else (model, optimizer, schedule, augmentation, calibration method, callbacks and their order) is the recipe's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml

from deploy.bundle import load_bundle
from edgecls_testing import EXPERIMENTS, load_recipe, run_main
from recipe_data import handwritten_digits, photos, write_image_folder, write_cifar_of, digits_rgb32  # noqa: F401 (imported by other tests from here)

FAST_CLI = ["--trainer.enable_progress_bar", "false"]


@pytest.fixture(autouse=True)
def cpu_seconds():
    """Prints the CPU time the recipe used, in this process and any it started (-rP shows it): on shared cores, a
    fairer size than wall time."""
    import resource

    def used() -> float:
        return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))

    before = used()
    yield
    print(f"recipe CPU: {used() - before:.1f} s")


# --- real images nobody here prepared ---------------------------------------------------------------------------

def shrunk_recipe(tmp_path: Path, name: str, changes: dict, callbacks: dict[str, dict] | None = None) -> Path:
    """experiments/<name>.yaml with `changes` merged in (nested dicts) and the init_args of the listed callbacks
    (by class_path) updated, written to tmp_path: a callback's setting in a list cannot be overridden on the
    command line."""
    config = load_recipe(EXPERIMENTS / name)

    def merge(into: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(config, changes)
    listed = config["trainer"]["callbacks"]
    missing = set(callbacks or {}) - {c["class_path"] for c in listed}
    assert not missing, f"{name} lists no {sorted(missing)}"
    for c in listed:  # every entry of a class_path (Int8Quantization is listed once per form)
        if c["class_path"] in (callbacks or {}):
            c["init_args"] = {**(c.get("init_args") or {}), **callbacks[c["class_path"]]}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def random_mobilenet_v2(tmp_path: Path) -> Path:
    """A randomly initialised torchvision MobileNetV2 state dict, standing in for the ImageNet file offline."""
    path = tmp_path / "mobilenet_v2_random.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v2(num_classes=1000).state_dict(), path)
    return path


def test_top1(stdout: str) -> float:
    return float(re.search(r"^test/top1 = ([0-9.]+)", stdout, re.M).group(1))


test_top1.__test__ = False  # a helper, not a test


# What each fit-end step of a recipe leaves in the bundle: (format, precision, runtime, file) of an ok artifact,
# by class_path and, for Int8Quantization, its form.
MADE_BY = {
    ("callbacks.ONNXExport", None): ("onnx", "fp32", "any", "model.onnx"),
    ("callbacks.Int8Quantization", "tensorrt"): ("onnx-int8", "int8", "tensorrt", "model.int8.onnx"),
    ("callbacks.Int8Quantization", "cpu"): ("onnx-int8", "int8", "cpu", "model.int8-cpu.onnx"),
}


def made_by(callback: dict) -> tuple | None:
    """The artifact one listed callback makes (None for a step that makes no ONNX file)."""
    form = (callback.get("init_args") or {}).get("form", "tensorrt")
    return MADE_BY.get((callback["class_path"], form if callback["class_path"].endswith("Int8Quantization") else None))


def asked_for(recipe: Path) -> tuple[list[tuple], list[str], dict[str, str]]:
    """From the recipe as run: the ONNX artifacts its steps make, the TensorRT precisions it asks for, and each
    quantization step's calibration method (the step's default, minmax, where the YAML gives none)."""
    callbacks = load_recipe(recipe)["trainer"]["callbacks"]
    made = [made_by(c) for c in callbacks if made_by(c)]
    engines = [p for c in callbacks if c["class_path"] == "callbacks.TensorRTBuild"
               for p in (c.get("init_args") or {}).get("precisions", ["fp16", "int8"])]
    methods = {made_by(c)[3]: (c.get("init_args") or {}).get("method", "minmax")
               for c in callbacks if c["class_path"].endswith("Int8Quantization")}
    return made, engines, methods


def check_bundle(run: Path, recipe: Path, classes: list[str], input_hw: list[int]) -> dict:
    """What a user checks in a recipe's bundle; returns its report.json."""
    made, engines, methods = asked_for(recipe)
    assert methods, "every recipe with a bundle quantizes"
    bundle = load_bundle(run / "bundle", verify=True)  # schema, every sha256 and size
    assert not (run / ".bundle-staging").exists()
    assert bundle.classes == classes
    assert bundle.manifest["task"]["input"]["shape"] == [3, *input_hw]
    assert [(a["format"], a["precision"], a["runtime"], a["file"]) for a in bundle.artifacts] == made
    for a in bundle.artifacts:
        assert (run / "bundle" / a["file"]).is_file()
        assert 0.0 <= a["metrics"]["top1"] <= 1.0 and a["metrics"]["latency_ms"] > 0 and a["metrics"]["throughput"] > 0
        # the files meant for TensorRT pass the offline check of its documented rules (the CPU INT8 form is
        # not for TensorRT and is not checked against it)
        if a["runtime"] != "cpu":
            assert a["tensorrt_check"]["passed"], (a["file"], a["tensorrt_check"])
        if a["format"] == "onnx-int8":
            q = a["quantization"]
            assert q["method"] == "ptq" and q["calibration"] == methods[a["file"]], (a["file"], q)
    # TensorRT is absent here: each engine the recipe asks for is listed as skipped, with the reason
    assert [(u["format"], u["precision"], u["status"]) for u in bundle.unavailable] == [
        ("tensorrt", p, "skipped") for p in engines]
    assert all("tensorrt" in u["reason"] for u in bundle.unavailable)
    report = json.loads((run / "bundle" / "report.json").read_text())
    # a row per artifact in ONNX Runtime, plus "<label> · openvino" rows where OpenVINO is installed
    labels = [a["label"] for a in bundle.artifacts]
    assert [r["label"] for r in report["rows"] if " · " not in r["label"]] == ["PyTorch FP32", *labels]
    assert all(r["label"].split(" · ")[0] in labels for r in report["rows"] if " · " in r["label"])
    assert all(r["samples"] == report["test_samples"] > 0 for r in report["rows"])
    assert not report["failures"]
    return report


def measured_quickly(recipe: Path) -> Path:
    """DeployBundle times each artifact with 100 batch-1 calls and 10 of 32: on 2 shared cores 10 and 2 say
    as much about whether the measurement works, in a tenth of the time."""
    config = load_recipe(recipe)
    for c in config["trainer"]["callbacks"]:
        if c["class_path"] == "callbacks.DeployBundle":
            c["init_args"] = {**(c.get("init_args") or {}), "latency_iterations": 10, "throughput_iterations": 2}
    recipe.write_text(yaml.safe_dump(config, sort_keys=False))
    return recipe


# No DataLoader worker processes: each loader the fit-end steps open (val, calibration, test, several times over)
# starts its workers afresh, seconds each on 2 shared cores; workers themselves are tested in tests/datamodules.
NO_WORKERS = {"num_workers": 0, "persistent_workers": False}


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


def onnx_initializers(path: Path):
    import onnx

    return [i for i in onnx.load(str(path)).graph.initializer if len(i.dims) > 1]


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
    assert test_top1(proc.stdout) > 0.5, proc.stdout[-3000:]  # chance is 0.1
