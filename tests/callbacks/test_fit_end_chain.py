"""The fit-end chain never loses work: a step that raises costs only itself and the steps that need its output,
the bundle is still written and says what is missing and why, and calibration takes any sample count."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

import callbacks.quantization as quantization
import callbacks.tensorrt_build as tensorrt_build
from callbacks import DeployBundle, Int8Quantization, ONNXExport, TensorRTBuild, export_onnx
from callbacks.quantization import array_batches, asymmetric_zero_points, prepare_for_quantization, quantize_int8
from callbacks.fit_end import FitEndStep, fit_end_failures, order_steps
from deploy.bundle import load_bundle
from deploy.runners import OnnxRuntimeRunner
from edgecls_testing import REPO, TINY, tiny_fit, tiny_model

INJECT_INT8_FAULT = """
import sys
import callbacks.quantization as quantization
def broken(*args, **kwargs):
    raise RuntimeError("injected fault: the calibrator ran out of disk")
quantization.quantize_int8 = broken
sys.argv = ["main.py"] + sys.argv[1:]
from cli.app import cli_main
sys.exit(cli_main())
"""


def test_a_failing_step_costs_only_itself_and_the_fit_exits_non_zero(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-c", INJECT_INT8_FAULT, "fit", "--config", str(REPO / "experiments" / "quickstart.yaml"),
                           *TINY, "--trainer.max_epochs", "1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "Int8Quantization failed: injected fault: the calibrator ran out of disk" in proc.stderr

    # the training is kept, and the bundle holds everything the failed step did not touch
    run = tmp_path / "runs" / "quickstart" / "version_0"
    assert list((run / "checkpoints").glob("epoch*.ckpt")) and (run / "checkpoints" / "last.ckpt").is_file()
    bundle = load_bundle(run / "bundle", verify=True)
    # the CPU-form INT8 step does not use the broken function: it still ships
    assert [a["file"] for a in bundle.artifacts] == ["model.onnx", "model.int8-cpu.onnx"]
    int8 = next(a for a in bundle.unavailable if a["format"] == "onnx-int8")
    assert int8["status"] == "failed" and "injected fault" in int8["reason"] and int8["step"] == "Int8Quantization"
    # the table was printed, and the report names the failure
    assert " model.onnx " in proc.stdout and "ONNX INT8: failed: injected fault" in proc.stdout
    report = (run / "bundle" / "report.md").read_text()
    assert "## Not in this bundle" in report and "injected fault" in report
    assert json.loads((run / "bundle" / "report.json").read_text())["failures"] == [
        "Int8Quantization: injected fault: the calibrator ran out of disk"]


def test_a_failed_prerequisite_marks_its_dependants_skipped_with_why(tmp_path, monkeypatch):
    builds = []
    monkeypatch.setattr(tensorrt_build, "tensorrt_status", lambda: (True, "TensorRT 10.3 on a test GPU"))
    monkeypatch.setattr(tensorrt_build, "build_engine", lambda *a, **k: builds.append(a))

    def broken(*args, **kwargs):
        raise ValueError("calibration images are all black")

    monkeypatch.setattr(quantization, "quantize_int8", broken)
    trainer = tiny_fit(tmp_path, [ONNXExport(exporter="torchscript"), Int8Quantization(num_samples=32),
                                  TensorRTBuild(precisions=["int8"]),
                                  DeployBundle(latency_iterations=3, throughput_iterations=2)])
    assert builds == []  # nothing was built from a file that does not exist
    bundle = load_bundle(tmp_path / "bundle")
    engine = next(a for a in bundle.unavailable if a["format"] == "tensorrt")
    assert engine["status"] == "skipped" and "Int8Quantization" in engine["reason"] and "failed" in engine["reason"]
    assert fit_end_failures(trainer) == ["Int8Quantization: calibration images are all black"]


def test_a_failed_export_leaves_no_bundle_and_keeps_the_checkpoints(tmp_path):
    trainer = tiny_fit(tmp_path, [ONNXExport(exporter="torchscript", tolerance=-1.0), Int8Quantization(num_samples=32),
                                  DeployBundle(latency_iterations=3, throughput_iterations=2)])
    failures = fit_end_failures(trainer)
    assert len(failures) == 1 and failures[0].startswith("ONNXExport: ONNX Runtime disagrees with torch")
    assert not (tmp_path / "bundle").exists() and not (tmp_path / ".bundle-staging").exists()
    assert list((tmp_path / "checkpoints").glob("*.ckpt"))


@pytest.fixture(scope="module")
def prepared_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("calibration")
    model = tiny_model()
    fp32 = export_onnx(model.net.eval(), tmp / "model.onnx", (16, 16), exporter="torchscript")
    x = np.random.default_rng(0).standard_normal((512, 3, 16, 16)).astype(np.float32)
    return prepare_for_quantization(fp32, tmp / "prepared.onnx"), x, tmp


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
@pytest.mark.parametrize("count", [1, 7, 33, 500, 512])
def test_calibration_takes_any_sample_count_with_every_method(prepared_model, method, count):
    prepared, x, tmp = prepared_model
    out = tmp / f"int8-{method}-{count}.onnx"
    # batches of 32: 33 and 500 leave a short last batch, which crashed onnxruntime's histogram calibrators
    quantize_int8(prepared, out, array_batches(x[:count], batch_size=32), method=method)
    assert asymmetric_zero_points(out) == []
    model = onnx.load(str(out))
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) > 5
    logits = OnnxRuntimeRunner(str(out)).infer(x[:8])
    assert logits.shape == (8, 10) and np.isfinite(logits).all()


def test_an_int8_file_that_missed_its_gate_is_labelled_in_the_table_and_said_in_one_line():
    from pathlib import Path

    from callbacks import report
    from callbacks.bundle import gate_misses, gate_verdict
    from callbacks.records import OK, ArtifactRecord, FitEndRecord

    missed = ArtifactRecord("CpuInt8Quantization", "onnx-int8", "int8", "cpu", OK, file=Path("model.int8-cpu.onnx"),
                            facts={"quantization": {"gate_met": False, "delta_pts": -1.39, "max_drop_pts": 0.5}})
    met = ArtifactRecord("Int8Quantization", "onnx-int8", "int8", "tensorrt", OK, file=Path("model.int8.onnx"),
                         facts={"quantization": {"gate_met": True, "delta_pts": -0.1, "max_drop_pts": 0.5}})
    fp32 = ArtifactRecord("ONNXExport", "onnx", "fp32", "any", OK, file=Path("model.onnx"))
    assert [gate_verdict(a) for a in (missed, met, fp32)] == ["not met", "met", None]
    record = FitEndRecord()
    for art in (fp32, met, missed):
        record.publish(art)
    lines = gate_misses(record)
    assert len(lines) == 1 and lines[0].startswith("INT8 gate not met: model.int8-cpu.onnx (INT8 CPU-form) loses 1.39 pt")
    assert "0.5 pt allowed" in lines[0] and "QuantizationAwareTraining" in lines[0]
    rows = [{"label": "PyTorch FP32", "size_mb": 1, "latency_ms": 1, "throughput": 1, "top1": 0.9, "delta_pts": 0},
            {"label": "ONNX INT8 (CPU)", "size_mb": 1, "latency_ms": 1, "throughput": 1, "top1": 0.89,
             "delta_pts": -1, "gate": "not met"}]
    table = report.plain_table({"rows": rows})
    assert table.splitlines()[0].rstrip().endswith("INT8 gate") and table.splitlines()[-1].rstrip().endswith("not met")


def test_steps_run_in_the_order_their_inputs_allow_and_the_bundle_last():
    steps = [DeployBundle(), TensorRTBuild(precisions=["int8"]), ONNXExport(), Int8Quantization()]
    assert [type(s).__name__ for s in order_steps(steps)] == [
        "ONNXExport", "Int8Quantization", "TensorRTBuild", "DeployBundle"]
    listed = [ONNXExport(), Int8Quantization(), Int8Quantization(form="cpu"), TensorRTBuild(), DeployBundle()]
    assert order_steps(listed) == listed  # a list already in order runs as listed


class MakesMine(FitEndStep):
    PRODUCES = ("mine:fp32",)


class TakesMine(FitEndStep):
    def consumes(self):
        return ("mine:fp32",)


def test_a_missing_step_is_named_by_its_class_path_wherever_it_lives():
    with pytest.raises(ValueError, match=r"^test_fit_end_chain\.TakesMine needs mine:fp32, which no step in "
                                         r"trainer\.callbacks makes; add '- class_path: test_fit_end_chain\.MakesMine'"):
        order_steps([TakesMine(), DeployBundle(), ONNXExport()])
    assert [type(s).__name__ for s in order_steps([TakesMine(), MakesMine()])] == ["MakesMine", "TakesMine"]
