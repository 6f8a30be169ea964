"""Engine sidecars refuse a mismatched TensorRT/GPU before anything is deserialized; every value TensorRT
returns is checked (a fake tensorrt module drives the builder and runner through each failure); real TensorRT
builds and runs where tensorrt and a GPU exist (marked `tensorrt`, skipped with the reason elsewhere)."""

import json
import os
import re
import sys

import numpy as np
import pytest

from deploy.engine import EngineError, build_engine, check_engine_sidecar, tensorrt_status, write_sidecar
from fake_tensorrt import PARSER_ERRORS, FakeMemory, make_tensorrt

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
    # the INT8 file as written: what TensorRT computes (ONNX Runtime's fused x86 kernels without VNNI do not)
    qdq = "exact" if precision == "int8" else "fused"
    reference = OnnxRuntimeRunner(os.path.join(bundle_copy, source), qdq=qdq).infer(digits_bundle.inputs)
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


# ---- control flow around TensorRT, on a fake tensorrt module -----------------------------------------------

REBUILD = "--precision fp16 --min-batch 1 --opt-batch 4 --max-batch 8"


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    """install(version, fail=..., ...) puts a fake tensorrt in sys.modules, on a fake Orin GPU and memory."""
    import deploy.cuda_memory

    def install(version="10.3.0", **kwargs):
        trt = make_tensorrt(version, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(deploy.cuda_memory, "gpu_info", lambda device=0: dict(ORIN["gpu"]))
        trt.memory = FakeMemory(trt)
        monkeypatch.setattr(deploy.cuda_memory, "open_cuda", lambda device=0: trt.memory)
        return trt

    (tmp_path / "model.onnx").write_bytes(b"an ONNX file the fake parser does not read")
    return install


def _build(tmp_path, precision="fp16", cache=True, max_batch=16):
    return build_engine(tmp_path / "model.onnx", tmp_path / f"model.{precision}.engine", precision, 1, 4, max_batch,
                        512, str(tmp_path / "timing.cache") if cache else None)


def _called(trt, name):
    return [args for call, args in trt.calls if call == name]


def test_a_good_build_writes_engine_sidecar_and_timing_cache(fake_trt, tmp_path):
    trt = fake_trt("10.3.0")
    sidecar = _build(tmp_path)
    engine = tmp_path / "model.fp16.engine"
    assert json.loads(engine.read_bytes())["max"] == [16, 3, 14, 14]  # the plan TensorRT serialized, as is
    assert json.loads((tmp_path / "model.fp16.engine.json").read_text()) == sidecar
    assert sidecar["profile"] == {"input": "input", "min": [1, 3, 14, 14], "opt": [4, 3, 14, 14],
                                  "max": [16, 3, 14, 14]}
    assert (sidecar["tensorrt_version"], sidecar["gpu"], sidecar["output"]) == ("10.3.0", ORIN["gpu"], "logits")
    assert (tmp_path / "timing.cache").read_bytes() == b"cache:"
    assert sorted(os.listdir(tmp_path)) == ["model.fp16.engine", "model.fp16.engine.json", "model.onnx",
                                            "timing.cache"]  # no temp file left from the atomic writes
    assert _called(trt, "set_memory_pool_limit") == [("WORKSPACE", 512 << 20)]
    assert _called(trt, "set_timing_cache")[0][1] is False  # ignore_mismatch: a foreign cache must not load
    again = fake_trt("10.3.0")
    _build(tmp_path)
    assert _called(again, "create_timing_cache") == [(b"cache:",)]  # the saved cache is reused


@pytest.mark.parametrize("version", ["10.3.0", "11.4.0"])
def test_fp32_clears_tf32_so_the_engine_really_is_fp32(fake_trt, tmp_path, version):
    trt = fake_trt(version)
    sidecar = _build(tmp_path, "fp32")
    assert _called(trt, "clear_flag") == [("TF32",)] and _called(trt, "set_flag") == []
    assert json.loads((tmp_path / "model.fp32.engine").read_bytes())["flags"] == []
    assert sidecar["tf32"] is False


@pytest.mark.parametrize("precision, flags", [("fp16", [("FP16",)]), ("int8", [("FP16",), ("INT8",)])])
def test_tensorrt_10_sets_the_precision_flags_and_keeps_tf32(fake_trt, tmp_path, precision, flags):
    trt = fake_trt("10.3.0")
    sidecar = _build(tmp_path, precision)
    assert _called(trt, "set_flag") == flags and _called(trt, "clear_flag") == []
    assert _called(trt, "create_network") == [(0,)] and sidecar["strongly_typed"] is False


def test_tensorrt_11_builds_fp16_strongly_typed_from_an_fp16_onnx(fake_trt, tmp_path, monkeypatch):
    import deploy.engine

    converted = []

    def convert(onnx_path, out_path):
        converted.append(out_path)
        with open(out_path, "wb") as handle:
            handle.write(b"fp16 onnx")
        return out_path

    monkeypatch.setattr(deploy.engine, "convert_onnx_to_fp16", convert)
    trt = fake_trt("11.4.0")  # no BuilderFlag.FP16 or INT8 here: touching them would fail the build
    sidecar = _build(tmp_path, "fp16")
    assert _called(trt, "parse_from_file") == [(converted[0],)] and not os.path.exists(converted[0])
    assert _called(trt, "create_network") == [(1 << 1,)] and sidecar["strongly_typed"] is True
    assert _called(trt, "set_flag") == [] and sidecar["onnx_file"] == "model.onnx"


@pytest.mark.parametrize("fail, culprit, cause", [
    ("parse", "model.onnx", r"cannot parse it \(4 parser errors, first: In node 3 with name: /features/Conv and "
                            r"operator: Conv \(parseNode\): INVALID_NODE: bad weights; In node 4 .*; third\); "
                            r"re-export the model"),
    ("add_optimization_profile", "model.onnx", r"rejected the batch profile min=1 opt=4 max=16 for input input "
                                               r"\[-1, 3, 14, 14\]; choose --min-batch"),
    ("create_timing_cache", "timing.cache", r"cannot use this timing cache .*; delete it and build again"),
    ("set_timing_cache", "timing.cache", r"cannot use this timing cache .*; delete it and build again"),
    ("build_serialized_network", "model.onnx", r"could not build an FP16 engine in a 512 MB workspace .*; raise "
                                               r"--workspace-mb"),
    ("get_timing_cache", "timing.cache", r"built the engine but returned no timing cache to save"),
])
def test_each_tensorrt_failure_is_one_sentence_naming_the_file_and_nothing_is_written(fake_trt, tmp_path, fail,
                                                                                         culprit, cause):
    fake_trt("10.3.0", fail={fail})
    (tmp_path / "model.fp16.engine").write_bytes(b"the engine from an earlier build")
    (tmp_path / "timing.cache").write_bytes(b"")
    with pytest.raises(EngineError) as info:
        _build(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / culprit}: ") and "\n" not in message
    assert PARSER_ERRORS[3] not in message
    assert re.search(cause, message), message
    assert (tmp_path / "model.fp16.engine").read_bytes() == b"the engine from an earlier build"
    assert (tmp_path / "timing.cache").read_bytes() == b""
    assert sorted(os.listdir(tmp_path)) == ["model.fp16.engine", "model.onnx", "timing.cache"]


def test_an_exception_inside_tensorrt_becomes_an_engine_error(fake_trt, tmp_path):
    fake_trt("10.3.0", raise_in="build_serialized_network")
    expected = (r"model\.onnx: TensorRT 10\.3\.0 failed while building the FP16 engine \(RuntimeError: "
                r"build_serialized_network: internal TensorRT error\); fix what the TensorRT log above reports")
    with pytest.raises(EngineError, match=expected) as info:
        _build(tmp_path)
    assert isinstance(info.value.__cause__, RuntimeError)  # kept for the log, not printed by the CLI
    assert not os.path.exists(tmp_path / "model.fp16.engine")


def test_only_the_batch_dimension_may_be_dynamic(fake_trt, tmp_path):
    fake_trt("10.3.0", input_shape=(-1, 3, -1, -1))
    with pytest.raises(EngineError, match=r"input input has shape \[-1, 3, -1, -1\], but only its batch dimension"):
        _build(tmp_path)


def test_building_without_tensorrt_is_an_engine_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # what a machine without TensorRT gives
    with pytest.raises(EngineError, match=r"model\.fp16\.engine: cannot be built here because tensorrt is not "
                                          r"importable .*pip install 'edgecls\[trt\]'"):
        _build(tmp_path)


@pytest.fixture
def fake_engine(fake_trt, tmp_path):
    """(fake tensorrt, engine path): an fp16 engine built through the fake with batch profile 1/4/8."""
    trt = fake_trt("10.3.0")
    _build(tmp_path, max_batch=8)
    return trt, str(tmp_path / "model.fp16.engine")


def test_runner_splits_batches_over_the_profile_and_returns_what_the_engine_wrote(fake_engine):
    from deploy.runners import TensorRTRunner

    trt, engine = fake_engine
    images = np.random.default_rng(0).standard_normal((11, 3, 14, 14)).astype(np.float32)
    with TensorRTRunner(engine) as runner:
        assert (runner.min_batch, runner.max_batch, runner.input_shape) == (1, 8, (3, 14, 14))
        logits = runner.infer(images)
    np.testing.assert_array_equal(logits, images.reshape(11, -1)[:, :10])
    assert [shape[0] for _, shape in _called(trt, "set_input_shape")] == [8, 8, 3]
    assert trt.memory.closed


@pytest.mark.parametrize("fail, cause", [
    ("deserialize_cuda_engine", r"could not deserialize it \(see the TensorRT log above\)"),
    ("set_input_shape", r"rejected input shape \[8, 3, 14, 14\] for input \(its profile allows batch 1 to 8\)"),
    ("set_tensor_address", r"rejected the device buffer for tensor input \(set_tensor_address returned False\)"),
])
def test_runner_refuses_an_engine_tensorrt_will_not_set_up(fake_engine, fail, cause):
    from deploy.runners import TensorRTRunner

    trt, engine = fake_engine
    trt.fail.add(fail)
    with pytest.raises(EngineError, match=f"^{re.escape(engine)}: TensorRT 10.3.0 {cause}; "
                                          f"rebuild it with: python -m deploy build-engine .* {REBUILD}$"):
        TensorRTRunner(engine)
    assert trt.memory.closed


@pytest.mark.parametrize("fail, cause", [
    ("set_input_shape", r"rejected input shape \[3, 3, 14, 14\] for input"),
    ("execute_async_v3", r"could not run a batch of 3 \(execute_async_v3 returned False"),
])
def test_runner_failures_while_inferring_are_engine_errors(fake_engine, fail, cause):
    from deploy.runners import TensorRTRunner

    trt, engine = fake_engine
    with TensorRTRunner(engine) as runner:
        trt.fail.add(fail)
        with pytest.raises(EngineError, match=f"{cause}.*; rebuild it with: .* {REBUILD}$"):
            runner.infer(np.zeros((3, 3, 14, 14), np.float32))
