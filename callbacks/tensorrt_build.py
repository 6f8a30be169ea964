"""TensorRTBuild: engines from the bundle's ONNX files with deploy's builder, where TensorRT and a GPU exist."""

from __future__ import annotations

import sys
from typing import Sequence

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

from callbacks.fit_end import FitEndStep, StepSkipped, parse_key
from callbacks.records import FAILED, SKIPPED, ArtifactRecord, FitEndRecord
from deploy.errors import debug_mode, first_line
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

    PRODUCES = tuple(f"tensorrt:{p}@tensorrt" for p in PRECISIONS)

    def __init__(self, precisions: Sequence[str] = ("fp16", "int8"), min_batch: int = 1, opt_batch: int = 8,
                 max_batch: int = 32, workspace_mb: int = 2048) -> None:
        super().__init__()
        unknown = [p for p in precisions if p not in PRECISIONS]
        if unknown:
            raise ValueError(f"TensorRTBuild precisions {unknown} are not among {list(PRECISIONS)}")
        self.precisions = list(precisions)
        self.min_batch, self.opt_batch, self.max_batch, self.workspace_mb = min_batch, opt_batch, max_batch, workspace_mb

    def consumes(self) -> tuple[str, ...]:
        return ("onnx:fp32",) + (("onnx-int8:int8@tensorrt",) if "int8" in self.precisions else ())

    def requires(self) -> tuple[str, ...]:
        # Each precision is its own artifact: a missing Q/DQ file or a failed int8 build costs only the int8 engine.
        return ("onnx:fp32",)

    def produces(self) -> tuple[str, ...]:
        return tuple(f"tensorrt:{p}@tensorrt" for p in self.precisions)

    def skip_message(self, reason: str) -> str:
        # the reason (an install hint) is said once, beside the engines in the bundle table, where there is one
        return "TensorRT build skipped (the bundle table says why)" if self.listed_later() else f"TensorRT build skipped: {reason}"

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: FitEndRecord) -> None:
        available, reason = tensorrt_status()
        if not available:
            raise StepSkipped(reason)
        timing_cache = str(self.staging / "timing.cache")
        for precision in self.precisions:
            wanted = "onnx-int8:int8@tensorrt" if precision == "int8" else "onnx:fp32"
            source = record.find(*parse_key(wanted))
            if source is None:
                why = self.missing_reason(record, [wanted])
                record.publish(ArtifactRecord(self.name, "tensorrt", precision, "tensorrt", SKIPPED, reason=why))
                print(f"TensorRT {precision} engine skipped: {why}", file=sys.stderr, flush=True)
                continue
            engine = self.staging / f"model.{precision}.engine"
            try:
                sidecar = build_engine(source.file, engine, precision, self.min_batch, self.opt_batch, self.max_batch,
                                       self.workspace_mb, timing_cache)
            except Exception as exc:
                if debug_mode():
                    raise
                sentence = first_line(exc)
                record.fail(self.name, f"{precision} engine: {sentence}")
                record.publish(ArtifactRecord(self.name, "tensorrt", precision, "tensorrt", FAILED, reason=sentence))
                print(f"fit-end step {self.name} failed on the {precision} engine: {sentence}; the other steps go on",
                      file=sys.stderr, flush=True)
                continue
            record.publish(ArtifactRecord(self.name, "tensorrt", precision, "tensorrt", file=engine,
                                          facts={"engine": sidecar, "built_from": source.file.name}))
            rank_zero_info(f"TensorRT {precision} engine: {engine}")
