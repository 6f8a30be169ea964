"""Engine sidecars refuse a mismatched TensorRT/GPU before anything is deserialized; real TensorRT builds and
runs where tensorrt and a GPU exist (marked `tensorrt`, skipped with the reason elsewhere)."""

import json
import os

import numpy as np
import pytest

from deploy.engine import EngineError, build_engine, check_engine_sidecar, tensorrt_status, write_sidecar

ORIN = {"tensorrt_version": "10.3.0", "gpu": {"name": "Orin", "compute_capability": "8.7"}}
SIDECAR = {**ORIN, "precision": "fp16",
           "profile": {"input": "input", "min": [1, 3, 14, 14], "opt": [8, 3, 14, 14], "max": [32, 3, 14, 14]}}


def _engine(tmp_path, sidecar=SIDECAR):
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"not a real engine: the check must refuse before reading it")
    if sidecar is not None:
        write_sidecar(engine, sidecar)
    return str(engine)


def test_matching_sidecar_is_accepted_across_build_numbers(tmp_path):
    engine = _engine(tmp_path, {**SIDECAR, "tensorrt_version": "10.3.0.26"})
    running = {"tensorrt_version": "10.3.0.30", "gpu": {"name": "Jetson AGX Orin", "compute_capability": "8.7"}}
    assert check_engine_sidecar(engine, running)["precision"] == "fp16"


@pytest.mark.parametrize("running", [
    {"tensorrt_version": "11.4.0", "gpu": {"name": "Orin", "compute_capability": "8.7"}},
    {"tensorrt_version": "10.3.0", "gpu": {"name": "NVIDIA H100", "compute_capability": "9.0"}},
])
def test_mismatched_sidecar_refuses_with_the_rebuild_command(tmp_path, running):
    engine = _engine(tmp_path)
    with pytest.raises(EngineError) as info:
        check_engine_sidecar(engine, running)
    message = str(info.value)
    assert "\n" not in message
    assert f"was built with TensorRT 10.3.0 for Orin (compute capability 8.7) but this machine has TensorRT " \
           f"{running['tensorrt_version']}" in message
    assert message.endswith(f"rebuild it on this device with: python -m deploy build-engine --bundle {tmp_path} "
                            "--precision fp16 --min-batch 1 --opt-batch 8 --max-batch 32")


def test_missing_or_broken_sidecar_refuses(tmp_path):
    engine = _engine(tmp_path, sidecar=None)
    with pytest.raises(EngineError, match=r"model\.fp16\.engine\.json: missing.*rebuild it here with: python -m "
                                          r"deploy build-engine --bundle .* --precision fp16"):
        check_engine_sidecar(engine, ORIN)
    with open(engine + ".json", "w") as handle:
        json.dump({"precision": "fp16"}, handle)
    with pytest.raises(EngineError, match="unreadable engine sidecar"):
        check_engine_sidecar(engine, ORIN)


def test_tensorrt_status_gives_a_reason(digits_bundle, run_cli):
    ok, reason = tensorrt_status()
    assert isinstance(ok, bool) and reason
    if not ok:
        code, _, err = run_cli("build-engine", "--bundle", digits_bundle.path, "--precision", "fp16")
        assert code == 2 and reason in err and "cannot build a TensorRT engine here" in err


def _require_tensorrt():
    pytest.importorskip("tensorrt", reason="tensorrt is not importable here; TensorRT tests run on a GPU machine")
    ok, reason = tensorrt_status()
    if not ok:
        pytest.skip(reason)


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision, source, tolerance", [("fp32", "model.onnx", 1e-3), ("fp16", "model.onnx", 5e-2),
                                                          ("int8", "model.int8.onnx", None)])
def test_build_and_run_engine_agrees_with_onnx_runtime(bundle_copy, digits_bundle, tmp_path, precision, source, tolerance):
    _require_tensorrt()
    from deploy.runners import OnnxRuntimeRunner, TensorRTRunner

    engine = os.path.join(bundle_copy, f"model.{precision}.engine")
    cache = str(tmp_path / "timing.cache")
    sidecar = build_engine(os.path.join(bundle_copy, source), engine, precision, 1, 4, 16, 512, cache)
    assert os.path.getsize(cache) > 0 and sidecar["profile"]["max"] == [16, 3, 14, 14]
    reference = OnnxRuntimeRunner(os.path.join(bundle_copy, source)).infer(digits_bundle.inputs)
    with TensorRTRunner(engine) as runner:
        assert (runner.min_batch, runner.max_batch) == (1, 16)
        logits = runner.infer(digits_bundle.inputs)  # 40 images: split across the profile's max batch
        again = runner.infer(digits_bundle.inputs[:3])  # reused buffers, smaller batch
    assert logits.shape == reference.shape
    np.testing.assert_allclose(again, logits[:3], atol=1e-5)
    if tolerance:
        np.testing.assert_allclose(logits, reference, atol=tolerance)
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.9


@pytest.mark.tensorrt
def test_cli_build_engine_adds_it_to_the_manifest_and_infer_uses_it(bundle_copy, digits_bundle, run_cli):
    _require_tensorrt()
    code, out, err = run_cli("build-engine", "--bundle", bundle_copy, "--precision", "fp16", "--max-batch", "8")
    assert code == 0, err
    from deploy.bundle import load_bundle

    entry = load_bundle(bundle_copy).artifact("tensorrt", "fp16")  # sha256 verified by load_bundle
    assert entry["file"] == "model.fp16.engine" and os.path.exists(os.path.join(bundle_copy, "timing.cache"))
    code, out, err = run_cli("infer", "--bundle", bundle_copy, "--format", "tensorrt", "--topk", "1",
                             *digits_bundle.image_paths)
    assert code == 0, err
    predicted = [json.loads(line)["top"][0]["index"] for line in out.splitlines()]
    assert (np.array(predicted) == digits_bundle.torch_logits.argmax(1)).mean() >= 0.9
