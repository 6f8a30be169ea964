"""Int8Quantization's CPU form: a tiny digits fit leaves model.int8-cpu.onnx (U8S8 on x86) beside TensorRT's
symmetric file, two instances of one step class, both behind the accuracy gate and both scored on the test split
in the manifest."""

import json

import numpy as np
import pytest
import pytorch_lightning as pl

from callbacks import CpuInt8Quantization, DeployBundle, Int8Quantization, ONNXExport
from callbacks.int8_forms import activation_zero_point_types, asymmetric_zero_points, cpu_family
from callbacks.fit_end import fit_end_record, numpy_batches
from datamodules import ImageClassificationDataModule
from deploy.bundle import load_bundle
from deploy.runners import OnnxRuntimeRunner
from edgecls_testing import run_as_written, tiny_fit


@pytest.fixture(scope="module")
def cpu_fit(tmp_path_factory):
    root = tmp_path_factory.mktemp("cpu_int8")
    pl.seed_everything(0)
    trainer = tiny_fit(root, [ONNXExport(exporter="torchscript"), Int8Quantization(num_samples=128),
                              Int8Quantization(form="cpu", num_samples=128, max_drop=1.0),
                              DeployBundle(latency_iterations=5, throughput_iterations=2)],
                       max_epochs=2, limit_train_batches=8)
    return root / "bundle", trainer


def test_the_cpu_int8_file_is_u8s8_on_x86_and_tensorrts_stays_symmetric(cpu_fit):
    bundle_dir, _ = cpu_fit
    cpu, trt = bundle_dir / "model.int8-cpu.onnx", bundle_dir / "model.int8.onnx"
    expected = {"x86_64": {"UINT8"}, "aarch64": {"INT8"}}[cpu_family()]
    assert activation_zero_point_types(cpu) == expected
    assert activation_zero_point_types(trt) == {"INT8"} and asymmetric_zero_points(trt) == []
    if cpu_family() == "x86_64":
        assert asymmetric_zero_points(cpu)  # uint8 zero points: TensorRT would refuse this file, by design


def test_both_int8_files_pass_their_gate_and_are_scored_in_the_manifest_with_their_runtime(cpu_fit):
    bundle_dir, _ = cpu_fit
    bundle = load_bundle(bundle_dir, verify=True)
    by_file = {a["file"]: a for a in bundle.artifacts}
    assert list(by_file) == ["model.onnx", "model.int8.onnx", "model.int8-cpu.onnx"]
    cpu, trt = by_file["model.int8-cpu.onnx"], by_file["model.int8.onnx"]
    assert (cpu["format"], cpu["precision"], cpu["runtime"]) == ("onnx-int8", "int8", "cpu")
    assert cpu["label"] == "ONNX INT8 (CPU)"
    assert trt["runtime"] == "tensorrt"
    q = cpu["quantization"]
    assert q["gate_met"] and q["method"] == "ptq" and q["cpu_family"] == cpu_family()
    assert q["activations"] == ("QUInt8" if cpu_family() == "x86_64" else "QInt8") and q["quant_format"] == "QDQ"
    assert -q["delta_pts"] <= 1.0
    # the manifest's test top-1 is what ONNX Runtime gives on the test split, file by file
    data = ImageClassificationDataModule(image_size=16)
    data.setup("test")
    x = np.concatenate([data.normalize(b[0]).numpy() for b in data.test_dataloader()])
    y = np.concatenate([b[1].numpy() for b in data.test_dataloader()])
    top1 = float((OnnxRuntimeRunner(str(bundle_dir / cpu["file"])).infer(x).argmax(1) == y).mean())
    assert cpu["metrics"]["top1"] == pytest.approx(top1)
    labels = [r["label"] for r in json.loads((bundle_dir / "report.json").read_text())["rows"] if r["runtime"] in ("pytorch", "onnxruntime")]
    assert labels == ["PyTorch FP32", "ONNX FP32", "ONNX INT8", "ONNX INT8 (CPU)"]


def test_each_gate_scores_its_file_as_the_runtime_it_is_for_computes_it(cpu_fit):
    bundle_dir, trainer = cpu_fit
    by_file = {a["file"]: a["quantization"] for a in load_bundle(bundle_dir).artifacts if a["format"] == "onnx-int8"}
    trt, cpu = bundle_dir / "model.int8.onnx", bundle_dir / "model.int8-cpu.onnx"
    val = list(numpy_batches(trainer.datamodule.val_dataloader()))
    y = np.concatenate([labels for _, labels in val])

    def top1(logits) -> float:
        return float((np.concatenate(logits).argmax(1) == y).mean())

    # TensorRT's file: the gate's top-1 is the file's own arithmetic (every node as written), never the number ONNX
    # Runtime's fused int8 kernels give, which on x86 without VNNI saturate on its full 8-bit weights
    assert by_file["model.int8.onnx"]["int8_top1"] == pytest.approx(top1([run_as_written(trt, x) for x, _ in val]))
    assert by_file["model.int8.onnx"]["accuracy_as"] == "ONNX Runtime, Q/DQ run as written (TensorRT's arithmetic)"
    # the CPU form is made for those kernels, and scored by them
    fused = OnnxRuntimeRunner(str(cpu))
    assert by_file["model.int8-cpu.onnx"]["int8_top1"] == pytest.approx(top1([fused.infer(x) for x, _ in val]))
    assert "accuracy_as" not in by_file["model.int8-cpu.onnx"]


def test_tensorrt_still_finds_the_symmetric_file_and_cpu_runtimes_the_cpu_one(cpu_fit):
    bundle_dir, trainer = cpu_fit
    record = fit_end_record(trainer)
    assert record.find("onnx-int8", "int8", runtime="tensorrt").file.name == "model.int8.onnx"
    from deploy.selection import resolve

    bundle = load_bundle(bundle_dir)
    assert bundle.artifact("onnx-int8")["file"] == "model.int8.onnx"  # first listed: Triton's GPU default
    choice = resolve(bundle, "onnxruntime", "onnx-int8", None, ["cpu"], None, None)
    assert (choice.entry["file"], choice.runtime) == ("model.int8-cpu.onnx", "onnxruntime")


def test_each_form_reports_under_its_own_step_name_and_checkpoint_state_key(cpu_fit):
    bundle_dir, trainer = cpu_fit
    steps = [c for c in trainer.callbacks if isinstance(c, Int8Quantization)]
    assert [(s.form, s.name, s.state_key) for s in steps] == [
        ("tensorrt", "Int8Quantization", "Int8Quantization"), ("cpu", "CpuInt8Quantization", "CpuInt8Quantization")]
    report = json.loads((bundle_dir / "report.json").read_text())["steps"]
    assert report["Int8Quantization"]["num_samples"] == report["CpuInt8Quantization"]["num_samples"] == 128
    assert report["CpuInt8Quantization"]["cpu_family"] == cpu_family()
    assert "cpu_family" not in report["Int8Quantization"]


def test_a_target_that_is_not_a_cpu_family_is_one_sentence():
    with pytest.raises(ValueError, match="target 'sparc' is not a CPU family it knows; set target to one of"):
        Int8Quantization(form="cpu", target="sparc")


@pytest.mark.parametrize("options, said", [
    ({"target": "x86_64"}, "Int8Quantization target applies to form cpu only; set form: cpu, or drop target"),
    ({"quant_format": "qdq", "reduce_range": True}, "quant_format and reduce_range apply to form cpu only"),
    ({"form": "cpu", "mode": "dynamic"}, "mode 'dynamic' is form tensorrt's .* form cpu is static only"),
    ({"form": "gpu"}, "form 'gpu' is not one of \\['cpu', 'tensorrt'\\]"),
])
def test_options_of_the_other_form_are_one_sentence(options, said):
    with pytest.raises(ValueError, match=said):
        Int8Quantization(**options)


def test_the_former_cpu_class_still_parses_says_it_is_deprecated_and_is_the_cpu_form():
    with pytest.warns(FutureWarning, match="CpuInt8Quantization is deprecated: list callbacks.Int8Quantization "
                                           "with init_args {form: cpu}"):
        old = CpuInt8Quantization(num_samples=64, method="entropy", target="aarch64", quant_format="qoperator")
    assert isinstance(old, Int8Quantization) and old.form == "cpu" and old.name == "CpuInt8Quantization"
    assert (old.num_samples, old.method, old.family, old.quant_format) == (64, "entropy", "aarch64", "qoperator")
    assert old.produces() == ("onnx-int8:int8@cpu",)


def test_every_conv_of_the_cpu_int8_file_runs_as_an_integer_kernel_in_onnx_runtime(cpu_fit, tmp_path):
    """The Q/DQ pairs around each Conv fuse into QLinearConv: no float Conv is left between a DequantizeLinear
    and a QuantizeLinear (each such leftover converts a whole activation tensor twice per call)."""
    import onnx
    import onnxruntime as ort

    bundle_dir, _ = cpu_fit
    fp32_convs = sum(n.op_type == "Conv" for n in onnx.load(str(bundle_dir / "model.onnx")).graph.node)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(bundle_dir / "model.int8-cpu.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    kept = json.loads((bundle_dir / "manifest.json").read_text())
    kept = next(a for a in kept["artifacts"] if a["file"] == "model.int8-cpu.onnx")["quantization"]["excluded_nodes"]
    assert ops.count("QLinearConv") == fp32_convs - len(kept) > 0
    assert ops.count("Conv") == len(kept)
    assert ops.count("QuantizeLinear") + ops.count("DequantizeLinear") <= 2 + 2 * len(kept)  # model input and output


def test_a_run_config_saved_with_the_former_cpu_class_still_parses(quickstart, tmp_path, capsys):
    import yaml

    from cli.app import cli_main

    config = yaml.safe_load(open(quickstart))
    config["trainer"]["callbacks"] = [  # as a fit's config.yaml lists them, every argument written out
        {"class_path": "callbacks.ONNXExport"},
        {"class_path": "callbacks.CpuInt8Quantization", "init_args": {
            "num_samples": 512, "method": "minmax", "per_channel": True, "max_drop": 0.5, "max_excluded": 8,
            "calibration_batch": 16, "target": "auto", "quant_format": "qdq", "reduce_range": None}},
        {"class_path": "callbacks.DeployBundle"}]
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as done:
        cli_main(["fit", "--config", str(saved), "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)["trainer"]["callbacks"][1]
    assert printed["class_path"] == "callbacks.CpuInt8Quantization"
    assert printed["init_args"]["target"] == "auto"


def test_a_missed_gate_whose_search_kept_no_node_says_it_tried():
    """The README's StripesSource example misses the gate and keeps no node: the INT8 line says the worst nodes were
    tried in FP32 and scored no higher, not a bare `0 node(s) kept` beside a README that says nodes are kept."""
    from callbacks.quantization import kept_in_fp32

    def attempt(k):
        return {"excluded": k, "nodes": [f"n{i}" for i in range(k)], "int8_top1": 0.5, "delta_pts": -10.0}

    missed = {"gate_met": False, "excluded_nodes": [], "attempts": [attempt(0), attempt(1), attempt(2), attempt(4)]}
    assert kept_in_fp32(missed) == "keeping the worst 1, 2, 4 node(s) in FP32 scored no higher on val, so none is kept"
    # nodes kept although the line's Δ is 0: the line says the all-INT8 file lost more than the gate allows
    assert kept_in_fp32({"gate_met": False, "excluded_nodes": ["a", "b"], "attempts": [attempt(0), attempt(2)]}) == \
        "2 node(s) kept in FP32, as every node in INT8 lost 10.00 pt"
    assert kept_in_fp32({"gate_met": True, "excluded_nodes": [], "attempts": [attempt(0)]}) == "0 node(s) kept in FP32"
