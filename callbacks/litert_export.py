"""LiteRTExport: the best checkpoint as LiteRT (.tflite) files for Android phones and Raspberry Pis: FP32, and full
INT8 (int8 weights and activations, float input and output) calibrated on the same calibration images as every INT8
step, behind the INT8 gate.

litert-torch converts torch to .tflite without TensorFlow; ai-edge-quantizer quantizes the FP32 file statically
(min/max ranges from the calibration images run through LiteRT itself). Its graph input and output are left in
float (NO_QUANTIZE on the INPUT and OUTPUT ops), so the file takes the same float images as every other file and a
Quantize op at its start does the rest: litert-torch's own PT2E path makes int8 inputs instead, which an app would
have to quantize by hand. Input layout: NHWC by default (`layout`), what Android's bitmap and TensorImage APIs
hand over; the manifest says which, and deploy's runner transposes its NCHW batch to it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info

from callbacks.device_files import (Int8DeviceFileStep, calibration_batches, channels_last_batches, check_parity,
                                    converter_failure, gate_line, int8_gate, one_image_at_a_time, quiet, require,
                                    val_top1)
from callbacks.fit_end import input_size
from callbacks.records import ArtifactRecord, FitEndRecord
from deploy.atomic import atomic_path
from deploy.runtimes.litert import LiteRTRunner

HINT = ("try another backbone, or layout: NCHW; the operators litert-torch lowers are listed at "
        "github.com/google-ai-edge/litert-torch")


def convert_fp32(model: torch.nn.Module, path: Path, size: tuple[int, int], layout: str, version: str) -> Path:
    try:
        import litert_torch
    except ImportError as exc:
        raise converter_failure("litert-torch", version, exc, "import", HINT) from None
    example = torch.zeros(1, 3, *size)
    with quiet():
        try:
            if layout == "NHWC":
                model, example = litert_torch.to_channel_last_io(model, args=[0]), example.permute(0, 2, 3, 1)
            exported = litert_torch.convert(model.eval(), (example,))
            with atomic_path(path) as tmp:
                exported.export(str(tmp))
        except Exception as exc:
            raise converter_failure("litert-torch", version, exc, "litert_torch.convert", HINT) from None
    return path


def quantize_int8(fp32: Path, path: Path, images, version: str) -> Path:
    """Static INT8 of every operator ai-edge-quantizer supports, graph input and output kept in float."""
    try:
        from ai_edge_quantizer import qtyping, quantizer, recipe_manager
        from ai_edge_quantizer.algorithm_manager import AlgorithmName
    except ImportError as exc:
        raise converter_failure("ai-edge-quantizer", version, exc, "import", HINT) from None
    with quiet():
        try:
            recipe = recipe_manager.RecipeManager()
            recipe.add_static_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                     activation_num_bits=8, weight_num_bits=8)
            for io_op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
                recipe.add_quantization_config(regex=".*", operation_name=io_op,
                                               algorithm_key=AlgorithmName.NO_QUANTIZE)
            tool = quantizer.Quantizer(str(fp32), recipe.get_quantization_recipe())
            signature, inputs = signature_input(fp32)
            ranges = tool.calibrate({signature: [{inputs: x} for x in images]}, num_threads=os.cpu_count() or 1)
            with atomic_path(path) as tmp:
                tool.quantize(ranges).export_model(str(tmp), overwrite=True)
        except Exception as exc:
            raise converter_failure("ai-edge-quantizer", version, exc, "static INT8 quantization",
                                    "try int8: false, or another backbone") from None
    return path


def signature_input(path: Path) -> tuple[str, str]:
    """The file's signature and its one input name (litert-torch names them serving_default and args_0)."""
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_path=str(path)).get_signature_list()
    name, spec = next(iter(signatures.items()))
    return name, spec["inputs"][0]


class LiteRTExport(Int8DeviceFileStep):
    """Write model.tflite (FP32) and model.int8.tflite (full INT8, float input and output) at fit end, each checked
    against torch in LiteRT; DeployBundle scores both on the test split in LiteRT.

    Args:
        int8: also write the INT8 file.
        layout: NHWC (Android's image layout; the default) or NCHW (the network's own).
        num_samples: calibration images from the train split, eval-transformed.
        max_drop: the INT8 gate: the most top-1 points the INT8 file may lose against the FP32 file on the
            validation split; a miss is labelled `not met`.
        parity_batch: validation images compared with torch.
        tolerance: largest acceptable |logit difference| of the FP32 file against torch.
    """

    PRODUCES = ("tflite:fp32@litert", "tflite:int8@litert")

    def __init__(self, int8: bool = True, layout: Literal["NHWC", "NCHW"] = "NHWC", num_samples: int = 256,
                 max_drop: float = 0.5, calibration_batch: int = 16, parity_batch: int = 16,
                 tolerance: float = 1e-3) -> None:
        if layout not in ("NHWC", "NCHW"):
            raise ValueError(f"LiteRTExport layout must be NHWC or NCHW, got {layout!r}")
        super().__init__(int8, num_samples, max_drop, calibration_batch, parity_batch, tolerance)
        self.layout = layout

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: FitEndRecord) -> None:
        version = require("litert_torch", "litert-torch", "litert", ".tflite file")
        dm = trainer.datamodule
        model, source = self.best_model(trainer, pl_module)
        fp32 = convert_fp32(model, self.staging / "model.tflite", input_size(pl_module), self.layout, version)
        with LiteRTRunner(fp32) as runner:
            worst = check_parity(model, runner.infer, dm, self.parity_batch, self.tolerance, fp32.name, "LiteRT",
                                 "try layout: NCHW, or another backbone")
            fp32_top1 = val_top1(runner.infer, dm) if self.int8 else None
        facts = {"layout": self.layout, "parity_max_abs_diff": worst, "converter": f"litert-torch {version}",
                 "checkpoint": source}
        record.publish(ArtifactRecord(self.name, "tflite", "fp32", "litert", file=fp32, label="LiteRT FP32",
                                      facts=facts))
        record.note(self.name, "LiteRT parity", f"model.tflite ({self.layout} input) max |logit difference| vs torch "
                                                f"{worst:.1e}")
        rank_zero_info(f"LiteRT export: {fp32} ({fp32.stat().st_size / 1e6:.2f} MB, {self.layout}); parity max "
                       f"|diff| {worst:.1e}")
        if not self.int8:
            return
        aeq = require("ai_edge_quantizer", "ai-edge-quantizer", "litert", "INT8 .tflite file")
        # a list: the calibrator passes over it more than once (num_samples images, 0.6 MB each at 224)
        images = list(one_image_at_a_time(channels_last_batches(
            calibration_batches(dm, self.num_samples, self.calibration_batch), self.layout)))
        int8 = quantize_int8(fp32, self.staging / "model.int8.tflite", images, aeq)
        with LiteRTRunner(int8) as runner:
            int8_top1 = val_top1(runner.infer, dm)
        q = int8_gate(fp32_top1, int8_top1, self.max_drop, calibration="minmax", num_samples=len(images),
                      quantizer=f"ai-edge-quantizer {aeq}", form="int8 weights (per channel) and activations, "
                      "float input and output")
        record.publish(ArtifactRecord(self.name, "tflite", "int8", "litert", file=int8, label="LiteRT INT8",
                                      facts={"layout": self.layout, "quantization": q}))
        record.note(self.name, "LiteRT INT8", gate_line("model.int8.tflite, static INT8 by ai-edge-quantizer", q),
                    facts=q)
        rank_zero_info(f"LiteRT INT8: {int8} ({int8.stat().st_size / 1e6:.2f} MB); val top-1 "
                       f"{100 * int8_top1:.2f} % vs FP32 {100 * fp32_top1:.2f} % (gate {self.max_drop} pt: "
                       f"{'met' if q['gate_met'] else 'NOT met'})")
