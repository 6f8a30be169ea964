"""What the fit-end steps for phone and single-board files share (LiteRTExport, ExecuTorchExport, NCNNExport): the
calibration images, the torch parity check, the INT8 gate, and a converter's failure as one sentence.

Each of those steps converts the best checkpoint's network itself (no ONNX in between: each converter reads torch),
checks the file against torch on a validation batch through the runtime that ships it, and publishes it; DeployBundle
then scores it on the test split in that runtime like every other file. INT8 files are calibrated on the images
every INT8 step uses (the DataModule's calibration loader: train images through the eval transform) and kept behind
the same gate as Int8Quantization's: at most `max_drop` top-1 points lost against the same format's FP32 file on the
validation split, else labelled `not met` (`deploy --runtime auto` never picks it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import re
import warnings
from importlib import metadata
from typing import Callable, Iterator

import numpy as np
import torch

from callbacks.fit_end import FitEndStep, StepSkipped, evaluate, first_batch, numpy_batches


@contextlib.contextmanager
def quiet():
    """The converters narrate every pass on stdout, in progress bars on stderr and in warnings; failures still
    raise."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        level = logging.root.level
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)
            logging.root.setLevel(level)


# litert-torch imports JAX, whose fork hook warns at every later subprocess (git, pnnx) though none of them runs
# JAX code
warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")


def require(module: str, package: str, extra: str, what: str) -> str:
    """The converter's version; StepSkipped (one sentence) where it is not installed."""
    if importlib.util.find_spec(module) is None:
        raise StepSkipped(f"{package} is not installed, so no {what} is made; pip install edgecls[{extra}] "
                          f"(or {package})")
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def calibration_batches(dm, num_samples: int, batch_size: int) -> Iterator[np.ndarray]:
    """The calibration images every INT8 step uses, as NCHW float32 batches, streamed."""
    for x, _ in numpy_batches(dm.calibration_dataloader(num_samples, batch_size=batch_size)):
        yield x


def parity(model: torch.nn.Module, infer: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> float:
    """Max |logit difference| between torch and a runtime on the same preprocessed batch."""
    with torch.inference_mode():
        expected = model(torch.from_numpy(batch)).numpy()
    return float(np.abs(np.asarray(infer(batch)) - expected).max())


def check_parity(model: torch.nn.Module, infer, dm, batch_size: int, tolerance: float, file: str,
                 runtime: str, hint: str) -> float:
    worst = parity(model, infer, first_batch(dm.val_dataloader(), batch_size))
    if not worst <= tolerance:  # NaN fails too
        raise RuntimeError(f"{runtime} disagrees with torch on {file}: max |logit difference| {worst:.2e} > "
                           f"tolerance {tolerance:.0e}; {hint}")
    return worst


def val_top1(infer, dm) -> float:
    return evaluate(infer, numpy_batches(dm.val_dataloader()))["top1"]


def int8_gate(fp32_top1: float, int8_top1: float, max_drop: float, **facts) -> dict:
    """The gate's facts in the keys DeployBundle's manifest and gate lines read (callbacks.bundle.gate_verdict)."""
    delta = 100 * (int8_top1 - fp32_top1)
    return {"mode": "static", "method": "ptq", "fp32_top1": fp32_top1, "int8_top1": int8_top1, "delta_pts": delta,
            "max_drop_pts": max_drop, "gate_met": -delta <= max_drop, "excluded_nodes": [],
            "what_to_try": "try more calibration images (num_samples), a larger max_drop if the loss is acceptable, "
                           "or ship the FP32 file", **facts}


def gate_line(what: str, q: dict) -> str:
    verdict = "met" if q["gate_met"] else "NOT met (labelled `not met`; --runtime auto never picks it)"
    return (f"{what}: Δ {q['delta_pts']:+.2f} pt top-1 vs its FP32 file on the validation split ({q['num_samples']} "
            f"calibration images; gate: at most {q['max_drop_pts']} pt lost, {verdict})")


_OP = re.compile(r"\b(aten[.:]{1,2}[\w.]+|torch\.ops\.[\w.]+|[A-Z][A-Za-z0-9]*(?:Conv|Pool|Norm)\w*)")


def converter_failure(tool: str, version: str, exc: BaseException, stage: str, hint: str) -> RuntimeError:
    """One sentence for a converter that could not take the network: which tool and version, at which stage, the
    operator it names where its message names one, and what to try. An ImportError or AttributeError from the
    tool itself is its API having changed under this step."""
    message = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    if isinstance(exc, (ImportError, AttributeError)):
        return RuntimeError(f"{tool} {version} no longer has the API this step calls at {stage} ({message[:200]}); "
                            f"install the version setup.cfg's extra names, or update the step")
    op = _OP.search(str(exc))
    where = f" on {op.group(1)}" if op else ""
    return RuntimeError(f"{tool} {version} cannot convert this network{where} at {stage} ({message[:200]}); {hint}")


def channels_last_batches(batches: Iterator[np.ndarray], layout: str) -> Iterator[np.ndarray]:
    for x in batches:
        yield np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x


def one_image_at_a_time(batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    for x in batches:
        for i in range(len(x)):
            yield x[i:i + 1]


class Int8DeviceFileStep(FitEndStep):
    """What LiteRTExport and ExecuTorchExport take alike: an FP32 file, and with `int8` an INT8 one calibrated on
    `num_samples` images behind the `max_drop` gate; their FP32 file checked against torch on `parity_batch`
    validation images within `tolerance`. PRODUCES: (FP32 key, INT8 key)."""

    PRODUCES: tuple[str, str]

    def __init__(self, int8: bool, num_samples: int, max_drop: float, calibration_batch: int, parity_batch: int,
                 tolerance: float) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"{type(self).__name__} num_samples must be 1 or more, got {num_samples}")
        self.int8, self.num_samples, self.max_drop = int8, num_samples, max_drop
        self.calibration_batch, self.parity_batch, self.tolerance = calibration_batch, parity_batch, tolerance

    def produces(self) -> tuple[str, ...]:
        return self.PRODUCES if self.int8 else self.PRODUCES[:1]

