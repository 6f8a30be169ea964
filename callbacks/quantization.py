"""Int8Quantization: post-training INT8 of the exported ONNX with onnxruntime, in the symmetric Q/DQ form
TensorRT accepts, behind an accuracy gate that keeps the most harmful nodes in FP32 when INT8 costs too much."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Literal, Optional, Sequence

import numpy as np
import onnx
import pytorch_lightning as pl
from onnx import numpy_helper
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from callbacks.fit_end import FitEndStep, find_step, loader_arrays, top1
from callbacks.onnx_export import ONNXExport
from deploy.runners import OnnxRuntimeRunner

METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}


class ArrayReader(CalibrationDataReader):
    """Feeds calibration batches (already eval-transformed, NCHW float32) to onnxruntime."""

    def __init__(self, x: np.ndarray, batch_size: int = 32, input_name: str = "input") -> None:
        self.x, self.batch_size, self.input_name = x, batch_size, input_name
        self.rewind()

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = iter({self.input_name: self.x[i:i + self.batch_size]} for i in range(0, len(self.x), self.batch_size))


def prepare_for_quantization(fp32_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """onnxruntime's recommended pre-processing: symbolic shape inference and graph optimisation."""
    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=False)
    return Path(out_path)


def quantize_int8(prepared_path: str | os.PathLike, out_path: str | os.PathLike, calibration: np.ndarray,
                  method: str = "minmax", per_channel: bool = True, nodes_to_exclude: Sequence[str] = (),
                  percentile: float = 99.999) -> Path:
    """Static Q/DQ INT8 with every zero point 0 (symmetric activations and weights), per-channel weights."""
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r} is not one of {sorted(METHODS)}")
    out_path = Path(out_path)
    tmp = out_path.with_name(f".tmp-{os.getpid()}-{out_path.name}")
    quantize_static(
        str(prepared_path), str(tmp), ArrayReader(calibration),
        quant_format=QuantFormat.QDQ, per_channel=per_channel,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        calibrate_method=METHODS[method], nodes_to_exclude=list(nodes_to_exclude),
        # QuantizeBias False: biases stay float; TensorRT rejects DequantizeLinear nodes with INT32 inputs.
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                       "CalibPercentile": percentile},
    )
    os.replace(tmp, out_path)
    return out_path


def quantize_dynamic_linear(fp32_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Seed 1's option: dynamic INT8 of the Linear (MatMul/Gemm) layers only; CPU runtimes, not TensorRT."""
    out_path = Path(out_path)
    tmp = out_path.with_name(f".tmp-{os.getpid()}-{out_path.name}")
    quantize_dynamic(str(fp32_path), str(tmp), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
    os.replace(tmp, out_path)
    return out_path


def asymmetric_zero_points(path: str | os.PathLike) -> list[str]:
    """Q/DQ nodes whose zero point is not an INT8 zero (TensorRT rejects those)."""
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    bad = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
            zp = inits.get(node.input[2])
            if zp is None:
                continue
            values = numpy_helper.to_array(zp)
            if zp.data_type == onnx.TensorProto.INT32:
                continue  # int32 bias dequantisation: zero point 0 by construction, not an activation Q/DQ
            if zp.data_type != onnx.TensorProto.INT8 or np.any(values != 0):
                bad.append(node.name or node.output[0])
    return bad


def rank_nodes_by_quantization_error(prepared_path: Path, int8_path: Path, x: np.ndarray) -> list[str]:
    """Quantised nodes, worst first, by the signal-to-quantisation-noise ratio of their output activation
    (onnxruntime's qdq_loss_debug): a low SQNR is where INT8 loses the most signal."""
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations, compute_activation_error,
                                                         create_activation_matching,
                                                         modify_model_output_intermediate_tensors)

    with tempfile.TemporaryDirectory() as tmp:
        aug_fp32, aug_int8 = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        modify_model_output_intermediate_tensors(str(prepared_path), aug_fp32)
        modify_model_output_intermediate_tensors(str(int8_path), aug_int8)
        reader = ArrayReader(x)
        fp32_acts = collect_activations(aug_fp32, reader)
        reader.rewind()
        int8_acts = collect_activations(aug_int8, reader)
    errors = compute_activation_error(create_activation_matching(int8_acts, fp32_acts))
    producers = {out: node.name for node in onnx.load(str(prepared_path)).graph.node for out in node.output}
    quantized = {n.name for n in onnx.load(str(int8_path)).graph.node}  # node names survive quantisation
    scored = []
    for tensor, err in errors.items():
        node = producers.get(tensor)
        sqnr = err.get("qdq_err", err.get("xmodel_err"))
        if node and node in quantized and sqnr is not None and np.isfinite(sqnr):
            scored.append((float(sqnr), node))
    return [node for _, node in sorted(scored)]


class Int8Quantization(FitEndStep):
    """Quantize model.onnx to model.int8.onnx (static Q/DQ, symmetric, per-channel) with an accuracy gate.

    Args:
        num_samples: calibration images from the train split, eval-transformed (500-1000 is the usual advice).
        method: calibration: minmax | entropy | percentile.
        per_channel: per-output-channel weight scales.
        max_drop: the gate: largest acceptable top-1 drop against FP32 on the validation split, in points.
        max_excluded: the most nodes the gate may keep in FP32 while it searches.
        mode: static (Q/DQ, for ONNX Runtime and TensorRT) | dynamic (seed 1's dynamic INT8 of Linear layers; CPU only).
    """

    requires = (ONNXExport,)

    def __init__(self, num_samples: int = 512, method: Literal["minmax", "entropy", "percentile"] = "minmax",
                 per_channel: bool = True, max_drop: float = 0.5, max_excluded: int = 8,
                 mode: Literal["static", "dynamic"] = "static") -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"Int8Quantization method {method!r} is not one of {sorted(METHODS)}")
        self.num_samples, self.method, self.per_channel = num_samples, method, per_channel
        self.max_drop, self.max_excluded, self.mode = max_drop, max_excluded, mode
        self.int8_path: Optional[Path] = None
        self.report: dict = {}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        export = find_step(trainer, ONNXExport)
        if not self.should_run(trainer) or export is None or export.onnx_path is None:
            return
        dm = trainer.datamodule
        x_val, y_val = loader_arrays(dm.val_dataloader())
        fp32_top1 = top1(OnnxRuntimeRunner(str(export.onnx_path)).infer(x_val), y_val)
        out = self.staging / "model.int8.onnx"
        if self.mode == "dynamic":
            self.int8_path = quantize_dynamic_linear(export.onnx_path, out)
            int8_top1 = top1(OnnxRuntimeRunner(str(out)).infer(x_val), y_val)
            self.report = {"mode": "dynamic", "fp32_top1": fp32_top1, "int8_top1": int8_top1,
                           "drop_pts": 100 * (fp32_top1 - int8_top1), "excluded_nodes": [], "gate_met": True}
            return
        x_cal, _ = loader_arrays(dm.calibration_dataloader(self.num_samples), limit=self.num_samples)
        prepared = prepare_for_quantization(export.onnx_path, self.staging / ".model.prepared.onnx")
        self.int8_path, self.report = self.gated_quantization(prepared, out, x_cal, x_val, y_val, fp32_top1)
        prepared.unlink(missing_ok=True)
        bad = asymmetric_zero_points(self.int8_path)
        if bad:
            raise RuntimeError(f"{self.int8_path}: {len(bad)} Q/DQ nodes have non-zero or non-INT8 zero points "
                               f"({bad[:3]}...), which TensorRT rejects; this is a bug in the quantization settings")
        r = self.report
        rank_zero_info(f"INT8: top-1 {100 * r['int8_top1']:.2f} % vs FP32 {100 * fp32_top1:.2f} % "
                       f"(drop {r['drop_pts']:+.2f} pt, gate {self.max_drop} pt, {len(r['excluded_nodes'])} node(s) kept in FP32), "
                       f"{os.path.getsize(self.int8_path) / 1e6:.2f} MB")

    def gated_quantization(self, prepared: Path, out: Path, x_cal: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                           fp32_top1: float) -> tuple[Path, dict]:
        def attempt(excluded: Sequence[str]) -> float:
            quantize_int8(prepared, out, x_cal, self.method, self.per_channel, excluded)
            return top1(OnnxRuntimeRunner(str(out)).infer(x_val), y_val)

        int8_top1 = attempt(())
        attempts = [{"excluded": 0, "nodes": [], "int8_top1": int8_top1, "drop_pts": 100 * (fp32_top1 - int8_top1)}]
        excluded: list[str] = []
        best = ([], int8_top1)
        if 100 * (fp32_top1 - int8_top1) > self.max_drop and self.max_excluded > 0:
            ranked = rank_nodes_by_quantization_error(prepared, out, x_val[: min(len(x_val), 256)])
            for k in _doubling(min(self.max_excluded, len(ranked))):
                excluded = ranked[:k]
                int8_top1 = attempt(excluded)
                attempts.append({"excluded": k, "nodes": list(excluded), "int8_top1": int8_top1,
                                 "drop_pts": 100 * (fp32_top1 - int8_top1)})
                if int8_top1 > best[1]:
                    best = (list(excluded), int8_top1)
                if 100 * (fp32_top1 - int8_top1) <= self.max_drop:
                    break
            if best[0] != excluded:
                excluded, int8_top1 = best[0], attempt(best[0])  # the search ended on a worse attempt
        drop = 100 * (fp32_top1 - int8_top1)
        met = drop <= self.max_drop
        if not met:
            rank_zero_warn(f"INT8 stays {drop:.2f} pt below FP32 with {len(excluded)} node(s) kept in FP32, above the "
                           f"gate of {self.max_drop} pt; raise max_excluded, try method: entropy or percentile, or "
                           "quantization-aware training")
        return out, {"mode": "static", "method": self.method, "num_samples": int(len(x_cal)), "fp32_top1": fp32_top1,
                     "int8_top1": int8_top1, "drop_pts": drop, "max_drop_pts": self.max_drop, "gate_met": met,
                     "excluded_nodes": list(excluded), "attempts": attempts}


def _doubling(limit: int) -> Iterable[int]:
    k = 1
    while k < limit:
        yield k
        k *= 2
    if limit >= 1:
        yield limit
