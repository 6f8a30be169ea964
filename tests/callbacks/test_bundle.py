"""The fit-end chain as a user meets it: `fit` on the quickstart leaves a verified bundle in the run directory."""

import json
import re
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import pytorch_lightning as pl
import torch
from onnx import numpy_helper
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks import DeployBundle, Int8Quantization, ONNXExport, TensorRTBuild
from callbacks.quantization import asymmetric_zero_points, prepare_for_quantization, quantize_int8
from edgecls_testing import REPO, TINY, run_as_written, run_main, tiny_fit, tiny_model
from datamodules import ImageClassificationDataModule
from deploy.bundle import BundleError, load_bundle
from deploy.forms import device_qdq
from deploy.runners import RUNTIMES, OnnxRuntimeRunner
from lightning_modules import ImageClassifier


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, quickstart_path=str(REPO / "experiments" / "quickstart.yaml")):
    cwd = tmp_path_factory.mktemp("fit")
    proc = run_main(["fit", "--config", quickstart_path, *TINY, "--trainer.max_epochs", "2"], cwd)
    return cwd / "runs" / "quickstart" / "version_0", proc


def test_fit_writes_a_bundle_whose_manifest_validates_and_sha256s_match(fitted):
    run, proc = fitted
    bundle = load_bundle(run / "bundle", verify=True)  # schema, every sha256 and size checked
    files = sorted(p.name for p in (run / "bundle").iterdir())
    assert files == ["config.yaml", "confusion.png", "labels.txt", "manifest.json", "model.int8-cpu.onnx",
                     "model.int8.onnx", "model.onnx", "report.json", "report.md", "report.png"]
    assert not (run / ".bundle-staging").exists()
    assert [(a["format"], a["precision"], a["runtime"]) for a in bundle.artifacts] == [
        ("onnx", "fp32", "any"), ("onnx-int8", "int8", "tensorrt"), ("onnx-int8", "int8", "cpu")]
    assert [a["form"] for a in bundle.artifacts] == ["FP32", "INT8 TensorRT-form", "INT8 CPU-form"]
    assert bundle.classes == [str(i) for i in range(10)]
    assert bundle.manifest["task"]["input"]["shape"] == [3, 16, 16]
    assert bundle.manifest["preprocessing"]["resize"] == [16, 16]
    assert bundle.manifest["source"]["checkpoint"].startswith("checkpoints/epoch")
    assert {"torch", "onnx", "onnxruntime"} <= set(bundle.manifest["versions"])
    # TensorRT is absent here: its engines are listed as skipped, with the reason, not silently missing
    skipped = bundle.unavailable
    assert [(s["format"], s["precision"], s["status"]) for s in skipped] == [("tensorrt", "fp16", "skipped"), ("tensorrt", "int8", "skipped")]
    assert all("tensorrt" in s["reason"] for s in skipped)
    # the files meant for TensorRT pass the offline check of its documented rules; the CPU form (uint8
    # activations, which TensorRT refuses by design) is not checked
    checks = {a["file"]: a.get("tensorrt_check") for a in bundle.artifacts}
    assert checks["model.int8-cpu.onnx"] is None
    assert all(checks[f]["passed"] and not checks[f]["problems"] for f in ("model.onnx", "model.int8.onnx"))
    assert bundle.artifact("onnx-int8")["quantization"]["method"] == "ptq"
    for a in bundle.artifacts:
        assert 0.0 <= a["metrics"]["top1"] <= 1.0 and a["metrics"]["latency_ms"] > 0 and a["metrics"]["throughput"] > 0
    # the table is printed at the end of the fit, after one caption line saying what its columns mean; each row
    # names the file's form and the runtime that measured it here, never a runtime it did not run on
    out = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(out) if line.startswith("artifact  "))
    caption = out[header - 1]
    assert caption.startswith("Measured on CPU ") and "each row by the runtime it names" in caption
    assert "latency ms = p50 of 100 batch-1 calls; img/s at batch 32; top-1 on the test split (" in caption
    assert "INT8 gate = the file's Δ on the validation split within max_drop" in caption
    assert out[header].split() == ["artifact", "file", "runtime", "size", "MB", "latency", "ms", "img/s", "top-1",
                                   "%", "Δtop-1", "pt", "INT8", "gate"]
    table = out[header + 2:]
    table = table[:next(i for i, line in enumerate(table) if ": skipped: " in line or line.startswith("bundle: "))]
    assert table[0].startswith("FP32 checkpoint ") and " PyTorch " in table[0]
    assert any(re.match(r"INT8 TensorRT-form +model\.int8\.onnx +ONNX Runtime ", line) for line in table), table
    assert any(re.match(r"INT8 CPU-form +model\.int8-cpu\.onnx +OpenVINO ", line) for line in table), table
    assert not any(f" {word} " in line for line in table for word in ("any", "tensorrt", "cpu", "TensorRT"))
    # both engines skip for one reason, said once
    assert "TensorRT FP16, TensorRT INT8: skipped: " in proc.stdout


def test_why_tensorrt_was_skipped_is_said_once_in_the_bundle_table(fitted):
    _, proc = fitted
    line = next(line for line in proc.stdout.splitlines() if line.startswith("TensorRT FP16, TensorRT INT8: skipped: "))
    reason = line.split(": skipped: ", 1)[1]  # e.g. tensorrt is not importable (...); install it with ...
    assert (proc.stdout + proc.stderr).count(reason) == 1
    assert "TensorRT build skipped (the bundle table says why)" in proc.stderr


def test_report_rows_match_an_independent_evaluation_on_the_test_split(fitted):
    run, _ = fitted
    report = json.loads((run / "bundle" / "report.json").read_text())
    # every ONNX file is also measured in OpenVINO where it is installed (it is, in [dev])
    onnxruntime_rows = [r for r in report["rows"] if not r["runtime"].startswith("openvino")]
    assert [r["label"] for r in onnxruntime_rows] == ["PyTorch FP32", "ONNX FP32", "ONNX INT8", "ONNX INT8 (CPU)"]
    assert [r["label"] for r in report["rows"] if r["runtime"] == "openvino"] == [
        "ONNX FP32 · openvino", "ONNX INT8 · openvino", "ONNX INT8 (CPU) · openvino"]
    # where the CPU computes in bf16, the FP32 file run in bf16 is its own row, scored, and kept in the manifest
    bf16_rows = [r for r in report["rows"] if r["runtime"] == "openvino-bf16"]
    assert [(r["label"], r["precision"]) for r in bf16_rows] == (
        [("ONNX FP32 · openvino-bf16", "bf16")] if RUNTIMES["openvino-bf16"].available() else [])
    for row in bf16_rows:
        assert row["delta_pts"] == pytest.approx(100 * (row["top1"] - report["rows"][0]["top1"]))
        assert abs(row["top1"] - onnxruntime_rows[1]["top1"]) <= 0.003  # within 0.3 pt of the exact FP32 file
        fp32_entry = load_bundle(run / "bundle").artifact("onnx", "fp32")
        assert fp32_entry["runtime_metrics"]["openvino-bf16"]["top1"] == pytest.approx(row["top1"])
    data = ImageClassificationDataModule(image_size=16)
    data.setup("test")
    x = torch.cat([data.normalize(b[0]) for b in data.test_dataloader()]).numpy()
    y = torch.cat([b[1] for b in data.test_dataloader()]).numpy()
    # the bundle's confusion matrix (confusion.png, report.json) is the FP32 ONNX's on the same images
    matrix = np.array(report["confusion"]["rows_true_columns_predicted"])
    assert matrix.sum() == len(y) and np.trace(matrix) / len(y) == pytest.approx(onnxruntime_rows[1]["top1"])
    # TensorRT's INT8 file is scored with its Q/DQ as written (what TensorRT computes), the others as ONNX Runtime
    # runs them on this CPU; the manifest and report.md say so for that file only
    for row, name in zip(onnxruntime_rows[1:], ["model.onnx", "model.int8.onnx", "model.int8-cpu.onnx"], strict=True):
        path = run / "bundle" / name
        logits = run_as_written(path, x) if name == "model.int8.onnx" else OnnxRuntimeRunner(str(path)).infer(x)
        assert row["top1"] == pytest.approx(float((logits.argmax(1) == y).mean()))
    measured = {a["file"]: a["metrics"].get("measured_as") for a in load_bundle(run / "bundle").artifacts}
    assert measured["model.onnx"] is None and measured["model.int8-cpu.onnx"] is None
    as_written = "ONNX Runtime, Q/DQ run as written (TensorRT's arithmetic)"
    # its latency as a device here runs it: as written too where the fused kernels saturate (x86 without VNNI)
    timed_as_written = device_qdq("onnx-int8", "tensorrt", "onnxruntime") == "exact"
    assert measured["model.int8.onnx"] == (f"top-1 and latency: {as_written}" if timed_as_written
                                           else f"top-1: {as_written}; latency: its fused int8 kernels")
    markdown = (run / "bundle" / "report.md").read_text()
    assert "| INT8 TensorRT-form | model.int8.onnx | ONNX Runtime |" in markdown
    assert f"**model.int8.onnx in ONNX Runtime, measured**: {measured['model.int8.onnx']}" in markdown
    assert "\nMeasured on CPU " in markdown and "img/s at batch 32" in markdown
    acc = EventAccumulator(str(run), size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    assert "bundle/report/text_summary" in acc.Tags()["tensors"] and "bundle/report" in acc.Tags()["images"]


def test_the_exact_runner_computes_the_tensorrt_form_file_as_written(fitted):
    run, _ = fitted
    data = ImageClassificationDataModule(image_size=16)
    data.setup("test")
    x = data.normalize(next(iter(data.test_dataloader()))[0]).numpy()
    path = run / "bundle" / "model.int8.onnx"
    # bit for bit the unoptimized graph's logits, on any CPU: ONNX Runtime's fused int8 kernels are not in the way
    np.testing.assert_array_equal(OnnxRuntimeRunner(str(path), qdq="exact").infer(x), run_as_written(path, x))
    with pytest.raises(ValueError, match="qdq 'as-written' is not one of"):
        OnnxRuntimeRunner(str(path), qdq="as-written")


def test_onnx_matches_the_best_checkpoint_at_batch_1_and_n(fitted):
    run, _ = fitted
    best = next((run / "checkpoints").glob("epoch*.ckpt"))
    model = ImageClassifier.load_from_checkpoint(best, map_location="cpu").eval()
    data = ImageClassificationDataModule(image_size=16)
    data.setup("fit")
    x = data.normalize(next(iter(data.val_dataloader()))[0][:7])
    runner = OnnxRuntimeRunner(str(run / "bundle" / "model.onnx"))
    assert runner.input_name == "input" and runner.output_name == "logits"
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(runner.infer(x[:1].numpy()), expected[:1], atol=1e-4)
    np.testing.assert_allclose(runner.infer(x.numpy()), expected, atol=1e-4)
    assert not list((run / "bundle").glob("*.data"))  # one file, no external weights


def test_int8_zero_points_are_int8_zeros_so_tensorrt_accepts_it(fitted):
    run, _ = fitted
    path = run / "bundle" / "model.int8.onnx"
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 20
    activation_zps = [inits[n.input[2]] for n in qdq if len(n.input) > 2]
    assert activation_zps and all(z.data_type == onnx.TensorProto.INT8 for z in activation_zps)
    # biases stay float: TensorRT rejects a DequantizeLinear whose input is INT32
    dq_inputs = [inits[n.input[0]] for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert dq_inputs and all(t.data_type == onnx.TensorProto.INT8 for t in dq_inputs)
    convs = [n for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2]
    assert convs and all(inits[c.input[2]].data_type == onnx.TensorProto.FLOAT for c in convs if c.input[2] in inits)
    assert all(not numpy_helper.to_array(z).any() for z in activation_zps)
    assert asymmetric_zero_points(path) == []
    assert os.path.getsize(path) < os.path.getsize(run / "bundle" / "model.onnx")  # the ratio is measured in benchmarks/compression.py


def test_the_device_runtime_serves_the_bundle(fitted, tmp_path):
    run, _ = fitted
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    paths = []
    for i in range(20):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.rint(digits.images[i] * 255 / 16).astype(np.uint8)).save(path)
        paths.append(str(path))
    out = subprocess.run([sys.executable, "-m", "deploy", "infer", "--bundle", str(run / "bundle"), *paths],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    predicted = [int(json.loads(line)["top"][0]["class"]) for line in out.splitlines()]
    assert np.mean(np.array(predicted) == digits.target[:20]) >= 0.5  # a 2-epoch, width-4 model: well above chance


class StateAtFitEnd(pl.Callback):
    """Listed first, so it sees the trained module just before the fit-end steps run."""

    def on_fit_end(self, trainer, pl_module):
        self.training = pl_module.training
        self.state = {k: v.clone() for k, v in pl_module.state_dict().items()}


def test_gate_keeps_the_most_harmful_nodes_in_fp32(capsys, tmp_path):
    quant = Int8Quantization(num_samples=128, max_drop=-100.0, max_excluded=2)  # a gate no model passes
    before = StateAtFitEnd()
    model = tiny_model()
    tiny_fit(tmp_path, [before, ONNXExport(exporter="torchscript"), quant,
                        DeployBundle(latency_iterations=5, throughput_iterations=2)], model=model)
    # the miss is said once, after the table (DeployBundle prints it here, with no CLI to defer it), and labelled
    missed = capsys.readouterr().out
    assert "INT8 gate not met: model.int8.onnx (INT8 TensorRT-form) loses" in missed and "more than the -100.0 pt allowed" in missed
    int8 = next(a for a in load_bundle(tmp_path / "bundle").artifacts if a["format"] == "onnx-int8")
    assert int8["gate"] == "not met"

    # the fit-end steps worked on a copy: the trained module's mode and weights are as they were
    assert model.training == before.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, before.state[name]), name

    report = json.loads((tmp_path / "bundle" / "report.json").read_text())["steps"]["Int8Quantization"]
    attempts = report["attempts"]
    assert [a["excluded"] for a in attempts] == [0, 1, 2] and not report["gate_met"]
    # the search kept the best attempt (fewest nodes on a tie), and the report says which nodes stay FP32
    best = max(attempts, key=lambda a: (a["int8_top1"], -a["excluded"]))
    assert report["excluded_nodes"] == best["nodes"] and report["int8_top1"] == best["int8_top1"]
    text = (tmp_path / "bundle" / "report.md").read_text()
    assert "NOT met" in text and all(name in text for name in report["excluded_nodes"])

    # an excluded node really runs in FP32: its weights stay FP32 initializers, not dequantized INT8
    prepared = prepare_for_quantization(tmp_path / "bundle" / "model.onnx", tmp_path / "prepared.onnx")
    x = np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32)
    nodes = attempts[2]["nodes"]
    int8 = onnx.load(str(quantize_int8(prepared, tmp_path / "excluded.onnx", x, nodes_to_exclude=nodes)))
    fp32_weights = {i.name for i in int8.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 4}
    convs = {n.name: n for n in int8.graph.node if n.op_type == "Conv"}
    assert len(nodes) == 2
    for name in nodes:
        if name in convs:
            assert convs[name].input[1] in fp32_weights, f"{name} still has INT8 weights"
    assert sum(c.input[1] in fp32_weights for c in convs.values()) == sum(n in convs for n in nodes)


@pytest.mark.parametrize("callbacks,message", [
    ([TensorRTBuild(precisions=["fp16"])], "TensorRTBuild needs onnx:fp32, .*callbacks.ONNXExport"),
    ([ONNXExport(), TensorRTBuild(precisions=["int8"])], "TensorRTBuild needs onnx-int8:int8@tensorrt, .*callbacks.Int8Quantization"),
])
def test_a_missing_step_is_one_sentence_at_fit_start(callbacks, message, tmp_path):
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, default_root_dir=tmp_path, callbacks=callbacks,
                         enable_progress_bar=False)
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        trainer.fit(model, datamodule=ImageClassificationDataModule(image_size=16))
    assert trainer.global_step == 0  # refused before any training


KILL_DURING_BUNDLE = """
import os, signal, sys
import callbacks.bundle as bundle
def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # as a power cut or the OOM killer would, mid-write
bundle.write_manifest = killed
sys.argv = ["main.py"] + sys.argv[1:]
from cli.app import cli_main
cli_main()
"""


def test_a_fit_killed_while_the_bundle_is_written_leaves_no_manifest(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_BUNDLE, "fit", "--config", str(REPO / "experiments" / "quickstart.yaml"),
                           *TINY, "--trainer.max_epochs", "1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    run = tmp_path / "runs" / "quickstart" / "version_0"
    assert (run / ".bundle-staging" / "model.int8.onnx").is_file()  # it was killed well into the bundle
    assert not (run / "bundle").exists()
    with pytest.raises(BundleError, match="manifest"):
        load_bundle(run / ".bundle-staging")


def test_a_file_that_scores_lower_in_another_runtime_is_said_under_the_table_and_not_in_the_leaderboard():
    from callbacks.report import leaderboard_values, runtime_gaps

    def row(file, runtime, top1, other=False):
        return {"file": file, "runtime": runtime, "top1": top1, "precision": "int8" if "int8" in file else "fp32",
                "format": "onnx-int8" if "int8" in file else "onnx", "latency_ms": 1.0,
                "delta_pts": 100 * (top1 - 0.98), **({"other_runtime": True} if other else {})}

    # the quickstart's figures on a Zen 3 (AVX2, no VNNI): OpenVINO's int8 kernels saturate on TensorRT's form
    report = {"rows": [row("epoch006.ckpt", "pytorch", 0.98), row("model.onnx", "onnxruntime", 0.98),
                       row("model.onnx", "openvino", 0.98, True), row("model.int8.onnx", "onnxruntime", 0.9749),
                       row("model.int8.onnx", "openvino", 0.9359, True),
                       row("model.int8-cpu.onnx", "onnxruntime", 0.9777),
                       row("model.int8-cpu.onnx", "openvino", 0.9772, True)]}
    (line,) = runtime_gaps(report)
    assert line.startswith("model.int8.onnx in OpenVINO scores 93.59 % against 97.49 % in ONNX Runtime")
    assert leaderboard_values(report)["bundle/int8_delta_top1_pt"] == pytest.approx(-0.51)


def test_report_picture_names_rows_as_the_table_does_and_labels_piled_points_apart():
    """report.png: equal-accuracy points at similar latency get one label "2, 3, 4, 5" above them (their numbers
    used to print over each other as "2345"), and each row is named by its form and runtime, as the table is."""
    from callbacks.report import figure, figure_label, overlapping_points

    row = lambda label, form, runtime, ms, top1: {"label": label, "form": form, "runtime": runtime, "latency_ms": ms,  # noqa: E731
                                                  "top1": top1, "size_mb": 0.2, "delta_pts": 0.0, "throughput": 1.0}
    rows = [row("PyTorch FP32", "FP32 checkpoint", "pytorch", 3.0, 0.98), row("ONNX FP32", "FP32", "onnxruntime", 0.30, 0.98),
            row("ONNX FP32 · openvino", "FP32", "openvino", 0.31, 0.98),
            row("ONNX INT8", "INT8 TensorRT-form", "onnxruntime", 0.29, 0.98),
            row("ONNX INT8 · openvino", "INT8 TensorRT-form", "openvino", 0.32, 0.98)]
    assert figure_label(rows[3]) == "INT8 TensorRT-form · ONNX Runtime"
    assert overlapping_points([r["latency_ms"] for r in rows], [100 * r["top1"] for r in rows], 1.0) == [[0], [1, 2, 3, 4]]
    fig = figure({"rows": rows, "name": "quickstart", "test_samples": 359})
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["1", "2, 3, 4, 5"], texts
    names = [t.get_text().splitlines()[0] for t in fig.axes[1].get_yticklabels()]
    assert names[3] == "4  INT8 TensorRT-form · ONNX Runtime" and not any("ONNX INT8" in n for n in names)


def test_the_leaderboard_delta_is_rounded_as_the_table_rounds_it():
    from callbacks.report import leaderboard_values

    def report(delta):
        return {"rows": [{"label": "PyTorch FP32"}, {"precision": "int8", "delta_pts": delta, "latency_ms": 1.0}]}

    assert leaderboard_values(report(-100 / 359))["bundle/int8_delta_top1_pt"] == -0.28
    assert str(leaderboard_values(report(-1e-9))["bundle/int8_delta_top1_pt"]) == "0.0"
