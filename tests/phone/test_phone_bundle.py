"""experiments/phone.yaml end to end: one tiny fit makes LiteRT, ExecuTorch and NCNN files, each re-measured in its
own runtime, listed in the manifest with its layout, and run by `deploy` with --runtime litert|executorch|ncnn|auto;
LiteRT and NCNN run where torch cannot be imported. One fit (module scope) serves every assertion."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from edgecls_testing import EXPERIMENTS, REPO, TINY, load_recipe, run_main
from PIL import Image
from sklearn.datasets import load_digits

pytest.importorskip("litert_torch", reason="the litert, executorch and ncnn extras (in [dev]) are not installed")
pytest.importorskip("executorch", reason="the litert, executorch and ncnn extras (in [dev]) are not installed")
pytest.importorskip("pnnx", reason="the litert, executorch and ncnn extras (in [dev]) are not installed")

FILES = {"model.tflite": ("tflite", "fp32", "litert", "NHWC"), "model.int8.tflite": ("tflite", "int8", "litert", "NHWC"),
         "model.pte": ("pte", "fp32", "executorch", "NCHW"), "model.int8.pte": ("pte", "int8", "executorch", "NCHW"),
         "model.fp32.ncnn.param": ("ncnn", "fp32", "ncnn", "NCHW"),
         "model.fp16.ncnn.param": ("ncnn", "fp16", "ncnn", "NCHW")}


@pytest.fixture(scope="module")
def phone(tmp_path_factory):
    """The phone recipe fitted once (tiny settings), its bundle, and four real digit scans as PNG files."""
    tmp = tmp_path_factory.mktemp("phone")
    config = load_recipe(EXPERIMENTS / "phone.yaml")
    for step in config["trainer"]["callbacks"]:
        if step["class_path"] in ("callbacks.LiteRTExport", "callbacks.ExecuTorchExport"):
            step["init_args"]["num_samples"] = 64
        if step["class_path"] == "callbacks.DeployBundle":
            step["init_args"] = {"latency_iterations": 5, "throughput_iterations": 1, "throughput_batch": 4}
    recipe = tmp / "phone.yaml"
    recipe.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = run_main(["fit", "--config", recipe, *TINY, "--trainer.max_epochs", "1"], tmp, timeout=900)
    bundle = tmp / "runs" / "phone" / "version_0" / "bundle"
    digits = load_digits()
    images = []
    for i in range(4):
        path = tmp / f"digit{i}.png"
        Image.fromarray(np.rint(digits.images[i] * 255 / 16).astype(np.uint8)).resize((32, 32)).save(path)
        images.append(path)
    return {"bundle": bundle, "stdout": proc.stdout, "stderr": proc.stderr, "images": images, "tmp": tmp}


def manifest(phone):
    return json.loads((phone["bundle"] / "manifest.json").read_text())


def test_every_phone_file_is_made_listed_with_its_layout_and_measured_in_its_own_runtime(phone):
    entries = {a["file"]: a for a in manifest(phone)["artifacts"] if a.get("file")}
    for name, (fmt, precision, runtime, layout) in FILES.items():
        entry = entries.get(name)
        assert entry is not None and entry["status"] == "ok", (name, manifest(phone)["artifacts"])
        assert (entry["format"], entry["precision"], entry["runtime"], entry["layout"]) == (fmt, precision, runtime, layout)
        assert (phone["bundle"] / name).is_file()
    from deploy.runtimes.ncnn import input_shape_of

    assert input_shape_of(phone["bundle"] / "model.fp16.ncnn.param") == (3, 16, 16)  # TINY's image size
    ncnn = entries["model.fp16.ncnn.param"]["companions"]
    assert [c["file"] for c in ncnn] == ["model.fp16.ncnn.bin"] and (phone["bundle"] / "model.fp16.ncnn.bin").is_file()
    for name in ("model.int8.tflite", "model.int8.pte"):
        q = entries[name]["quantization"]
        assert entries[name].get("gate", "met" if q["gate_met"] else "not met") in ("met", "not met")
        assert q["num_samples"] == 64 and "delta_pts" in q
    delegation = entries["model.int8.pte"]["facts"]["delegation"]
    assert delegation["convolutions"] > 0 and delegation["convolutions_delegated"] == delegation["convolutions"]


def test_fp32_and_fp16_files_score_as_the_onnx_file_on_the_test_split(phone):
    rows = json.loads((phone["bundle"] / "report.json").read_text())["rows"]
    onnx = next(r for r in rows if r.get("file") == "model.onnx" and r["runtime"] == "onnxruntime")
    by_runtime = {(r["file"], r["runtime"]): r for r in rows}
    for name, (_, precision, runtime, _) in FILES.items():
        row = by_runtime[(name, runtime)]
        assert row["latency_ms"] > 0 and row["size_mb"] > 0
        if precision != "int8":
            assert abs(row["top1"] - onnx["top1"]) * 100 <= 0.1, (name, row["top1"], onnx["top1"])
    table = phone["stdout"] + phone["stderr"]
    for label in ("LiteRT", "ExecuTorch", "NCNN"):
        assert label in table
    report_md = (phone["bundle"] / "report.md").read_text()
    assert "model.int8.tflite" in report_md and "model.fp16.ncnn.param" in report_md


def test_each_runtime_matches_onnx_on_images_preprocessed_by_deploy(phone):
    """The train <-> device contract: deploy.preprocess's NCHW batch, each runtime's file (LiteRT's NHWC one
    transposed by its runner), the same logits as the FP32 ONNX file within 1e-3."""
    from deploy.bundle import load_bundle
    from deploy.preprocess import preprocess
    from deploy.runners import open_runner

    bundle = load_bundle(str(phone["bundle"]))
    batch, _, errors = preprocess([str(p) for p in phone["images"]], bundle.manifest["preprocessing"])
    assert not errors
    with open_runner(bundle, bundle.artifact("onnx", "fp32"), say=False) as runner:
        expected = runner.infer(batch)
    for name in ("model.tflite", "model.pte", "model.fp32.ncnn.param"):
        entry = next(a for a in bundle.artifacts if a["file"] == name)
        with open_runner(bundle, entry, say=False) as runner:
            got = runner.infer(batch)
        assert np.abs(got - expected).max() <= 1e-3, name
        assert (got.argmax(1) == expected.argmax(1)).all(), name


def deploy(*args, blocked=()):
    """`python -m deploy ...` with `blocked` top-level modules made unimportable (a device without them)."""
    code = ("import importlib.abc, runpy, sys\n"
            f"BLOCKED = {tuple(blocked)!r}\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in BLOCKED:\n"
            "            raise ImportError(name + ' is blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "sys.argv = ['deploy'] + sys.argv[1:]\n"
            "runpy.run_module('deploy', run_name='__main__', alter_sys=True)\n"
            "leaked = sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED)\n"
            "assert not leaked, leaked\n")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_litert_and_ncnn_infer_where_torch_cannot_be_imported_and_executorch_says_it_needs_torch(phone):
    expected = None
    for runtime in ("litert", "ncnn"):
        proc = deploy("infer", "--bundle", phone["bundle"], "--runtime", runtime, "--topk", "1", *phone["images"],
                      blocked=("torch", "torchvision", "pytorch_lightning", "callbacks", "lightning_modules"))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"in {runtime}" in proc.stderr
        top = [json.loads(line)["top"][0]["index"] for line in proc.stdout.splitlines()]
        assert len(top) == 4 and (expected is None or top == expected)
        expected = top
    proc = deploy("infer", "--bundle", phone["bundle"], "--runtime", "executorch", "--format", "pte",
                  *phone["images"][:1], blocked=("torch",))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "ExecuTorch's Python runtime needs torch" in proc.stderr


def test_a_runtime_not_installed_on_the_device_is_one_sentence(phone):
    proc = deploy("infer", "--bundle", phone["bundle"], "--runtime", "litert", "--format", "tflite", *phone["images"][:1],
                  blocked=("ai_edge_litert",))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "LiteRT is not installed here" in proc.stderr and "pip install ai-edge-litert" in proc.stderr
    proc = deploy("infer", "--bundle", phone["bundle"], "--runtime", "ncnn", "--format", "ncnn", *phone["images"][:1],
                  blocked=("ncnn",))
    assert "NCNN is not installed here" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_and_runtime_auto_consider_the_phone_runtimes(phone):
    proc = deploy("bench", "--bundle", phone["bundle"], "--batch", "1", "--iterations", "3", "--warmup", "1", "--json",
                  "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ran = {(row["runtime"], row["artifact"]) for row in json.loads(proc.stdout)}
    assert {("litert", "model.int8.tflite"), ("executorch", "model.pte"), ("ncnn", "model.fp16.ncnn.param")} <= ran
    proc = deploy("infer", "--bundle", phone["bundle"], "--runtime", "auto", *phone["images"][:1])
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_an_int8_file_that_missed_its_gate_is_never_picked_by_auto(phone, tmp_path):
    import shutil

    from deploy.bundle import load_bundle
    from deploy.selection import choose

    copy = tmp_path / "bundle"
    shutil.copytree(phone["bundle"], copy)
    data = manifest(phone)
    for entry in data["artifacts"]:
        if entry.get("file") == "model.int8.tflite":
            entry["gate"] = "not met"
    (copy / "manifest.json").write_text(json.dumps(data))
    choice = choose(load_bundle(str(copy)), runtime="litert")
    assert choice.entry["file"] == "model.tflite"


def test_install_copies_the_ncnn_weights_and_smoke_tests_in_the_named_runtime(phone, tmp_path):
    proc = deploy("install", "--bundle", phone["bundle"], "--to", tmp_path / "models", "--runtime", "ncnn")
    assert proc.returncode == 0, proc.stderr[-2000:]
    current = tmp_path / "models" / "current"
    assert (current / "model.fp16.ncnn.bin").is_file() and (current / "model.int8.tflite").is_file()
    assert "smoke-tested in ncnn" in proc.stdout


def test_a_converter_failure_is_one_sentence_naming_the_operator_the_stage_and_what_to_try():
    from callbacks.device_files import converter_failure

    error = converter_failure("litert-torch", "0.10.0", RuntimeError("Lowering not found: aten.fft_rfft2.default\n"
                                                                      "  more lines"), "litert_torch.convert",
                              "try another backbone")
    assert str(error) == ("litert-torch 0.10.0 cannot convert this network on aten.fft_rfft2.default at "
                          "litert_torch.convert (Lowering not found: aten.fft_rfft2.default); try another backbone")
    changed = converter_failure("executorch", "2.0", ImportError("cannot import name 'XnnpackPartitioner'"), "import",
                                "x")
    assert "executorch 2.0 no longer has the API this step calls at import" in str(changed)
