"""The offline TensorRT check passes what the house exports (FP32 and INT8 of both backbones) and names the node
behind each rule TensorRT's parser enforces: INT32 biases behind DequantizeLinear, asymmetric or unsigned Q/DQ,
per-channel activation scales, unknown or foreign-domain operators, opsets out of range."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploy.tensorrt_check import TensorRTCheckError, check_tensorrt

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = (32, 32)
BACKBONES = {
    "resnet": {"backbone": "resnet", "backbone_args": {"num_blocks": [1, 1, 1, 1], "width": 4}},
    "mobilenet_v2": {"backbone": "mobilenet_v2", "backbone_args": {"width_mult": 0.35}},
}


def _calibration(n: int = 16) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, *SIZE)).astype(np.float32)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """FP32, prepared and house-INT8 files of both backbones (random weights), made once for the module."""
    import torch

    from callbacks.onnx_export import export_onnx
    from callbacks.quantization import prepare_for_quantization, quantize_int8
    from lightning_modules import ImageClassifier

    out = tmp_path_factory.mktemp("trt_check")
    files = {}
    for name, kwargs in BACKBONES.items():
        torch.manual_seed(0)
        model = ImageClassifier(num_classes=10, input_size=SIZE, **kwargs)
        with torch.no_grad():  # as after training: non-zero BatchNorm shifts fold into real Conv biases
            for module in model.modules():
                if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.Linear)):
                    module.bias.uniform_(-0.1, 0.1)
        fp32 = export_onnx(model, out / f"{name}.onnx", SIZE)
        prepared = prepare_for_quantization(fp32, out / f"{name}.prepared.onnx")
        int8 = quantize_int8(prepared, out / f"{name}.int8.onnx", _calibration())
        files[name] = {"fp32": fp32, "prepared": prepared, "int8": int8}
    return files


def _ort_qdq(prepared, out, **options):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": _calibration()}])

        def get_next(self):
            return next(self.batches, None)

    activation = options.pop("activation_type", QuantType.QInt8)
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=activation, weight_type=QuantType.QInt8, extra_options=options)
    return out


def _model(nodes, initializers=(), opset=18, inputs=None, outputs=None, extra_opsets=()):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    imports = ([helper.make_opsetid("", opset)] if opset else []) + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    return helper.make_model(graph, opset_imports=imports)


def _qdq_relu(scale: np.ndarray, zero_point: np.ndarray, axis=None) -> onnx.ModelProto:
    """x -> QuantizeLinear -> DequantizeLinear -> Relu, with the given activation scale and zero point."""
    kw = {} if axis is None else {"axis": axis}
    return _model([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="act_q", **kw),
                   helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="act_dq", **kw),
                   helper.make_node("Relu", ["dq"], ["y"], name="relu")],
                  [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero_point, "zp")])


def _save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_the_house_exports_of_both_backbones_pass_tensorrt_10_and_11(exports, backbone, kind):
    for version in ("10", "11"):
        result = check_tensorrt(exports[backbone][kind], tensorrt=version)
        assert result["problems"] == [] and result["passed"] is True
        assert result["opset"] == 18 and result["tensorrt"] == version
        assert f"TensorRT {version}.x" in result["checked_against"]
        assert result["nodes"] == len(onnx.load(str(exports[backbone][kind])).graph.node)


def test_onnxruntime_default_int32_biases_are_rejected_naming_each_bias_node(exports, tmp_path):
    path = _ort_qdq(exports["mobilenet_v2"]["prepared"], tmp_path / "bias.onnx",
                    ActivationSymmetric=True, WeightSymmetric=True)  # QuantizeBias left at its default, True
    model = onnx.load(str(path))
    int32 = {i.name for i in model.graph.initializer if i.data_type == TensorProto.INT32}
    bias_dq = [n.name for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int32]
    assert len(bias_dq) > 10  # every folded Conv bias and the classifier's
    result = check_tensorrt(path)
    assert not result["passed"]
    assert len(result["problems"]) == len(bias_dq)
    for name, problem in zip(bias_dq, result["problems"]):
        assert f"node {name!r} (DequantizeLinear)" in problem and "INT32" in problem and "bias" in problem
        assert "QuantizeBias False" in problem


def test_uint8_asymmetric_activations_are_rejected(exports, tmp_path):
    from onnxruntime.quantization import QuantType

    path = _ort_qdq(exports["resnet"]["prepared"], tmp_path / "u8.onnx", activation_type=QuantType.QUInt8,
                    QuantizeBias=False)
    result = check_tensorrt(path)
    assert not result["passed"]
    assert any(p.startswith("node 'input_QuantizeLinear' (QuantizeLinear) writes UINT8") for p in result["problems"])
    assert any(p.startswith("node 'input_DequantizeLinear' (DequantizeLinear) reads UINT8") for p in result["problems"])
    assert any("'input_QuantizeLinear'" in p and "non-zero zero point" in p for p in result["problems"])


def test_one_non_zero_int8_zero_point_is_rejected_naming_its_node(exports, tmp_path):
    model = onnx.load(str(exports["resnet"]["int8"]))
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.name != "input_QuantizeLinear")
    zp = next(i for i in model.graph.initializer if i.name == q.input[2])
    zp.CopyFrom(numpy_helper.from_array(np.array(3, dtype=np.int8), zp.name))
    result = check_tensorrt(_save(model, tmp_path / "zp.onnx"))
    assert not result["passed"]
    assert any(p.startswith(f"node {q.name!r} (QuantizeLinear) has non-zero zero point") for p in result["problems"])


def test_per_channel_activation_scales_are_rejected_but_a_per_tensor_scale_passes(tmp_path):
    per_tensor = _qdq_relu(np.array(0.05, np.float32), np.array(0, np.int8))
    assert check_tensorrt(_save(per_tensor, tmp_path / "tensor.onnx"))["passed"]

    per_channel = _qdq_relu(np.full(4, 0.05, np.float32), np.zeros(4, np.int8), axis=1)
    problems = check_tensorrt(_save(per_channel, tmp_path / "channel.onnx"))["problems"]
    assert [p.split(" quantizes")[0] for p in problems] == ["node 'act_q' (QuantizeLinear)", "node 'act_dq' (DequantizeLinear)"]
    assert all("per channel (4 scales)" in p and "per-tensor" in p for p in problems)


def test_conv_weight_scales_must_be_per_output_channel_and_positive(tmp_path):
    def conv(scale: np.ndarray, axis: int) -> onnx.ModelProto:
        w = np.ones((8, 4, 3, 3), np.int8)
        return _model([helper.make_node("DequantizeLinear", ["w", "ws", "wzp"], ["wf"], name="w_dq", axis=axis),
                       helper.make_node("Conv", ["x", "wf"], ["y"], name="conv", pads=[1, 1, 1, 1])],
                      [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "ws"),
                       numpy_helper.from_array(np.zeros(len(scale), np.int8), "wzp")])

    assert check_tensorrt(_save(conv(np.full(8, 0.1, np.float32), 0), tmp_path / "ok.onnx"))["passed"]
    wrong_axis = check_tensorrt(_save(conv(np.full(4, 0.1, np.float32), 1), tmp_path / "axis.onnx"))["problems"]
    assert wrong_axis == ["node 'w_dq' (DequantizeLinear) quantizes the weight of node 'conv' (Conv) per channel on "
                          "axis 1; TensorRT needs axis 0 (the output channels K of KCRS)"]
    miscounted = check_tensorrt(_save(conv(np.full(6, 0.1, np.float32), 0), tmp_path / "count.onnx"))["problems"]
    assert miscounted and "has 6 scales for the 8 channels on axis 0" in miscounted[0]
    negative = np.full(8, 0.1, np.float32)
    negative[3] = -0.1
    problems = check_tensorrt(_save(conv(negative, 0), tmp_path / "negative.onnx"))["problems"]
    assert problems and "node 'w_dq'" in problems[0] and "not all positive" in problems[0]


def test_foreign_domain_and_unknown_operators_are_rejected_by_name(tmp_path):
    model = _model([helper.make_node("FusedConv", ["x"], ["a"], name="fused", domain="com.microsoft"),
                    helper.make_node("Frobnicate", ["a"], ["y"], name="frob")],
                   extra_opsets=[("com.microsoft", 1)])
    problems = check_tensorrt(_save(model, tmp_path / "ops.onnx"))["problems"]
    assert len(problems) == 2
    assert problems[0].startswith("node 'fused' (FusedConv) is in domain 'com.microsoft'")
    assert problems[1].startswith("node 'frob' (Frobnicate) is not in onnx-tensorrt's supported-operator list")


def test_an_op_only_tensorrt_11_lists_fails_10_and_passes_11(tmp_path):
    model = _model([helper.make_node("HannWindow", ["n"], ["y"], name="window")],
                   [numpy_helper.from_array(np.array(8, np.int64), "n")])
    path = _save(model, tmp_path / "window.onnx")
    assert check_tensorrt(path, "11")["passed"]
    assert check_tensorrt(path, "10")["problems"][0].startswith("node 'window' (HannWindow) is not in")


def test_opset_must_be_in_the_range_the_tensorrt_version_parses(tmp_path):
    def relu(opset):
        return _save(_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], opset=opset),
                     tmp_path / f"opset{opset}.onnx")

    assert check_tensorrt(relu(20), "10")["passed"]
    opset21 = check_tensorrt(relu(21), "10")
    assert opset21["opset"] == 21 and "opset is 21, outside the 9-20 that TensorRT 10.x parses" in opset21["problems"][0]
    assert check_tensorrt(relu(21), "11")["passed"]
    assert "outside the 9-25 that TensorRT 11.x parses" in check_tensorrt(relu(8), "11")["problems"][0]
    no_default = _save(_model([helper.make_node("Relu", ["x"], ["y"])], opset=None, extra_opsets=[("ai.onnx.ml", 3)]),
                       tmp_path / "nodefault.onnx")
    result = check_tensorrt(no_default)
    assert result["opset"] == 0 and "imports no default-domain (ai.onnx) opset" in result["problems"][0]


def test_resize_modes_tensorrt_lacks_are_named(tmp_path):
    model = _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", mode="cubic")],
                   [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    problems = check_tensorrt(_save(model, tmp_path / "resize.onnx"))["problems"]
    assert problems == ["node 'up' (Resize) has mode 'cubic'; TensorRT supports linear, nearest"]


def test_an_unknown_rule_set_or_unreadable_file_is_one_sentence(tmp_path):
    with pytest.raises(ValueError, match="tensorrt must be one of"):
        check_tensorrt(tmp_path / "x.onnx", "9")
    with pytest.raises(TensorRTCheckError, match="does not exist"):
        check_tensorrt(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(TensorRTCheckError, match="could not be read as an ONNX model"):
        check_tensorrt(tmp_path / "junk.onnx")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "deploy", "check-tensorrt", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_exit_codes_text_and_json(exports, tmp_path):
    ok = _cli(exports["resnet"]["int8"])
    nodes = len(onnx.load(str(exports["resnet"]["int8"])).graph.node)
    assert ok.returncode == 0 and ok.stdout.strip() == f"passes TensorRT 10.x rules (opset 18, {nodes} nodes)"

    bad_path = _save(_qdq_relu(np.full(4, 0.05, np.float32), np.zeros(4, np.int8), axis=1), tmp_path / "bad.onnx")
    bad = _cli(bad_path, "--tensorrt", "11")
    lines = bad.stdout.strip().splitlines()
    assert bad.returncode == 1 and len(lines) == 3 and lines[0].startswith("node 'act_q' (QuantizeLinear)")
    assert lines[-1].startswith("fails TensorRT 11") and "2 problem(s)" in lines[-1]  # the verdict, last
    as_json = json.loads(_cli(bad_path, "--json").stdout)
    assert as_json["passed"] is False and as_json["problems"] == lines[:-1] and as_json["opset"] == 18

    missing = _cli(tmp_path / "missing.onnx")
    assert missing.returncode == 2 and missing.stdout == ""
    assert "Traceback" not in missing.stderr and missing.stderr.strip().count("\n") == 0
    assert "missing.onnx does not exist" in missing.stderr
    assert _cli(bad_path, "--tensorrt", "9").returncode == 2  # argparse: not one of the rule sets


def test_a_file_with_many_problems_shows_a_few_and_ends_with_its_verdict():
    from deploy.tensorrt_check import SHOWN_PROBLEMS, format_result

    result = {"passed": False, "tensorrt": "10", "opset": 18, "nodes": 140,
              "problems": [f"node 'n{i}' (QuantizeLinear): zero point 128 is not 0" for i in range(110)]}
    lines = format_result(result).splitlines()
    assert len(lines) == SHOWN_PROBLEMS + 2 and "90 more" in lines[-2] and "--json" in lines[-2]
    assert lines[-1] == "fails TensorRT 10.x rules: 110 problem(s) (opset 18, 140 nodes); TensorRT's parser would refuse this file"


def test_the_checker_runs_where_torch_cannot_be_imported(exports):
    script = ("import sys; sys.modules['torch'] = None\n"
              "from deploy.tensorrt_check import check_tensorrt\n"
              f"print(check_tensorrt({str(exports['resnet']['int8'])!r})['passed'])\n"
              "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr[-2000:]
