"""CpuInt8Quantization: the former name of Int8Quantization(form="cpu"), kept so that run configs which list it
(a fit's saved config.yaml names callbacks.CpuInt8Quantization) still parse. The CPU form itself is described in
callbacks.int8_forms."""

from __future__ import annotations

import warnings
from typing import Literal, Optional

from callbacks.quantization import Int8Quantization


class CpuInt8Quantization(Int8Quantization):
    """Deprecated: Int8Quantization with form cpu, the same arguments otherwise (it writes model.int8-cpu.onnx and
    reports as CpuInt8Quantization, as before)."""

    def __init__(self, num_samples: int = 512, method: Literal["minmax", "entropy", "percentile"] = "minmax",
                 per_channel: bool = True, max_drop: float = 0.5, max_excluded: int = 8, calibration_batch: int = 16,
                 target: str = "auto", quant_format: Literal["qdq", "qoperator"] = "qdq",
                 reduce_range: Optional[bool] = None) -> None:
        warnings.warn("callbacks.CpuInt8Quantization is deprecated: list callbacks.Int8Quantization with "
                      "init_args {form: cpu} instead (the same file, gate and report)", FutureWarning, stacklevel=2)
        super().__init__(form="cpu", num_samples=num_samples, method=method, per_channel=per_channel,
                         max_drop=max_drop, max_excluded=max_excluded, calibration_batch=calibration_batch,
                         target=target, quant_format=quant_format, reduce_range=reduce_range)
