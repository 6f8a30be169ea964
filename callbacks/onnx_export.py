"""ONNXExport: the best checkpoint's network as a single-file, dynamic-batch ONNX model, checked against
ONNX Runtime on a real validation batch."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from callbacks.fit_end import FitEndStep, first_batch, input_size
from callbacks.records import ArtifactRecord, FitEndRecord
from deploy.atomic import atomic_path
from deploy.runtimes.onnxruntime import OnnxRuntimeRunner

# Opset 18 is the lowest the torch.export-based exporter emits natively (asking lower exports at 18 and then
# down-converts, which failed on MobileNetV2's ReduceMean); TensorRT 10.0 parses 9-20, TensorRT 11 up to 25.
DEFAULT_OPSET = 18


def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: tuple[int, int], opset: int = DEFAULT_OPSET,
                exporter: Literal["dynamo", "torchscript"] = "dynamo") -> Path:
    """Export `model` (left in eval mode on the CPU) to one ONNX file: input `input` [N,3,H,W], output
    `logits` [N,K], batch dimension dynamic, weights inside the file (no external .data file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    # batch 2 while tracing: a batch of 1 invites the exporter to specialise the batch dimension to 1
    example = torch.zeros(2, 3, *input_size)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporters narrate each pass; failures still raise
            if exporter == "dynamo":
                torch.onnx.export(
                    model, (example,), str(tmp), dynamo=True, opset_version=opset, external_data=False,
                    input_names=["input"], output_names=["logits"],
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), verbose=False,
                )
            elif exporter == "torchscript":
                torch.onnx.export(
                    model, (example,), str(tmp), dynamo=False, opset_version=min(opset, 17),
                    input_names=["input"], output_names=["logits"], do_constant_folding=True,
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                )
            else:
                raise ValueError(f"exporter must be 'dynamo' or 'torchscript', got {exporter!r}")
        proto = onnx.load(str(tmp))
        strip_debug_metadata(proto)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    return path


def strip_debug_metadata(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node debug records (stack traces with this machine's paths, FX node text):
    about 12 % of a small model's file, nothing a runtime reads, nothing to ship to a device."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def onnx_parity(model: nn.Module, onnx_path: str | os.PathLike, batch: np.ndarray) -> dict[str, float]:
    """Max |logit difference| between torch and ONNX Runtime at batch 1 and at the whole batch."""
    runner = OnnxRuntimeRunner(str(onnx_path))
    result = {}
    with torch.no_grad():
        for name, x in (("batch_1", batch[:1]), (f"batch_{len(batch)}", batch)):
            expected = model(torch.from_numpy(x)).numpy()
            result[name] = float(np.abs(runner.infer(x) - expected).max())
    return result


class ONNXExport(FitEndStep):
    """Export the best checkpoint to `model.onnx` at fit end and check it against ONNX Runtime.

    Args:
        opset: ONNX opset (TensorRT 10 parses up to 20).
        exporter: dynamo (torch.export based, the default in torch >= 2.9) or torchscript (the legacy one, opset <= 17).
        parity_batch: validation images for the ONNX Runtime check (compared at batch 1 and at this batch size).
        tolerance: largest acceptable |logit difference|; above it the export is an error.
    """

    PRODUCES = ("onnx:fp32",)

    def __init__(self, opset: int = DEFAULT_OPSET, exporter: Literal["dynamo", "torchscript"] = "dynamo",
                 parity_batch: int = 16, tolerance: float = 1e-3) -> None:
        super().__init__()
        self.opset, self.exporter, self.parity_batch, self.tolerance = opset, exporter, parity_batch, tolerance

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: FitEndRecord) -> None:
        model, source = self.best_model(trainer, pl_module)
        path = export_onnx(model, self.staging / "model.onnx", input_size(pl_module), self.opset, self.exporter)
        parity = onnx_parity(model, path, first_batch(trainer.datamodule.val_dataloader(), self.parity_batch))
        worst = max(parity.values())
        if worst > self.tolerance:
            raise RuntimeError(
                f"ONNX Runtime disagrees with torch on {path.name}: max |logit difference| {worst:.2e} > "
                f"tolerance {self.tolerance:.0e}; try exporter: torchscript, or another opset"
            )
        record.publish(ArtifactRecord(self.name, "onnx", "fp32", "any", file=path, label="ONNX FP32", facts={
            "parity_max_abs_diff": parity, "opset": self.opset, "exporter": self.exporter, "checkpoint": source}))
        record.note(self.name, "ONNX parity", f"max |logit difference| vs torch {worst:.1e} ({', '.join(parity)}; "
                                              f"opset {self.opset}, {self.exporter} exporter)")
        rank_zero_info(f"ONNX export: {path} ({os.path.getsize(path) / 1e6:.2f} MB, opset {self.opset}, "
                       f"{self.exporter}); ONNX Runtime parity max |diff| {worst:.1e}")
