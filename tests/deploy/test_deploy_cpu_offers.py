"""What deploy offers on a CPU by default: ONNX Runtime's threads sleep when idle (a device runs other processes) unless
`--spin` asks them to spin, and OpenVINO's bf16 run of a file only where the fit-end measurement found it faster than
f32, with one line in `deploy bench` saying why not elsewhere."""

from __future__ import annotations

import json

import pytest

from deploy.bundle import read_manifest, write_manifest
from deploy.runners import OnnxRuntimeRunner
from deploy.runtimes.onnxruntime import SPIN_ENV, ort_spin

SPIN = "session.intra_op.allow_spinning"


def spinning(runner: OnnxRuntimeRunner) -> str:
    return runner.session.get_session_options().get_session_config_entry(SPIN)


def test_onnx_runtime_threads_sleep_by_default_and_spin_when_asked(digits_bundle, monkeypatch):
    monkeypatch.delenv(SPIN_ENV, raising=False)
    path = f"{digits_bundle.path}/model.onnx"
    assert spinning(OnnxRuntimeRunner(path)) == "0"
    assert spinning(OnnxRuntimeRunner(path, spin=True)) == "1"
    with ort_spin(True):
        assert spinning(OnnxRuntimeRunner(path)) == "1"
    assert spinning(OnnxRuntimeRunner(path)) == "0"  # the flag's scope ends with the command


@pytest.mark.parametrize("flag, said", [([], "sleeping"), (["--spin"], "spinning")])
def test_bench_says_how_onnx_runtime_threads_wait_and_the_flag_reaches_the_runner(bundle_copy, run_cli, monkeypatch,
                                                                                    flag, said):
    monkeypatch.delenv(SPIN_ENV, raising=False)
    seen = []
    original = OnnxRuntimeRunner.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self.spin)

    monkeypatch.setattr(OnnxRuntimeRunner, "__init__", recording)
    code, out, err = run_cli("bench", "--bundle", bundle_copy, "--runtime", "onnxruntime", "--format", "onnx",
                             "--batch", "1", "--iterations", "2", "--warmup", "1", "--no-progress", *flag)
    assert code == 0, err
    assert f"ONNX Runtime's idle threads {said}" in out
    assert seen and set(seen) == {bool(flag)}


def with_bf16_timings(bundle: str, bf16_ms: float, f32_ms: float) -> None:
    """The manifest as a fit on this CPU writes it, with the FP32 file's fit-end latencies in OpenVINO f32 and bf16."""
    manifest = read_manifest(bundle)
    entry = next(a for a in manifest["artifacts"] if a["file"] == "model.onnx")
    top1 = entry.setdefault("metrics", {}).setdefault("top1", 0.9)
    entry["runtime_metrics"] = {
        "openvino": {"precision": "fp32", "top1": top1, "latency_ms": f32_ms, "device": "CPU here"},
        "openvino-bf16": {"precision": "bf16", "top1": top1, "latency_ms": bf16_ms, "device": "CPU here"}}
    write_manifest(bundle, manifest)


@pytest.mark.parametrize("bf16_ms, offered", [(2.0, False), (0.5, True)])
def test_bf16_is_offered_only_where_it_was_measured_faster(bundle_copy, monkeypatch, bf16_ms, offered):
    from deploy import selection
    from deploy.bundle import load_bundle

    # whether this CPU has native bf16 or not, the rule is the manifest's measurement
    monkeypatch.setattr(selection, "available_runtimes", lambda: ["onnxruntime", "openvino", "openvino-bf16"])
    with_bf16_timings(bundle_copy, bf16_ms, 1.0)
    bundle = load_bundle(bundle_copy)
    left_out: list = []
    keys = {c.key for c in selection.candidates(bundle, left_out=left_out)}
    assert ("openvino-bf16:model.onnx" in keys) == offered
    assert "openvino:model.onnx" in keys
    if not offered:
        [(file, runtime, why)] = left_out
        assert (file, runtime) == ("model.onnx", "openvino-bf16")
        assert "2 ms against 1 ms in f32" in why and "offered only where it is measured faster" in why
    # --runtime openvino-bf16 names it: measured whatever the manifest says
    assert [c.key for c in selection.candidates(bundle, "openvino-bf16")] == ["openvino-bf16:model.onnx"]


def test_bench_says_in_one_line_why_bf16_is_not_offered(bundle_copy, run_cli):
    pytest.importorskip("openvino")
    with_bf16_timings(bundle_copy, 2.0, 1.0)
    code, out, err = run_cli("bench", "--bundle", bundle_copy, "--format", "onnx", "--batch", "1", "--iterations", "2",
                             "--warmup", "1", "--no-progress", "--json")
    assert code == 0, err
    assert "openvino-bf16" not in {row["runtime"] for row in json.loads(out)}
    from deploy.runners import RUNTIMES

    lines = [line for line in err.splitlines() if "bf16 is not offered" in line]
    if RUNTIMES["openvino-bf16"].available():  # a CPU without native bf16 never lists the runtime at all
        assert len(lines) == 1 and "model.onnx" in lines[0] and "--runtime openvino-bf16" in lines[0]
