"""What the recipe tests (tests/experiments/) share: how a recipe is shrunk to run in seconds, and what a user
checks in the bundle it ends with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from deploy.bundle import load_bundle
from edgecls_testing import EXPERIMENTS, load_recipe

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


# What each fit-end step of a recipe leaves in the bundle: (format, precision, runtime, file) of an ok artifact,
# by class_path and, for Int8Quantization, its form.
MADE_BY = {
    ("callbacks.ONNXExport", None): [("onnx", "fp32", "any", "model.onnx")],
    ("callbacks.Int8Quantization", "tensorrt"): [("onnx-int8", "int8", "tensorrt", "model.int8.onnx")],
    ("callbacks.Int8Quantization", "cpu"): [("onnx-int8", "int8", "cpu", "model.int8-cpu.onnx")],
    ("callbacks.OpenVinoIR", None): [("openvino-ir", "fp32", "openvino", "model.openvino.xml"),
                                     ("openvino-ir", "int8", "openvino", "model.int8.openvino.xml")],
}


def made_by(callback: dict) -> list[tuple]:
    """The artifacts one listed callback makes (none for a step that makes no model file)."""
    form = (callback.get("init_args") or {}).get("form", "tensorrt")
    return MADE_BY.get((callback["class_path"], form if callback["class_path"].endswith("Int8Quantization") else None), [])


def asked_for(recipe: Path) -> tuple[list[tuple], list[str], dict[str, str]]:
    """From the recipe as run: the artifacts its steps make, the TensorRT precisions it asks for, and each
    quantization step's calibration method (the step's default, minmax, where the YAML gives none)."""
    callbacks = load_recipe(recipe)["trainer"]["callbacks"]
    made = [artifact for c in callbacks for artifact in made_by(c)]
    engines = [p for c in callbacks if c["class_path"] == "callbacks.TensorRTBuild"
               for p in (c.get("init_args") or {}).get("precisions", ["fp16", "int8"])]
    methods = {made_by(c)[0][3]: (c.get("init_args") or {}).get("method", "minmax")
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
        if a["runtime"] not in ("cpu", "openvino"):
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


def onnx_initializers(path: Path):
    import onnx

    return [i for i in onnx.load(str(path)).graph.initializer if len(i.dims) > 1]
