"""Int8Quantization: post-training INT8 of the exported ONNX with onnxruntime, in TensorRT's symmetric Q/DQ form
or the form CPU runtimes run fast (`form`, callbacks.int8_forms), behind an accuracy gate that keeps the most
harmful nodes in FP32 when INT8 costs too much."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, NamedTuple, Optional, Sequence

import numpy as np
import onnx
import pytorch_lightning as pl
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantType, quantize_dynamic,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process
from pytorch_lightning.utilities import rank_zero_info

from callbacks.fit_end import FitEndStep, evaluate, first_batch, numpy_batches
from callbacks.int8_forms import (CPU_RUNTIME, FORMATS, TENSORRT_FORM, Int8Form, asymmetric_zero_points, cpu_family,
                                 cpu_int8_form)
from callbacks.records import ArtifactRecord, FitEndRecord
from deploy.cpu_features import has_vnni
from deploy.forms import EXACT_ACCURACY, accuracy_qdq
from deploy.runtimes.onnxruntime import OnnxRuntimeRunner

METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}


class BatchReader(CalibrationDataReader):
    """Feeds calibration batches (eval-transformed, NCHW float32) to onnxruntime one at a time.

    `batches` is a callable returning a fresh iterator of numpy batches (a DataLoader pass, or slices of an
    array). onnxruntime's histogram calibrators (entropy, percentile) keep every intermediate output of every
    batch they are given in one call and stack them, which costs memory in proportion to the sample count and
    fails when the last batch is smaller ("inhomogeneous shape"). With `CalibStridedMinMax: 1` they are given
    one batch per call (`set_range`) and merge histograms as they go, so any sample count and batch size works.
    """

    def __init__(self, batches: Callable[[], Iterator[np.ndarray]], count: int, samples: int,
                 input_name: str = "input") -> None:
        self.batches, self.count, self.samples, self.input_name = batches, count, samples, input_name
        self.rewind()

    def __len__(self) -> int:
        return self.count

    def set_range(self, start_index: int, end_index: int) -> None:
        if start_index < self.position:
            self.rewind()
        while self.position < start_index:
            self._next_batch()
        self.end = end_index

    def _next_batch(self) -> Optional[np.ndarray]:
        batch = next(self._iter, None)
        if batch is not None:
            self.position += 1
        return batch

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        if self.end is not None and self.position >= self.end:
            return None
        batch = self._next_batch()
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._iter, self.position, self.end = iter(self.batches()), 0, None


def array_batches(x: np.ndarray, batch_size: int = 32) -> BatchReader:
    """A BatchReader over an array already in memory (tests, benchmarks)."""
    x = np.asarray(x, dtype=np.float32)
    starts = range(0, len(x), batch_size)
    return BatchReader(lambda: (x[i:i + batch_size] for i in starts), len(starts), len(x))


def loader_batches(loader) -> BatchReader:
    """A BatchReader that streams a DataLoader, re-iterated on every rewind."""
    return BatchReader(lambda: (xb for xb, _ in numpy_batches(loader)), len(loader), len(loader.dataset))


def prepare_for_quantization(fp32_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """onnxruntime's recommended pre-processing: symbolic shape inference and graph optimisation."""
    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=False)
    return Path(out_path)


def quantize_int8(prepared_path: str | os.PathLike, out_path: str | os.PathLike,
                  calibration: np.ndarray | BatchReader, method: str = "minmax", per_channel: bool = True,
                  nodes_to_exclude: Sequence[str] = (), percentile: float = 99.999,
                  calibration_cache: Optional[str | os.PathLike] = None,
                  op_types: Optional[Sequence[str]] = None) -> Path:
    """Static Q/DQ INT8 in TensorRT's form: every zero point 0 (symmetric activations and weights), per-channel
    weights, float biases. `calibration` is an array or a BatchReader (streamed); `calibration_cache` keeps the
    computed ranges in a file, so later calls with other `nodes_to_exclude` skip calibration; `op_types` limits
    quantization to those operators (default: every operator onnxruntime can quantize)."""
    return quantize_static_int8(prepared_path, out_path, calibration, TENSORRT_FORM, method, per_channel,
                                nodes_to_exclude, percentile, calibration_cache, op_types)


def quantize_static_int8(prepared_path: str | os.PathLike, out_path: str | os.PathLike,
                         calibration: np.ndarray | BatchReader, form: Int8Form, method: str = "minmax",
                         per_channel: bool = True, nodes_to_exclude: Sequence[str] = (),
                         percentile: float = 99.999, calibration_cache: Optional[str | os.PathLike] = None,
                         op_types: Optional[Sequence[str]] = None) -> Path:
    """Static INT8 of `form` (TENSORRT_FORM, or cpu_int8_form's from callbacks.int8_forms), written atomically."""
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r} is not one of {sorted(METHODS)}")
    reader = calibration if isinstance(calibration, BatchReader) else array_batches(calibration)
    if len(reader) == 0:
        raise ValueError("INT8 calibration got no images; raise num_samples or check the train split")
    reader.rewind()
    out_path = Path(out_path)
    tmp = out_path.with_name(f".tmp-{os.getpid()}-{out_path.name}")
    cache = {}
    if calibration_cache is not None and _has_calibration_cache():
        cache = {"calibration_cache_path": str(calibration_cache)}
    quantize_static(
        str(prepared_path), str(tmp), reader,
        quant_format=form.quant_format, per_channel=per_channel, reduce_range=form.reduce_range,
        activation_type=form.activation_type, weight_type=form.weight_type,
        calibrate_method=METHODS[method], nodes_to_exclude=list(nodes_to_exclude),
        op_types_to_quantize=list(op_types) if op_types else None,
        # CalibStridedMinMax 1: one batch per collection call (see BatchReader).
        extra_options={"ActivationSymmetric": form.activation_symmetric, "WeightSymmetric": form.weight_symmetric,
                       "QuantizeBias": form.quantize_bias, "CalibStridedMinMax": 1, "CalibPercentile": percentile},
        **cache,
    )
    os.replace(tmp, out_path)
    return out_path


def _has_calibration_cache() -> bool:
    import inspect

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def quantize_dynamic_linear(fp32_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Seed 1's option: dynamic INT8 of the Linear (MatMul/Gemm) layers only; CPU runtimes, not TensorRT."""
    out_path = Path(out_path)
    tmp = out_path.with_name(f".tmp-{os.getpid()}-{out_path.name}")
    quantize_dynamic(str(fp32_path), str(tmp), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
    os.replace(tmp, out_path)
    return out_path


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
        reader = array_batches(x, batch_size=8)
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


def ranking_sample_size(height: int, width: int) -> int:
    """Validation images for the SQNR ranking: every intermediate activation of both models is held for them, so
    fewer at large inputs (about 20 at 224x224, 256 at 64x64 and below)."""
    return int(max(8, min(256, 256 * 64 * 64 // max(height * width, 1))))


class Flavour(NamedTuple):
    """What one form of Int8Quantization writes and how it names it: the file, the manifest label, the report's
    topic, the step name in report.json and the manifest, and its scratch files' suffix."""

    file: str
    label: str
    topic: str
    step: str
    scratch: str


FLAVOURS = {"tensorrt": Flavour("model.int8.onnx", "ONNX INT8", "INT8", "Int8Quantization", ""),
            "cpu": Flavour("model.int8-cpu.onnx", "ONNX INT8 (CPU)", "INT8 (CPU)", "CpuInt8Quantization", "-cpu")}


class Int8Quantization(FitEndStep):
    """Quantize model.onnx to a static INT8 file in one form, behind an accuracy gate.

    form tensorrt writes model.int8.onnx in TensorRT's form (S8S8 symmetric Q/DQ, float biases; runtime
    `tensorrt`); form cpu writes model.int8-cpu.onnx in the form CPU runtimes run fast (U8S8 on x86, S8S8 with
    asymmetric activations on aarch64, int32 biases; runtime `cpu`; see callbacks.int8_forms for why). A recipe
    lists one step per form it ships; DeployBundle scores both on the test split. The cpu form reports as
    CpuInt8Quantization (its step name in report.json, the manifest and failure lines).

    Calibration and every validation pass stream from the DataModule's loaders. If INT8 loses more than
    `max_drop` top-1 points on the validation split, the nodes with the worst quantization SQNR are kept in FP32
    (1, 2, 4 ... up to `max_excluded`) and the best attempt is kept; the report lists them. TensorRT's file is
    scored with its Q/DQ run as written (TensorRT's arithmetic), the CPU form by ONNX Runtime's fused kernels.

    Args:
        form: tensorrt | cpu: the runtime the file is for.
        num_samples: calibration images from the train split, eval-transformed (500-1000 is the usual advice).
        method: calibration: minmax | entropy | percentile.
        per_channel: per-output-channel weight scales.
        max_drop: the gate: the most top-1 points INT8 may lose against FP32 on the validation split.
        max_excluded: the most nodes the gate may keep in FP32 while it searches.
        mode: static (Q/DQ) | dynamic (form tensorrt only: seed 1's dynamic INT8 of Linear layers; CPU only).
        calibration_batch: images per calibration batch (onnxruntime holds every activation of one batch).
        target: form cpu only: the device's CPU family: auto (this machine's, the default) | x86_64 | aarch64.
        quant_format: form cpu only: qdq (the default; measured faster on x86 and what OpenVINO reads) | qoperator.
        reduce_range: form cpu only: 7-bit weights; unset = where the target is this x86 machine and it lacks VNNI.
    """

    PRODUCES = ("onnx-int8:int8@tensorrt", f"onnx-int8:int8@{CPU_RUNTIME}")

    def __init__(self, form: Literal["tensorrt", "cpu"] = "tensorrt", num_samples: int = 512,
                 method: Literal["minmax", "entropy", "percentile"] = "minmax", per_channel: bool = True,
                 max_drop: float = 0.5, max_excluded: int = 8, mode: Literal["static", "dynamic"] = "static",
                 calibration_batch: int = 16, target: Optional[str] = None,
                 quant_format: Optional[Literal["qdq", "qoperator"]] = None,
                 reduce_range: Optional[bool] = None) -> None:
        super().__init__()
        if form not in FLAVOURS:
            raise ValueError(f"Int8Quantization form {form!r} is not one of {sorted(FLAVOURS)}")
        if method not in METHODS:
            raise ValueError(f"Int8Quantization method {method!r} is not one of {sorted(METHODS)}")
        if num_samples < 1 or calibration_batch < 1:
            raise ValueError(f"Int8Quantization num_samples and calibration_batch must be 1 or more, got "
                             f"{num_samples} and {calibration_batch}")
        cpu_only = [k for k, v in (("target", target), ("quant_format", quant_format), ("reduce_range", reduce_range))
                    if v is not None]
        if form != "cpu" and cpu_only:
            names = " and ".join(cpu_only)
            raise ValueError(f"Int8Quantization {names} {'applies' if len(cpu_only) == 1 else 'apply'} to form cpu "
                             f"only; set form: cpu, or drop {names} for TensorRT's form")
        if form == "cpu" and mode != "static":
            raise ValueError(f"Int8Quantization mode {mode!r} is form tensorrt's (dynamic INT8 of the Linear layers "
                             "into model.int8.onnx); form cpu is static only: drop mode or set form: tensorrt")
        self.form, self.num_samples, self.method, self.per_channel = form, num_samples, method, per_channel
        self.max_drop, self.max_excluded, self.mode = max_drop, max_excluded, mode
        self.calibration_batch = calibration_batch
        self.target, self.quant_format, self.reduce_range, self.family = target, quant_format, reduce_range, None
        if form == "cpu":
            self.target, self.quant_format = target or "auto", quant_format or "qdq"
            if self.quant_format not in FORMATS:
                raise ValueError(f"Int8Quantization quant_format {quant_format!r} is not one of {sorted(FORMATS)}")
            self.family = cpu_family(None if self.target == "auto" else self.target)  # a bad target: one sentence now
            if reduce_range is None:
                here = self.target == "auto" or cpu_family(self.target) == cpu_family()
                reduce_range = self.family == "x86_64" and here and not has_vnni()
            self.reduce_range = bool(reduce_range)

    @property
    def name(self) -> str:
        return FLAVOURS[self.form].step if type(self) is Int8Quantization else super().name

    @property
    def state_key(self) -> str:
        # Lightning keys a callback's checkpoint state by class name; the two forms are two steps.
        return self.name

    def consumes(self) -> tuple[str, ...]:
        return ("onnx:fp32",)

    def produces(self) -> tuple[str, ...]:
        runtime = {"cpu": CPU_RUNTIME, "tensorrt": "tensorrt" if self.mode == "static" else "onnxruntime"}
        return (f"onnx-int8:int8@{runtime[self.form]}",)

    def int8_form(self) -> Int8Form:
        return TENSORRT_FORM if self.form == "tensorrt" else cpu_int8_form(self.family, self.quant_format,
                                                                           self.reduce_range)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: FitEndRecord) -> None:
        fp32 = record.find("onnx", "fp32")
        dm = trainer.datamodule
        flavour, form = FLAVOURS[self.form], self.int8_form()
        made_for = self.runtime_for(self.produces()[0])
        # TensorRT's file is scored as TensorRT computes it, never by ONNX Runtime's fused int8 kernels (deploy.forms)
        qdq = accuracy_qdq("onnx-int8", made_for)

        def val_top1(path: Path, qdq: str = qdq) -> float:
            return evaluate(OnnxRuntimeRunner(str(path), qdq=qdq).infer, numpy_batches(dm.val_dataloader()))["top1"]

        fp32_top1 = val_top1(fp32.file, "fused")
        out = self.staging / flavour.file
        if self.mode == "dynamic":
            quantize_dynamic_linear(fp32.file, out)
            int8_top1 = val_top1(out)
            r = {"mode": "dynamic", "fp32_top1": fp32_top1, "int8_top1": int8_top1,
                 "delta_pts": 100 * (int8_top1 - fp32_top1), "excluded_nodes": [], "gate_met": True}
        else:
            r = self.static(dm, fp32.file, out, form, val_top1, fp32_top1)
        if qdq == "exact":
            r["accuracy_as"] = EXACT_ACCURACY
        record.publish(ArtifactRecord(self.name, "onnx-int8", "int8", made_for, file=out,
                                      label=flavour.label, facts={"quantization": {
                                          **r, "calibration": r.get("method", "none"), "method": "ptq"}}))
        kept = ", ".join(r["excluded_nodes"]) or "none"
        gate = "met" if r["gate_met"] else "NOT met"
        what = (f"{r['mode']} PTQ" if self.form == "tensorrt"
                else f"{form.name} {form.quant_format.name} for {self.family}")
        record.note(self.name, flavour.topic,
                    f"{what} ({r.get('method', 'dynamic')}, {r.get('num_samples', 0)} calibration images), "
                    f"Δ {r['delta_pts']:+.2f} pt top-1 vs FP32 on the validation split (gate: at most {self.max_drop} "
                    f"pt lost, {gate}); nodes kept in FP32: {kept}"
                    + (f"; top-1 by {r['accuracy_as']}" if "accuracy_as" in r else ""), facts=r)
        where = "INT8" if self.form == "tensorrt" else f"INT8 (CPU, {self.family})"
        rank_zero_info(f"{where}: top-1 {100 * r['int8_top1']:.2f} % vs FP32 {100 * fp32_top1:.2f} % on val "
                       f"(Δ {r['delta_pts']:+.2f} pt, gate {self.max_drop} pt: {gate}, {kept_in_fp32(r)}), "
                       f"{os.path.getsize(out) / 1e6:.2f} MB")

    def static(self, dm, fp32: Path, out: Path, form: Int8Form, val_top1: Callable[[Path], float],
               fp32_top1: float) -> dict:
        """Static INT8 of `form` behind the gate; the report the step publishes."""
        scratch = FLAVOURS[self.form].scratch
        calibration = loader_batches(dm.calibration_dataloader(self.num_samples, batch_size=self.calibration_batch))
        prepared = prepare_for_quantization(fp32, self.staging / f".model.prepared{scratch}.onnx")
        cache = self.staging / f".calibration{scratch}.json"

        def quantize(excluded: Sequence[str]) -> Path:
            if self.form == "tensorrt":
                return quantize_int8(prepared, out, calibration, self.method, self.per_channel, excluded,
                                     calibration_cache=cache)
            return quantize_static_int8(prepared, out, calibration, form, self.method, self.per_channel, excluded,
                                        calibration_cache=cache)

        try:
            gate = gated_quantization(quantize, prepared, out, val_top1, fp32_top1, self.max_drop, self.max_excluded,
                                      lambda n: first_batch(dm.val_dataloader(), n))
        finally:
            prepared.unlink(missing_ok=True)
            cache.unlink(missing_ok=True)
        r = {"mode": "static", "method": self.method, "num_samples": calibration.samples, **gate}
        if self.form == "tensorrt":
            bad = asymmetric_zero_points(out)
            if bad:
                raise RuntimeError(f"{out.name}: {len(bad)} Q/DQ nodes have non-zero or non-INT8 zero points "
                                   f"({bad[:3]}...), which TensorRT rejects; this is a bug in the quantization settings")
            return r
        return {**r, "cpu_family": self.family, "target": self.target, **form.describe()}


def kept_in_fp32(gate: dict) -> str:
    """What the gate's search did, in the words of the fit's INT8 line: after a miss, the worst nodes were tried in
    FP32, and when no attempt scored higher than the plain file, none is kept (a bare "0 kept" read as if none were
    tried)."""
    kept = len(gate.get("excluded_nodes") or [])
    tried = [a["excluded"] for a in gate.get("attempts", []) if a["excluded"] > 0]
    plain = next((a for a in gate.get("attempts", []) if a["excluded"] == 0), None)
    if kept and plain is not None:  # say why: every node in INT8 lost more than the gate allows
        return f"{kept} node(s) kept in FP32, as every node in INT8 lost {-plain['delta_pts']:.2f} pt"
    if kept or not tried:
        return f"{kept} node(s) kept in FP32"
    return (f"keeping the worst {', '.join(map(str, tried))} node(s) in FP32 scored no higher on val, so none is "
            "kept")


def gated_quantization(quantize: Callable[[Sequence[str]], Path], prepared: Path, out: Path,
                       val_top1: Callable[[Path], float], fp32_top1: float, max_drop: float, max_excluded: int,
                       val_sample: Callable[[int], np.ndarray]) -> dict:
    """The accuracy gate both INT8 forms share: `quantize(excluded_nodes)` writes `out`; when it loses more
    than `max_drop` top-1 points on the validation split, the nodes with the worst SQNR are kept in FP32
    (1, 2, 4 ... up to `max_excluded`) and the best attempt is what `out` holds at the end."""

    def attempt(excluded: Sequence[str]) -> float:
        quantize(excluded)
        return val_top1(out)

    def entry(k: int, nodes: Sequence[str], top1: float) -> dict:
        return {"excluded": k, "nodes": list(nodes), "int8_top1": top1, "delta_pts": 100 * (top1 - fp32_top1)}

    int8_top1 = attempt(())
    attempts = [entry(0, [], int8_top1)]
    excluded: list[str] = []
    best = ([], int8_top1)
    if 100 * (fp32_top1 - int8_top1) > max_drop and max_excluded > 0:
        height, width = OnnxRuntimeRunner(str(prepared)).input_shape[1:]
        sample = val_sample(ranking_sample_size(height or 224, width or 224))
        ranked = rank_nodes_by_quantization_error(prepared, out, sample)
        for k in _doubling(min(max_excluded, len(ranked))):
            excluded = ranked[:k]
            int8_top1 = attempt(excluded)
            attempts.append(entry(k, excluded, int8_top1))
            if int8_top1 > best[1]:
                best = (list(excluded), int8_top1)
            if 100 * (fp32_top1 - int8_top1) <= max_drop:
                break
        if best[0] != excluded:
            excluded, int8_top1 = best[0], attempt(best[0])  # the search ended on a worse attempt
    delta = 100 * (int8_top1 - fp32_top1)
    met = -delta <= max_drop  # a miss is said once, at the end of the fit (callbacks.bundle.gate_misses)
    return {"fp32_top1": fp32_top1, "int8_top1": int8_top1, "delta_pts": delta, "max_drop_pts": max_drop,
            "gate_met": met, "excluded_nodes": list(excluded), "attempts": attempts}


def _doubling(limit: int) -> Iterable[int]:
    k = 1
    while k < limit:
        yield k
        k *= 2
    if limit >= 1:
        yield limit
