"""OpenVinoIR: OpenVINO's own IR of the exported model, FP32 and INT8 by NNCF's post-training quantization.

What a user of an Intel CPU reaches for is not an ONNX file read by OpenVINO but OpenVINO's IR quantized with NNCF
(`nncf.quantize`, as OpenVINO's docs teach and Ultralytics ships for `format=openvino, int8=True`). This step
writes both beside the ONNX files, so DeployBundle measures them in OpenVINO on the test split like every other
file and `deploy --runtime auto` weighs them against the CPU-form INT8 file in ONNX Runtime and OpenVINO.

NNCF's settings are the ones its docs give for a CNN: no model_type (that is for transformers), the CPU as
target device, calibration on `num_samples` images of the same calibration stream the ONNX INT8 steps use
(DataModule.calibration_dataloader), one image per calibration item so `subset_size` counts images, and no
ignored scope. The preset: `performance` (symmetric activations, the fastest kernels) for ReLU networks, `mixed`
(asymmetric activations) where the network has activations that go negative (MobileNetV3's HSwish, SiLU, GELU),
which NNCF's docs name as the case for it. Behind the same accuracy gate as the ONNX INT8 steps (at most `max_drop`
top-1 points lost on the validation split, measured in OpenVINO): where fast bias correction misses it, NNCF's
slower, more accurate bias correction is tried, then the mixed preset, then the calibration set's global
activation ranges (as ONNX Runtime's minmax calibrates), then those with the depthwise convolutions kept in FP32;
the first attempt that meets the gate ships, else the most accurate, labelled with its gate verdict. (NNCF's
quantize_with_accuracy_control was tried for this last step: on a briefly trained MobileNetV3-Small it met the gate
by reverting 76 of 79 quantizers, an FP32 model in all but name, in 4 minutes.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

from callbacks.fit_end import FitEndStep, StepSkipped, evaluate, numpy_batches
from callbacks.records import ArtifactRecord, FitEndRecord
import deploy.runtimes  # noqa: F401 (the built-in runtimes register themselves)
from deploy.registry import RUNTIMES, runner_for_file

FORMAT = "openvino-ir"
FP32_FILE, INT8_FILE = "model.openvino.xml", "model.int8.openvino.xml"
PRESETS = ("auto", "performance", "mixed")
# OpenVINO operation types whose outputs go negative, so symmetric (performance) activation ranges waste half of
# their 8 bits; NNCF's docs advise the mixed preset for such non-ReLU CNNs.
SIGNED_ACTIVATIONS = {"HSwish", "Swish", "Gelu", "Mish", "Elu", "PRelu", "SoftPlus", "Selu"}
DEPTHWISE = ("GroupConvolution",)  # OpenVINO's op type of a depthwise (grouped) convolution


class SingleImages:
    """The calibration loader's batches as one image per item (re-iterable), so NNCF's subset_size counts images
    and its statistics see each image alone, as at batch 1."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[np.ndarray]:
        for x, _ in numpy_batches(self.loader):
            for i in range(len(x)):
                yield x[i:i + 1]


def save_ir(model, xml: Path) -> list[Path]:
    """ov.save_model with FP32 weights kept FP32 (its default compresses them to FP16), written atomically: both
    files under a temporary name, the .bin renamed into place before the .xml that reads it. Returns [xml, bin]."""
    import openvino as ov

    tmp = xml.with_name(f".tmp-{os.getpid()}-{xml.name}")
    ov.save_model(model, str(tmp), compress_to_fp16=False)
    os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
    os.replace(tmp, xml)
    return [xml, xml.with_suffix(".bin")]


def signed_activations(model) -> list[str]:
    """The operation types of an OpenVINO model that make negative activations (see SIGNED_ACTIVATIONS)."""
    return sorted({op.get_type_name() for op in model.get_ops()} & SIGNED_ACTIVATIONS)


def nncf_int8(model, images, subset_size: int, preset: str = "performance", fast_bias_correction: bool = True,
              activation_ranges: str = "nncf", fp32_types: tuple[str, ...] = ()):
    """NNCF's post-training INT8 of an OpenVINO model for the CPU: `images` is a re-iterable of [1, C, H, W]
    float32 arrays (calibration), `subset_size` how many of them NNCF reads. activation_ranges "nncf" is NNCF's
    own estimator (per-image ranges, averaged); "minmax" the calibration set's global min and max, as ONNX
    Runtime's minmax calibrates. fp32_types: OpenVINO operation types NNCF leaves unquantized."""
    import nncf

    kwargs = {}
    if activation_ranges == "minmax":
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        kwargs["advanced_parameters"] = AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    if fp32_types:
        kwargs["ignored_scope"] = nncf.IgnoredScope(types=list(fp32_types), validate=False)
    return nncf.quantize(model, nncf.Dataset(images), preset=nncf.QuantizationPreset(preset),
                         target_device=nncf.TargetDevice.CPU, subset_size=subset_size,
                         fast_bias_correction=fast_bias_correction, **kwargs)


class OpenVinoIR(FitEndStep):
    """Convert model.onnx to OpenVINO IR (model.openvino.xml/.bin, FP32) and quantize it with NNCF
    (model.int8.openvino.xml/.bin), both measured by DeployBundle in OpenVINO. Skipped with one line where
    openvino or nncf is not installed (pip install -e ".[openvino]").

    Args:
        int8: also write NNCF's INT8 IR.
        num_samples: calibration images (NNCF's subset_size), from the calibration stream the ONNX INT8 steps use.
        preset: auto (performance for ReLU networks, mixed where activations go negative) | performance | mixed.
        fast_bias_correction: NNCF's fast bias correction first (its default); the slower one is tried where the
            gate is missed either way.
        max_drop: the gate: the most top-1 points INT8 may lose against the FP32 IR on the validation split.
        calibration_batch: images per calibration loader batch (NNCF is fed them one at a time).
    """

    PRODUCES = (f"{FORMAT}:fp32@openvino", f"{FORMAT}:int8@openvino")

    def __init__(self, int8: bool = True, num_samples: int = 512,
                 preset: Literal["auto", "performance", "mixed"] = "auto", fast_bias_correction: bool = True,
                 max_drop: float = 0.5, calibration_batch: int = 16) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"OpenVinoIR preset {preset!r} is not one of {list(PRESETS)}")
        if num_samples < 1 or calibration_batch < 1:
            raise ValueError(f"OpenVinoIR num_samples and calibration_batch must be 1 or more, got {num_samples} "
                             f"and {calibration_batch}")
        self.int8, self.num_samples, self.preset = int8, num_samples, preset
        self.fast_bias_correction, self.max_drop, self.calibration_batch = fast_bias_correction, max_drop, calibration_batch

    def consumes(self) -> tuple[str, ...]:
        return ("onnx:fp32",)

    def produces(self) -> tuple[str, ...]:
        return self.PRODUCES if self.int8 else self.PRODUCES[:1]

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: FitEndRecord) -> None:
        missing = [name for name, ok in (("openvino", RUNTIMES["openvino"].available()),
                                          ("nncf", not self.int8 or _importable("nncf"))) if not ok]
        if missing:
            raise StepSkipped(f"{' and '.join(missing)} not installed (pip install -e \".[openvino]\")")
        import openvino as ov

        fp32_onnx = record.find("onnx", "fp32")
        model = ov.convert_model(str(fp32_onnx.file))
        fp32_xml, fp32_bin = save_ir(model, self.staging / FP32_FILE)
        record.publish(ArtifactRecord(self.name, FORMAT, "fp32", "openvino", file=fp32_xml, companions=[fp32_bin],
                                      label="OpenVINO IR FP32"))
        if not self.int8:
            return
        dm = trainer.datamodule

        def val_top1(xml: Path) -> float:
            with runner_for_file(xml, FORMAT, runtime="openvino") as runner:
                return evaluate(runner.infer, numpy_batches(dm.val_dataloader()))["top1"]

        fp32_top1 = val_top1(fp32_xml)
        r = self.quantize(model, dm, fp32_top1, val_top1)
        record.publish(ArtifactRecord(self.name, FORMAT, "int8", "openvino", file=self.staging / INT8_FILE,
                                      companions=[(self.staging / INT8_FILE).with_suffix(".bin")],
                                      label="OpenVINO IR INT8 (NNCF)",
                                      facts={"quantization": {**r, "method": "ptq", "calibration": "nncf"}}))
        gate = "met" if r["gate_met"] else "NOT met"
        how = ", ".join([f"preset {r['preset']}", f"{'fast' if r['fast_bias_correction'] else 'full'} bias correction",
                         *(["global min/max activation ranges"] if r["activation_ranges"] == "minmax" else []),
                         *([f"{', '.join(r['fp32_types'])} kept in FP32"] if r["fp32_types"] else [])])
        record.note(self.name, "INT8 (OpenVINO IR, NNCF)",
                    f"nncf.quantize, {how}, {r['num_samples']} calibration images, attempt {len(r['attempts'])} of "
                    f"at most {r['tries']}, Δ {r['delta_pts']:+.2f} pt top-1 vs the FP32 IR on the validation split in "
                    f"OpenVINO (gate: at most {self.max_drop} pt lost, {gate})", facts=r)
        rank_zero_info(f"INT8 (OpenVINO IR, NNCF: {how}): top-1 {100 * r['int8_top1']:.2f} % vs FP32 "
                       f"{100 * fp32_top1:.2f} % on val (Δ {r['delta_pts']:+.2f} pt, gate {self.max_drop} pt: {gate})")

    def quantize(self, model, dm, fp32_top1: float, val_top1) -> dict:
        """nncf.quantize behind the gate; what the step publishes about it."""
        loader = dm.calibration_dataloader(self.num_samples, batch_size=self.calibration_batch)
        images = SingleImages(loader)
        samples = min(self.num_samples, len(loader.dataset))
        signed = signed_activations(model)
        preset = self.preset if self.preset != "auto" else ("mixed" if signed else "performance")
        # NNCF's defaults first, then what its docs and MobileNets' quantization history suggest, one change at a
        # time; the first attempt that meets the gate ships, else the most accurate: its slower, more accurate bias
        # correction; the mixed preset (asymmetric activations); the calibration set's global activation ranges
        # (ONNX Runtime's minmax) instead of NNCF's averaged per-image ones, which clip the rare large activations
        # a briefly trained network has; and last the depthwise convolutions kept in FP32 (their per-tensor
        # activation ranges are MobileNets' known INT8 weak spot).
        tries = [(preset, self.fast_bias_correction, "nncf", ())]
        tries += [(preset, False, "nncf", ())] if self.fast_bias_correction else []
        tries += [("mixed", False, "nncf", ())] if preset == "performance" else []
        tries += [("performance", False, "minmax", ()), ("performance", False, "minmax", DEPTHWISE)]
        out = self.staging / INT8_FILE
        attempts, best = [], None
        for number, (name, fast, ranges, fp32_types) in enumerate(tries):
            quantized = nncf_int8(model, images, samples, name, fast, ranges, fp32_types)
            candidate = out if number == 0 else out.with_name(f".try{number}-{out.name}")
            save_ir(quantized, candidate)
            top1 = val_top1(candidate)
            attempts.append({"preset": name, "fast_bias_correction": fast, "activation_ranges": ranges,
                             "fp32_types": list(fp32_types), "int8_top1": top1,
                             "delta_pts": 100 * (top1 - fp32_top1)})
            if best is None or top1 > best[1]:
                if best is not None and best[2] != out:
                    _remove_ir(best[2])
                best = (attempts[-1], top1, candidate)
            elif candidate != out:
                _remove_ir(candidate)
            if 100 * (fp32_top1 - top1) <= self.max_drop:
                break
        chosen, top1, path = best
        if path != out:
            os.replace(path.with_suffix(".bin"), out.with_suffix(".bin"))
            os.replace(path, out)
        delta = 100 * (top1 - fp32_top1)
        return {"mode": "static", "preset": chosen["preset"], "fast_bias_correction": chosen["fast_bias_correction"],
                "activation_ranges": chosen["activation_ranges"], "fp32_types": chosen["fp32_types"],
                "num_samples": samples, "signed_activations": signed, "target_device": "CPU",
                "fp32_top1": fp32_top1, "int8_top1": top1, "delta_pts": delta, "max_drop_pts": self.max_drop,
                "gate_met": -delta <= self.max_drop, "attempts": attempts, "tries": len(tries), "nncf": _version("nncf")}


def _remove_ir(xml: Path) -> None:
    xml.unlink(missing_ok=True)
    xml.with_suffix(".bin").unlink(missing_ok=True)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""
