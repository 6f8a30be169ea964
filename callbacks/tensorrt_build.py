"""TensorRTBuild: engines from the bundle's ONNX files with deploy's builder, where TensorRT and a GPU exist."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

from callbacks.fit_end import FitEndStep, find_step
from callbacks.onnx_export import ONNXExport
from callbacks.quantization import Int8Quantization
from deploy.engine import build_engine, tensorrt_status

PRECISIONS = ("fp32", "fp16", "int8")


class TensorRTBuild(FitEndStep):
    """Build model.<precision>.engine for each listed precision (int8 from the Q/DQ ONNX of Int8Quantization).

    Where tensorrt or a GPU is missing this logs one line and the bundle records "skipped: <reason>"; engines are
    tied to the TensorRT version and GPU they were built on, so devices rebuild with `python -m deploy build-engine`.

    Args:
        precisions: any of fp32, fp16, int8.
        min_batch: smallest batch of the optimization profile.
        opt_batch: the batch TensorRT tunes for.
        max_batch: largest batch of the optimization profile.
        workspace_mb: builder workspace limit.
    """

    requires = (ONNXExport,)

    def __init__(self, precisions: Sequence[str] = ("fp16", "int8"), min_batch: int = 1, opt_batch: int = 8,
                 max_batch: int = 32, workspace_mb: int = 2048) -> None:
        super().__init__()
        unknown = [p for p in precisions if p not in PRECISIONS]
        if unknown:
            raise ValueError(f"TensorRTBuild precisions {unknown} are not among {list(PRECISIONS)}")
        self.precisions = list(precisions)
        self.min_batch, self.opt_batch, self.max_batch, self.workspace_mb = min_batch, opt_batch, max_batch, workspace_mb
        self.engines: list[tuple[Path, str, dict]] = []  # (engine path, precision, sidecar)
        self.skipped: dict[str, str] = {}  # precision -> reason

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and "int8" in self.precisions and find_step(trainer, Int8Quantization) is None:
            raise ValueError("TensorRTBuild precision int8 builds from the Q/DQ ONNX of Int8Quantization; add "
                             "'- class_path: callbacks.Int8Quantization' before TensorRTBuild, or drop int8")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        export = find_step(trainer, ONNXExport)
        if not self.should_run(trainer) or export is None or export.onnx_path is None:
            return
        available, reason = tensorrt_status()
        if not available:
            self.skipped = {p: reason for p in self.precisions}
            rank_zero_info(f"TensorRT build skipped: {reason}")
            return
        quant = find_step(trainer, Int8Quantization)
        timing_cache = str(self.staging / "timing.cache")
        for precision in self.precisions:
            source: Optional[Path] = export.onnx_path
            if precision == "int8":
                source = quant.int8_path if quant is not None and quant.mode == "static" else None
                if source is None:
                    self.skipped[precision] = "no Q/DQ INT8 ONNX (Int8Quantization did not run in static mode)"
                    continue
            engine = self.staging / f"model.{precision}.engine"
            sidecar = build_engine(source, engine, precision, self.min_batch, self.opt_batch, self.max_batch,
                                   self.workspace_mb, timing_cache)
            self.engines.append((engine, precision, sidecar))
            rank_zero_info(f"TensorRT {precision} engine: {engine}")
