"""NCNNExport: the best checkpoint as NCNN files (the runtime most Raspberry Pi and Android CPU deployments of
small CNNs use): FP32, and FP16 storage (weights in half precision, half the size; NCNN's default on ARM).

pnnx converts a TorchScript trace to NCNN's .param (graph) + .bin (weights). The pnnx binary is run here directly
rather than through `pnnx.export`, whose wrapper ignores the binary's exit status and output, so a failure is one
sentence with pnnx's own last words instead of a missing file later. The .bin is listed in the manifest as the
.param's companion (sha256-checked, copied by `deploy install`). The pip wheel of ncnn has no INT8 tools
(ncnn2table/ncnn2int8 are C++ build products), so no INT8 file is made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info

from callbacks.device_files import check_parity, converter_failure, require
from callbacks.fit_end import FitEndStep, input_size
from callbacks.records import ArtifactRecord, FitEndRecord
from deploy.runtimes.ncnn import NcnnRunner

PRECISIONS = ("fp32", "fp16")
HINT = "try another backbone (pnnx lists the operators it converts at github.com/pnnx/pnnx)"


def pnnx_convert(model: torch.nn.Module, folder: Path, name: str, size: tuple[int, int], fp16: bool,
                 version: str) -> tuple[Path, Path]:
    """<folder>/<name>.ncnn.param and .ncnn.bin from a trace of `model` at batch 1, through pnnx's binary."""
    try:
        import pnnx
        binary = pnnx.EXEC_PATH
    except (ImportError, AttributeError) as exc:
        raise converter_failure("pnnx", version, exc, "import", HINT) from None
    work = folder.resolve() / f".pnnx-{name}"  # pnnx runs in this scratch folder: every path it gets is absolute
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    example = torch.zeros(1, 3, *size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer warnings
            try:
                # the network itself: tracing a LightningModule calls its Trainer-bound properties
                network = model.net if isinstance(getattr(model, "net", None), torch.nn.Module) else model
                torch.jit.trace(network.eval(), example).save(str(work / "model.pt"))
            except Exception as exc:
                raise converter_failure("pnnx", version, exc, "torch.jit.trace", HINT) from None
        param, weights = folder / f"{name}.ncnn.param", folder / f"{name}.ncnn.bin"
        command = [binary, str(work / "model.pt"), f"inputshape=[1,3,{size[0]},{size[1]}]f32", "device=cpu",
                   f"ncnnparam={work / 'model.ncnn.param'}", f"ncnnbin={work / 'model.ncnn.bin'}",
                   f"ncnnpy={work / 'model_ncnn.py'}", f"pnnxparam={work / 'model.pnnx.param'}",
                   f"pnnxbin={work / 'model.pnnx.bin'}", f"pnnxpy={work / 'model_pnnx.py'}",
                   f"pnnxonnx={work / 'model.pnnx.onnx'}", f"fp16={int(fp16)}"]
        done = subprocess.run(command, capture_output=True, text=True, cwd=work, timeout=600)
        made = (work / "model.ncnn.param").is_file() and (work / "model.ncnn.bin").is_file()
        if done.returncode != 0 or not made:
            words = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()
                     and not line.startswith("#")]
            raise converter_failure("pnnx", version, RuntimeError(words[-1] if words else f"exit {done.returncode}"),
                                    "pnnx conversion", HINT)
        with_input_shape(work / "model.ncnn.param", size)
        os.replace(work / "model.ncnn.bin", weights)  # the weights first: a .param is only ever beside its .bin
        os.replace(work / "model.ncnn.param", param)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return param, weights


def with_input_shape(param: Path, size: tuple[int, int]) -> None:
    """Give the Input layer its shape in NCNN's own Input parameters (0=w 1=h 2=c): pnnx leaves it out, and a
    runtime (deploy's, or a C++ app allocating its Mat) then cannot know the image size the network takes."""
    lines = param.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.split()[:1] == ["Input"] and " 0=" not in line:
            lines[i] = f"{line} 0={size[1]} 1={size[0]} 2=3"
    param.write_text("\n".join(lines) + "\n", encoding="utf-8")


class NCNNExport(FitEndStep):
    """Write model.fp32.ncnn.param/.bin and model.fp16.ncnn.param/.bin at fit end, each checked against torch in
    NCNN; DeployBundle scores both on the test split in NCNN.

    Args:
        precisions: fp32 and/or fp16 (weights stored in half precision).
        parity_batch: validation images compared with torch.
        tolerance: largest acceptable |logit difference| of the FP32 file against torch (the FP16 file's is
            reported, and judged by its top-1 on the test split).
    """

    PRODUCES = ("ncnn:fp32@ncnn", "ncnn:fp16@ncnn")

    def __init__(self, precisions: Sequence[str] = PRECISIONS, parity_batch: int = 16, tolerance: float = 1e-3) -> None:
        super().__init__()
        bad = [p for p in precisions if p not in PRECISIONS]
        if bad or not precisions:
            raise ValueError(f"NCNNExport precisions must be some of {list(PRECISIONS)}, got {list(precisions)}")
        self.precisions, self.parity_batch, self.tolerance = tuple(precisions), parity_batch, tolerance

    def produces(self) -> tuple[str, ...]:
        return tuple(f"ncnn:{p}@ncnn" for p in self.precisions)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: FitEndRecord) -> None:
        version = require("pnnx", "pnnx", "ncnn", "NCNN file")
        require("ncnn", "ncnn", "ncnn", "NCNN file (its runtime checks each)")
        dm = trainer.datamodule
        model, source = self.best_model(trainer, pl_module)
        for precision in self.precisions:
            param, weights = pnnx_convert(model, self.staging, f"model.{precision}", input_size(pl_module),
                                          precision == "fp16", version)
            with NcnnRunner(param) as runner:
                tolerance = self.tolerance if precision == "fp32" else float("inf")
                worst = check_parity(model, runner.infer, dm, self.parity_batch, tolerance, param.name, "NCNN", HINT)
            record.publish(ArtifactRecord(
                self.name, "ncnn", precision, "ncnn", file=param, label=f"NCNN {precision.upper()}", companions=[weights],
                facts={"layout": "NCHW", "parity_max_abs_diff": worst,
                       "converter": f"pnnx {version}", "checkpoint": source}))
            record.note(self.name, f"NCNN {precision.upper()} parity",
                        f"{param.name} + {weights.name} max |logit difference| vs torch {worst:.1e}")
            rank_zero_info(f"NCNN export: {param} + {weights.name} ({weights.stat().st_size / 1e6:.2f} MB, "
                           f"{precision}); parity max |diff| {worst:.1e}")
