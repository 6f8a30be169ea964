"""ONNX Runtime runners and `python -m deploy infer` agree with the torch model they came from."""

import json
import os

import numpy as np
import pytest

from deploy.bundle import BundleError, load_bundle
from deploy.runners import OnnxRuntimeRunner, open_runner


def test_onnx_runner_matches_torch_for_batch_1_and_n(digits_bundle):
    runner = OnnxRuntimeRunner(os.path.join(digits_bundle.path, "model.onnx"), threads=1)
    assert (runner.input_name, runner.output_name) == ("input", "logits")
    assert runner.input_shape == (3, 14, 14) and runner.min_batch == 1 and runner.max_batch is None
    assert runner.providers == ["CPUExecutionProvider"]
    np.testing.assert_allclose(runner.infer(digits_bundle.inputs[:1]), digits_bundle.torch_logits[:1], atol=1e-4)
    np.testing.assert_allclose(runner.infer(digits_bundle.inputs), digits_bundle.torch_logits, atol=1e-4)


def test_int8_runner_keeps_the_predictions_and_accuracy(digits_bundle):
    bundle = load_bundle(digits_bundle.path)
    with open_runner(bundle, bundle.artifact("onnx-int8")) as runner:
        int8 = runner.infer(digits_bundle.inputs).argmax(1)
    fp32 = digits_bundle.torch_logits.argmax(1)
    assert (int8 == fp32).mean() >= 0.9
    assert (int8 == digits_bundle.labels).mean() >= 0.85


def test_tensorrts_int8_file_runs_as_written_where_onnx_runtimes_fused_kernels_saturate(digits_bundle, monkeypatch):
    from deploy import cpu_features
    from edgecls_testing import run_as_written

    bundle = load_bundle(digits_bundle.path)
    entry = bundle.artifact("onnx-int8")  # TensorRT's S8S8 form (no runtime listed: a bundle before the CPU form)
    monkeypatch.setattr(cpu_features, "cpu_family_name", lambda machine=None: "x86_64")
    monkeypatch.setattr(cpu_features, "has_vnni", lambda flags=None: False)  # AVX2 without VNNI, a Zen 3
    with pytest.warns(RuntimeWarning, match=r"^model\.int8\.onnx is TensorRT's INT8 form, .* saturate on an x86 CPU "
                      r"without VNNI .* model\.int8-cpu\.onnx is the INT8 file for this CPU$"):
        runner = open_runner(bundle, entry)
    with runner:
        assert runner.qdq == "exact"
        np.testing.assert_array_equal(runner.infer(digits_bundle.inputs),
                                      run_as_written(bundle.artifact_path(entry), digits_bundle.inputs))
    # the CPU-form file, other runtimes and GPU providers run as they always do
    assert open_runner(bundle, dict(entry, runtime="cpu")).qdq == "fused"
    with pytest.warns(RuntimeWarning, match="no CUDAExecutionProvider"):  # where it is missing, as here
        assert open_runner(bundle, entry, providers=("cuda",)).qdq == "fused"
    assert type(open_runner(bundle, entry, runtime="openvino")).__name__ == "OpenVinoRunner"
    # a CPU whose int8 kernels do not saturate runs it fused
    monkeypatch.setattr(cpu_features, "has_vnni", lambda flags=None: True)
    assert open_runner(bundle, entry).qdq == "fused"
    monkeypatch.setattr(cpu_features, "cpu_family_name", lambda machine=None: "aarch64")
    monkeypatch.setattr(cpu_features, "has_vnni", lambda flags=None: False)
    assert open_runner(bundle, entry).qdq == "fused"


def test_runner_rejects_wrong_input_shape_with_a_sentence(digits_bundle):
    runner = OnnxRuntimeRunner(os.path.join(digits_bundle.path, "model.onnx"))
    with pytest.raises(ValueError, match=r"expected input \[N, 3, 14, 14\], got \[2, 3, 16, 16\]"):
        runner.infer(np.zeros((2, 3, 16, 16), np.float32))


def test_unavailable_provider_warns_and_runs_on_cpu_or_refuses_when_strict(digits_bundle):
    path = os.path.join(digits_bundle.path, "model.onnx")
    with pytest.warns(RuntimeWarning, match="has no CUDAExecutionProvider"):
        runner = OnnxRuntimeRunner(path, providers=("cuda",))
    assert runner.providers == ["CPUExecutionProvider"]
    with pytest.raises(BundleError, match="install onnxruntime-gpu"):
        OnnxRuntimeRunner(path, providers=("cuda",), strict=True)


def test_static_batch_model_is_split_and_padded(digits_bundle, tmp_path):
    import onnx
    import torch

    from bundle_factory import export_onnx


    path = export_onnx(digits_bundle.model, torch.zeros(4, 3, 14, 14), str(tmp_path / "static.onnx"))
    model = onnx.load(path)
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 4  # pin the batch, as some engines are
    onnx.save(model, path)
    runner = OnnxRuntimeRunner(path)
    assert (runner.min_batch, runner.max_batch) == (4, 4)
    np.testing.assert_allclose(runner.infer(digits_bundle.inputs[:11]), digits_bundle.torch_logits[:11], atol=1e-4)
    np.testing.assert_allclose(runner.infer(digits_bundle.inputs[:1]), digits_bundle.torch_logits[:1], atol=1e-4)


@pytest.mark.parametrize("fmt", ["onnx", "onnx-int8"])
def test_cli_infer_prints_topk_agreeing_with_torch(digits_bundle, run_cli, fmt):
    code, out, err = run_cli("infer", "--bundle", digits_bundle.path, "--format", fmt, "--topk", "3",
                             "--batch-size", "16", *digits_bundle.image_paths)
    # TensorRT's INT8 file, where auto picks it in ONNX Runtime on an x86 CPU without VNNI, runs with its Q/DQ as
    # written, said in the `using` line (which run_cli leaves out), not again in a warning
    assert code == 0 and err == ""
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["file"] for line in lines] == digits_bundle.image_paths
    predicted = np.array([line["top"][0]["index"] for line in lines])
    torch_top1 = digits_bundle.torch_logits.argmax(1)
    assert (predicted == torch_top1).mean() == 1.0 if fmt == "onnx" else (predicted == torch_top1).mean() >= 0.9
    assert (predicted == digits_bundle.labels).mean() >= 0.85
    for line in lines:
        assert len(line["top"]) == 3
        probs = [t["probability"] for t in line["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
        assert line["top"][0]["class"] == digits_bundle.classes[line["top"][0]["index"]]


def test_cli_infer_reports_bad_images_goes_on_and_exits_1(digits_bundle, run_cli, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    good = digits_bundle.image_paths[:2]
    code, out, err = run_cli("infer", "--bundle", digits_bundle.path, good[0], str(bad), good[1])
    assert code == 1
    assert [json.loads(line)["file"] for line in out.splitlines()] == good
    assert err.splitlines() == [f"error: {bad}: not an image (unrecognised format)"]


def test_cli_infer_exits_1_when_every_input_failed_too(digits_bundle, run_cli, tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    code, out, err = run_cli("infer", "--bundle", digits_bundle.path, tmp_path / "a.png", tmp_path / "b.png")
    assert code == 1 and out == ""
    assert [line.split(": ")[1] for line in err.splitlines()] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]


def test_cli_infer_over_a_folder_without_images_is_a_usage_error(digits_bundle, run_cli, tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    code, out, err = run_cli("infer", "--bundle", digits_bundle.path, tmp_path)
    assert code == 2 and out == ""
    assert err.splitlines() == ["error: no images given (folders are searched for image files); pass files or folders"]


def test_cli_infer_accepts_a_folder(digits_bundle, run_cli):
    folder = os.path.dirname(digits_bundle.image_paths[0])
    code, out, _ = run_cli("infer", "--bundle", digits_bundle.path, "--topk", "1", folder)
    assert code == 0 and len(out.splitlines()) == len(digits_bundle.image_paths)


def test_cli_infer_without_an_engine_says_how_to_build_one(digits_bundle, run_cli):
    code, out, err = run_cli("infer", "--bundle", digits_bundle.path, "--format", "tensorrt",
                             digits_bundle.image_paths[0])
    assert code == 2 and out == ""
    assert "no tensorrt artifact in this bundle" in err and "python -m deploy build-engine" in err
