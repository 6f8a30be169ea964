"""Bundle contract: a good bundle loads; each way a copy goes wrong is one sentence naming the file."""

import json
import os

import pytest

from deploy.bundle import (BundleError, MANIFEST, SCHEMA_VERSION, add_artifact, artifact_entry, load_bundle,
                           read_manifest, validate_manifest, write_manifest)


def test_good_bundle_loads_with_its_classes_and_artifacts(digits_bundle):
    bundle = load_bundle(digits_bundle.path)
    assert bundle.manifest["schema_version"] == SCHEMA_VERSION
    assert bundle.classes == digits_bundle.classes
    assert bundle.preprocessing == digits_bundle.preprocessing
    assert bundle.input_shape == [3, 14, 14]
    assert [(a["file"], a["format"]) for a in bundle.artifacts] == [("model.onnx", "onnx"), ("model.int8.onnx", "onnx-int8")]


def _one_sentence(message: str) -> bool:
    return "\n" not in message and message.count(". ") == 0


def test_corrupt_manifest_names_the_file(bundle_copy, run_cli, digits_bundle):
    path = os.path.join(bundle_copy, MANIFEST)
    with open(path, "w") as handle:
        handle.write('{"schema_version": 1, "name": ')
    with pytest.raises(BundleError, match=r"manifest\.json: corrupt, not valid JSON") as info:
        load_bundle(bundle_copy)
    assert path in str(info.value) and _one_sentence(str(info.value))
    code, out, err = run_cli("infer", "--bundle", bundle_copy, digits_bundle.image_paths[0])
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"error: {info.value}"]


def test_missing_manifest_and_missing_folder(tmp_path):
    with pytest.raises(BundleError, match="manifest.json: missing, so this folder is not a bundle"):
        load_bundle(tmp_path)
    with pytest.raises(BundleError, match="no such bundle folder"):
        load_bundle(tmp_path / "nope")


def test_missing_artifact_names_the_file(bundle_copy):
    os.unlink(os.path.join(bundle_copy, "model.int8.onnx"))
    with pytest.raises(BundleError, match=r"model\.int8\.onnx: artifact listed in manifest\.json is missing") as info:
        load_bundle(bundle_copy)
    assert _one_sentence(str(info.value))
    # Only the artifact a command uses is required: the FP32 model still loads on its own.
    assert load_bundle(bundle_copy, verify=["model.onnx"]).classes


def test_sha_mismatch_names_the_file(bundle_copy):
    path = os.path.join(bundle_copy, "model.onnx")
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF  # same size, different content: only the hash can tell
    open(path, "wb").write(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx: artifact sha256 does not match manifest\.json"):
        load_bundle(bundle_copy)


def test_truncated_artifact_reports_the_sizes(bundle_copy):
    path = os.path.join(bundle_copy, "model.onnx")
    size = os.path.getsize(path)
    os.truncate(path, size - 10)
    with pytest.raises(BundleError, match=f"is {size - 10} bytes but manifest.json records {size}"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(schema_version=2), "'schema_version' is 2 but this runtime reads version 1"),
    (lambda m: m["preprocessing"].update(mean=[0.5, 0.5]), "'preprocessing.mean' must be 3 numbers"),
    (lambda m: m["preprocessing"].update(std=[0.2, 0.0, 0.2]), "'preprocessing.std' values must be positive"),
    (lambda m: m["preprocessing"].update(interpolation="cubic"), "'preprocessing.interpolation' must be one of"),
    (lambda m: m["preprocessing"].update(crop=[20, 20]), "'preprocessing.crop' [20, 20] is larger than"),
    (lambda m: m["task"].update(classes=[]), "'task.classes' must be a non-empty list"),
    (lambda m: m["artifacts"][0].update(format=""), "artifact model.onnx: 'format' must be a non-empty string"),
    (lambda m: m["artifacts"][0].update(sha256="abc"), "artifact model.onnx: 'sha256' must be 64"),
    (lambda m: m["artifacts"][1].update(file="../model.onnx"), "artifact 'file' must be a path relative"),
    (lambda m: m["artifacts"][1].update(form=""), "artifact model.int8.onnx: 'form' must be a non-empty string"),
])
def test_bad_manifest_field_is_named(digits_bundle, edit, message):
    manifest = json.load(open(os.path.join(digits_bundle.path, MANIFEST)))
    edit(manifest)
    with pytest.raises(BundleError) as info:
        validate_manifest(manifest)
    assert message in str(info.value)
    assert _one_sentence(str(info.value))


def test_an_entry_names_its_form_and_an_older_entry_without_one_still_loads_with_the_form_derived(digits_bundle):
    from deploy.forms import entry_form

    manifest = json.load(open(os.path.join(digits_bundle.path, MANIFEST)))
    assert "form" not in manifest["artifacts"][1]  # written as bundles were before entries had a form
    validate_manifest(manifest)
    assert [entry_form(e) for e in manifest["artifacts"]] == ["FP32", "INT8 TensorRT-form"]
    manifest["artifacts"][1].update(runtime="cpu")
    assert entry_form(manifest["artifacts"][1]) == "INT8 CPU-form"
    manifest["artifacts"][1].update(form="INT8 TensorRT-form, QAT")
    assert validate_manifest(manifest) and entry_form(manifest["artifacts"][1]) == "INT8 TensorRT-form, QAT"


def test_labels_file_must_agree_with_manifest(bundle_copy):
    with open(os.path.join(bundle_copy, "labels.txt"), "w") as handle:
        handle.write("cat\ndog\n")
    with pytest.raises(BundleError, match=r"labels\.txt: its 2 class names differ"):
        load_bundle(bundle_copy)


def test_write_manifest_refuses_invalid_and_leaves_old_file(bundle_copy):
    before = open(os.path.join(bundle_copy, MANIFEST)).read()
    manifest = read_manifest(bundle_copy)
    manifest["preprocessing"]["resize"] = [0, 16]
    with pytest.raises(BundleError, match="'preprocessing.resize' must be"):
        write_manifest(bundle_copy, manifest)
    assert open(os.path.join(bundle_copy, MANIFEST)).read() == before
    assert not [f for f in os.listdir(bundle_copy) if f.startswith(".tmp-")]


def test_add_artifact_appends_then_replaces_by_file(bundle_copy):
    path = os.path.join(bundle_copy, "model.fp16.engine")
    open(path, "wb").write(b"engine v1")
    add_artifact(bundle_copy, artifact_entry(path, "tensorrt", "fp16"))
    open(path, "wb").write(b"engine v2, rebuilt")
    add_artifact(bundle_copy, artifact_entry(path, "tensorrt", "fp16", metrics={"latency_ms": 1.5}))
    bundle = load_bundle(bundle_copy)  # the new sha256 verifies against the new file
    engines = [a for a in bundle.artifacts if a["format"] == "tensorrt"]
    assert len(engines) == 1 and engines[0]["bytes"] == len(b"engine v2, rebuilt")
    assert engines[0]["metrics"] == {"latency_ms": 1.5}
    assert bundle.artifact("tensorrt", "fp16")["file"] == "model.fp16.engine"
