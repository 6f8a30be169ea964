"""Check an ONNX file against TensorRT's documented ONNX-parser rules, offline: no GPU, no TensorRT, no torch.

Where each rule comes from (onnx/onnx-tensorrt, read from the repository):
- TensorRT 10.x (the Jetson path, JetPack 6 ships 10.3): `docs/operators.md` on branch 10.1-GA (commit 96e7811,
  2024-06-17, the newest 10.x branch in the repository; its header still says "TensorRT 10.0 supports operators in
  the inclusive range of opset 9 to opset 20"), plus `docs/Changelog.md`: 10.2 and 10.3 add no operators, 10.3
  accepts tensor `axes` for Slice, tensor `axes` for Pad only arrives in 10.4.
- TensorRT 11.x: no 11.x operators.md was available offline; the operator list is the newest parser document found,
  TensorRT 10.15's (`opset 9 to opset 24`; it adds Attention, the window ops, RMSNormalization, RotaryEmbedding,
  STFT and TensorScatter to 10.1's list), and the opset ceiling 25 is taken from NVIDIA's 11.x notes as recorded in
  shared/TENSORRT.md. A model that passes this set uses nothing TensorRT 11 is documented to lack.
- Q/DQ: the operators.md rows (QuantizeLinear: FP32/FP16/BF16 in, `y_zero_point` must be 0; DequantizeLinear:
  INT8/FP8/INT4 in, FP4 too from the 10.15 list, `x_zero_point` must be zero) and the parser's
  `QuantDequantLinearHelper` (onnxOpImporters.cpp, 10.1-GA): UINT8 data is refused, constant scales must be all
  positive and FP32/FP16/BF16, a scale of more than one value is per-channel "weight-quantization with dimensions
  KCRS (K is # output channels). Activations-quantization does not support per-axis quantization", and the number of
  scales must equal the quantized dimension. INT32 into DequantizeLinear (a quantized bias) fails when the layer is
  added ("only activation types allowed as input to this layer": NVIDIA/TensorRT#4542, onnx/onnx-tensorrt#850).
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper


class TensorRTCheckError(ValueError):
    """The file cannot be checked at all (missing, unreadable, not ONNX); the message says which and what to do."""


# Every operator marked "Y" in onnx-tensorrt docs/operators.md, branch 10.1-GA.
SUPPORTED_OPS_10 = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather GatherElements
GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LRN
LSTM LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul Max
MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or PRelu Pad
ParametricSoftplus Pow QuantizeLinear RNN RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign Round ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

# TensorRT 10.15's operators.md: 10.1's list plus these (nothing 10.1 lists was dropped).
SUPPORTED_OPS_11 = SUPPORTED_OPS_10 | frozenset(
    "Attention BlackmanWindow HammingWindow HannWindow RMSNormalization RotaryEmbedding STFT TensorScatter".split())

_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16,
           TensorProto.DOUBLE}  # DOUBLE: "TensorRT will attempt to cast DOUBLE down to FLOAT"
_INTS = {TensorProto.INT32, TensorProto.INT64}

# The "Supported Types" column for the operators a CNN classifier export uses (identical in 10.1-GA and 10.15),
# with the inputs that carry data (shape/axes inputs are INT64 by the ONNX spec and are not listed there).
OP_TYPES = {
    **{op: (_FLOATS, (0, 1)) for op in ("Conv", "ConvTranspose", "Gemm", "MatMul")},
    **{op: (_FLOATS, (0,)) for op in ("BatchNormalization", "Clip", "HardSwish", "HardSigmoid", "GlobalAveragePool",
                                      "AveragePool", "MaxPool", "Sigmoid", "Softmax", "Resize", "QuantizeLinear")},
    **{op: (_FLOATS | _INTS, None) for op in ("Add", "Mul", "Sub", "Div")},
    **{op: (_FLOATS | _INTS, (0,)) for op in ("Relu", "Pad", "ReduceMean")},
    **{op: (_FLOATS | _INTS | {TensorProto.BOOL}, (0,)) for op in ("Flatten", "Reshape", "Split", "Transpose")},
    "Concat": (_FLOATS | _INTS | {TensorProto.BOOL}, None),
}

# "TensorRT supports the following ONNX data types: DOUBLE, FLOAT32, FLOAT16, BFLOAT16, INT32, INT64, FP8, INT8,
# INT4, UINT8, and BOOL" (10.1-GA); 10.15 adds FP4.
DATA_TYPES_10 = _FLOATS | _INTS | {TensorProto.INT8, TensorProto.UINT8, TensorProto.BOOL, TensorProto.FLOAT8E4M3FN,
                                   TensorProto.INT4}
DATA_TYPES_11 = DATA_TYPES_10 | {TensorProto.FLOAT4E2M1}

RULES = {
    "10": {"ops": SUPPORTED_OPS_10, "opset": (9, 20), "types": DATA_TYPES_10,
           "quantized": {TensorProto.INT8, TensorProto.FLOAT8E4M3FN, TensorProto.INT4},
           "pad_axes_constant": True, "label": "TensorRT 10.x",
           "checked_against": "TensorRT 10.x (10.3, JetPack 6): onnx-tensorrt docs/operators.md at 10.1-GA (96e7811) "
                              "with the 10.2/10.3 changelog, parser Q/DQ rules of 10.1-GA; opset 9-20"},
    "11": {"ops": SUPPORTED_OPS_11, "opset": (9, 25), "types": DATA_TYPES_11,
           "quantized": {TensorProto.INT8, TensorProto.FLOAT8E4M3FN, TensorProto.INT4, TensorProto.FLOAT4E2M1},
           "pad_axes_constant": False, "label": "TensorRT 11.x",
           "checked_against": "TensorRT 11.x: onnx-tensorrt docs/operators.md of TensorRT 10.15 (no 11.x list offline), "
                              "parser Q/DQ rules of 10.1-GA; opset 9-25 per NVIDIA's 11.x notes"},
}

_DEFAULT_DOMAINS = ("", "ai.onnx")
_RESIZE = {"coordinate_transformation_mode": {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                                              "align_corners"},
           "mode": {"nearest", "linear"},
           "nearest_mode": {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"},
           "keep_aspect_ratio_policy": {"stretch"}}
_REDUCE = {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
           "ReduceProd", "ReduceSum", "ReduceSumSquare"}


def _type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() else str(elem_type)


def _node_label(node: onnx.NodeProto) -> str:
    if node.name:
        return f"node {node.name!r} ({node.op_type})"
    return f"the {node.op_type} node producing {node.output[0]!r}" if node.output else f"an unnamed {node.op_type} node"


class _Graph:
    """What the rules need to know about one graph: constants, tensor types and shapes, producers, consumers."""

    def __init__(self, graph: onnx.GraphProto, inferred: Optional[onnx.GraphProto] = None) -> None:
        self.graph = graph
        self.constants: dict[str, TensorProto] = {i.name: i for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS and node.output:
                for attr in node.attribute:
                    if attr.name == "value":
                        self.constants[node.output[0]] = attr.t
        self.types: dict[str, int] = {}
        self.shapes: dict[str, Optional[list]] = {}
        source = inferred if inferred is not None else graph
        for info in [*source.input, *source.output, *source.value_info]:
            tensor_type = info.type.tensor_type
            if info.type.HasField("tensor_type") and tensor_type.elem_type:
                self.types[info.name] = tensor_type.elem_type
                if tensor_type.HasField("shape"):
                    self.shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None
                                              for d in tensor_type.shape.dim]
        for name, tensor in self.constants.items():
            self.types[name] = tensor.data_type
            self.shapes[name] = list(tensor.dims)
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in graph.node:
            for index, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, index))

    def array(self, name: str) -> Optional[np.ndarray]:
        tensor = self.constants.get(name)
        if tensor is None:
            return None
        try:
            return numpy_helper.to_array(tensor)
        except Exception:  # external data that is not there, or a type numpy cannot hold
            return None


def _load(path: str | os.PathLike) -> onnx.ModelProto:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise TensorRTCheckError(f"{path} does not exist or is not a file; pass the path of an .onnx model")
    try:
        return onnx.load(path)
    except Exception as exc:
        raise TensorRTCheckError(f"{path} could not be read as an ONNX model ({type(exc).__name__}); "
                                 "pass a model written by onnx.save or torch.onnx.export") from None


def check_tensorrt(path: str | os.PathLike, tensorrt: str = "10") -> dict:
    """Check `path` against TensorRT's documented ONNX-parser rules for TensorRT `tensorrt` ("10" or "11").

    Returns {"passed": bool, "checked_against": str, "tensorrt": "10"|"11", "opset": int (default domain, 0 if
    missing), "nodes": int (top-level graph), "problems": [one sentence each, naming the node and what is wrong]}.
    Raises TensorRTCheckError if the file cannot be read, ValueError for an unknown `tensorrt`.
    """
    tensorrt = str(tensorrt)
    if tensorrt not in RULES:
        raise ValueError(f"tensorrt must be one of {sorted(RULES)}, got {tensorrt!r}")
    rules = RULES[tensorrt]
    model = _load(path)
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # types then come only from what the file declares
        inferred = None
    problems: list[str] = []
    opset = _check_opset(model, rules, problems)
    functions = {(f.domain, f.name): f for f in model.functions}
    graph = _Graph(model.graph, inferred)
    _check_nodes(model.graph.node, graph, rules, functions, problems)
    _check_data_types(graph, rules, problems)
    _check_qdq(graph, rules, problems)
    return {"passed": not problems, "checked_against": rules["checked_against"], "tensorrt": tensorrt,
            "opset": opset, "nodes": len(model.graph.node), "problems": problems}


def _check_opset(model: onnx.ModelProto, rules: dict, problems: list[str]) -> int:
    versions = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    low, high = rules["opset"]
    if not versions:
        problems.append(f"the model imports no default-domain (ai.onnx) opset, which {rules['label']} needs to parse "
                        f"any node; re-export it with an opset between {low} and {high}")
        return 0
    opset = int(versions[0])
    if not low <= opset <= high:
        problems.append(f"the model's default-domain opset is {opset}, outside the {low}-{high} that {rules['label']} "
                        f"parses; re-export it with an opset in that range")
    return opset


def _check_nodes(nodes: Iterable[onnx.NodeProto], graph: _Graph, rules: dict, functions: dict,
                 problems: list[str], seen_functions: Optional[set] = None) -> None:
    seen_functions = set() if seen_functions is None else seen_functions
    for node in nodes:
        key = (node.domain, node.op_type)
        if key in functions:
            # the parser expands model-local functions (onnx-tensorrt 9.0+), so their bodies are what must parse
            if key not in seen_functions:
                seen_functions.add(key)
                _check_nodes(functions[key].node, _Graph(onnx.GraphProto(node=functions[key].node)), rules,
                             functions, problems, seen_functions)
            continue
        if node.domain not in _DEFAULT_DOMAINS:
            problems.append(f"{_node_label(node)} is in domain {node.domain!r}, which TensorRT parses only through a "
                            "plugin of that name (none ships for it); export without this runtime-specific op")
            continue
        if node.op_type not in rules["ops"]:
            problems.append(f"{_node_label(node)} is not in onnx-tensorrt's supported-operator list for "
                            f"{rules['label']}; replace it with supported ops or provide a TensorRT plugin")
            continue
        _check_restrictions(node, graph, rules, problems)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                _check_nodes(sub.node, _Graph(sub), rules, functions, problems, seen_functions)


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _check_restrictions(node: onnx.NodeProto, graph: _Graph, rules: dict, problems: list[str]) -> None:
    """The operators.md "Restrictions" column, for the operators CNN exports use."""
    label, op = _node_label(node), node.op_type
    if op in OP_TYPES:
        allowed, positions = OP_TYPES[op]
        for index, name in enumerate(node.input):
            if not name or (positions is not None and index not in positions):
                continue
            elem = graph.types.get(name)
            if elem is not None and elem not in allowed:
                problems.append(f"{label} takes {_type_name(elem)} input {name!r}, a type TensorRT's {op} does not "
                                f"support ({', '.join(sorted(_type_name(t) for t in allowed))}); keep it in float")
    if op in ("AveragePool", "MaxPool"):
        kernel = _attr(node, "kernel_shape", [])
        if len(kernel) not in (2, 3):
            problems.append(f"{label} pools over {len(kernel)} spatial dimension(s); TensorRT supports 2D or 3D pooling only")
        if any(d != 1 for d in _attr(node, "dilations", [])):
            problems.append(f"{label} has dilations {list(_attr(node, 'dilations'))}; TensorRT needs them empty or all ones")
        if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
            problems.append(f"{label} uses its Indices output, which TensorRT does not support; drop return_indices")
    elif op == "Resize":
        defaults = {"coordinate_transformation_mode": "half_pixel", "mode": "nearest",
                    "nearest_mode": "round_prefer_floor", "keep_aspect_ratio_policy": "stretch"}
        for name, allowed in _RESIZE.items():
            value = _attr(node, name, defaults[name])
            value = value.decode() if isinstance(value, bytes) else value
            if value not in allowed:
                problems.append(f"{label} has {name} {value!r}; TensorRT supports {', '.join(sorted(allowed))}")
        if _attr(node, "antialias", 0):
            problems.append(f"{label} asks for antialiasing, which TensorRT's Resize does not support")
    elif op in _REDUCE or op in ("Squeeze", "Unsqueeze") or (op == "Pad" and rules["pad_axes_constant"]):
        index = 3 if op == "Pad" else 1
        if len(node.input) > index and node.input[index] and node.input[index] not in graph.constants:
            problems.append(f"{label} takes its axes from tensor {node.input[index]!r}; TensorRT needs axes to be an "
                            "initializer (constant-fold the graph before export)")
    elif op == "Dropout":
        if len(node.input) > 2 and node.input[2]:
            flag = graph.array(node.input[2])
            if flag is None or bool(np.any(flag)):
                problems.append(f"{label} has a training_mode input that is not a constant False; export in eval mode")
    elif op == "Constant":
        used = {a.name for a in node.attribute} & {"sparse_value", "value_string", "value_strings"}
        if used:
            problems.append(f"{label} uses {', '.join(sorted(used))}, which TensorRT's Constant does not support")


def _check_data_types(graph: _Graph, rules: dict, problems: list[str]) -> None:
    producers = {out: node for node in graph.graph.node for out in node.output}
    for name, elem in sorted(graph.types.items()):
        if elem not in rules["types"]:
            where = f"produced by {_node_label(producers[name])}" if name in producers else "a graph input or initializer"
            problems.append(f"tensor {name!r} ({where}) is {_type_name(elem)}, a type {rules['label']} does not "
                            "support; cast it to a supported type before export")


def _check_qdq(graph: _Graph, rules: dict, problems: list[str]) -> None:
    """Explicit quantization: symmetric, signed, per-tensor activations, per-channel weights, float biases."""
    allowed = rules["quantized"]
    allowed_names = "/".join(_type_name(t) for t in sorted(allowed))
    producers = {out: node for node in graph.graph.node for out in node.output}
    for node in graph.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.domain not in _DEFAULT_DOMAINS:
            continue
        label, is_dq = _node_label(node), node.op_type == "DequantizeLinear"
        data = node.input[0]
        zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if is_dq:
            quantized = graph.types.get(data)
            source = producers.get(data)
            if source is not None and source.op_type == "QuantizeLinear" and _quantized_type(source, graph) is None:
                quantized = TensorProto.INT8  # ONNX infers UINT8 here, but TensorRT's Q wrote INT8
        else:
            quantized = _quantized_type(node, graph)

        bias_of = [(c, i) for c, i in graph.consumers.get(node.output[0], [])
                   if c.op_type in ("Conv", "ConvTranspose", "Gemm") and i == 2] if is_dq else []
        if bias_of:
            consumer = bias_of[0][0]
            problems.append(f"{label} dequantizes the bias of {_node_label(consumer)} from "
                            f"{_type_name(quantized) if quantized else 'an unknown type'}; TensorRT needs biases in "
                            "float (quantize with QuantizeBias False)")
        elif quantized is not None and quantized not in allowed:
            what = "reads" if is_dq else "writes"
            problems.append(f"{label} {what} {_type_name(quantized)} tensor "
                            f"{(data if is_dq else node.output[0])!r}; TensorRT quantizes only to {allowed_names} "
                            "(symmetric, signed: QuantType.QInt8 with ActivationSymmetric/WeightSymmetric)")

        if zero_point is not None:
            values = graph.array(zero_point)
            zp_type = graph.types.get(zero_point)
            if values is not None and np.any(values.astype(np.float64) != 0):
                problems.append(f"{label} has non-zero zero point {zero_point!r}; TensorRT accepts only symmetric "
                                "quantization (every zero point 0)")
            elif quantized is not None and zp_type is not None and zp_type != quantized and not bias_of:
                problems.append(f"{label} has a {_type_name(zp_type)} zero point {zero_point!r} for "
                                f"{_type_name(quantized)} data; TensorRT needs the zero point's type to match")

        scale_name = node.input[1] if len(node.input) > 1 else ""
        scale = graph.array(scale_name) if scale_name else None
        if not scale_name:
            problems.append(f"{label} has no scale input; TensorRT needs a scale for every Q/DQ node")
            continue
        if scale is not None:
            if graph.types.get(scale_name) not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16):
                problems.append(f"{label} has a {_type_name(graph.types.get(scale_name, 0))} scale {scale_name!r}; "
                                "TensorRT needs FP32, FP16 or BF16 scales")
            elif scale.size == 0 or not np.all(scale > 0):
                problems.append(f"{label} has a scale {scale_name!r} that is not all positive; TensorRT needs every "
                                "scale coefficient > 0")
        size = int(scale.size) if scale is not None else _volume(graph.shapes.get(scale_name))
        if size is None or size <= 1 or bias_of:
            continue
        if data not in graph.constants:
            problems.append(f"{label} quantizes activation {data!r} per channel ({size} scales); TensorRT supports "
                            "only per-tensor (single) scales for activations")
            continue
        shape = graph.shapes.get(data) or []
        rank = len(shape)
        # the parser's default axis for a per-channel scale is 0 (not ONNX's 1): "weight-quantization with KCRS"
        axis = _attr(node, "axis", rank)
        axis = 0 if axis == rank else (axis + rank if axis < 0 else axis)
        scale_rank = len(graph.shapes.get(scale_name) or [size])
        if scale_rank == 1 and 0 <= axis < rank and shape[axis] is not None and shape[axis] != size:
            problems.append(f"{label} has {size} scales for the {shape[axis]} channels on axis {axis} of {data!r}; "
                            "TensorRT needs one scale per channel")
        conv_weight = [c for c, i in graph.consumers.get(node.output[0], []) if c.op_type == "Conv" and i == 1]
        if is_dq and conv_weight and scale_rank == 1 and axis != 0:
            problems.append(f"{label} quantizes the weight of {_node_label(conv_weight[0])} per channel on axis {axis}; "
                            "TensorRT needs axis 0 (the output channels K of KCRS)")


def _quantized_type(node: onnx.NodeProto, graph: _Graph) -> Optional[int]:
    """What a QuantizeLinear writes; None where it has neither zero point nor output_dtype (TensorRT: INT8)."""
    if len(node.input) > 2 and node.input[2]:
        return graph.types.get(node.input[2])
    return _attr(node, "output_dtype") or None


def _volume(shape: Optional[list]) -> Optional[int]:
    if shape is None or any(d is None for d in shape):
        return None
    return int(np.prod(shape)) if shape else 1


SHOWN_PROBLEMS = 20  # a CPU-form INT8 file breaks a rule at ~100 nodes: the first few say what, the count says how many


def format_result(result: dict) -> str:
    """The CLI's text: one line if it passes; otherwise one line per problem (the first SHOWN_PROBLEMS) and a verdict
    line last, which says how many there are and where every one is listed."""
    where = f"opset {result['opset']}, {result['nodes']} nodes"
    label = RULES[result["tensorrt"]]["label"]
    if result["passed"]:
        return f"passes {label} rules ({where})"
    problems = result["problems"]
    lines = problems[:SHOWN_PROBLEMS]
    if len(problems) > SHOWN_PROBLEMS:
        lines.append(f"... {len(problems) - SHOWN_PROBLEMS} more like these (--json lists every one)")
    lines.append(f"fails {label} rules: {len(problems)} problem(s) ({where}); TensorRT's parser would refuse this file")
    return "\n".join(lines)
