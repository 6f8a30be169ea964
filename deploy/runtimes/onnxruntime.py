"""ONNX Runtime: the default runtime of ONNX files (FP32 and Q/DQ INT8), registered as a plugin registers one."""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Optional, Sequence

import numpy as np

from deploy.bundle import BundleError
from deploy.registry import Runner, RuntimeSpec, importable, register_format, register_runtime, static_dim

ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

QDQ_MODES = ("fused", "exact")


# ONNX Runtime's intra-op threads spin (busy-wait) between the parallel parts of a call by default. On a device
# that runs other processes a spinning thread holds a core another process needs, and it is descheduled at the
# wrong moment: on 2 shared cores (AMD EPYC Zen 4, other jobs running, load average ~12), MobileNetV2 224 FP32 at
# batch 1 took 4.4x as long with spinning threads as with sleeping ones, and 6.7x beside a process burning a core
# (benchmarks/runtime_latency.py, contention section; README). So they sleep by default; `deploy bench|infer
# --spin` (or EDGECLS_ORT_SPIN=1) asks for spinning, for a quiet machine with cores to spare.
SPIN_ENV = "EDGECLS_ORT_SPIN"


def ort_spinning() -> bool:
    """Whether ONNX Runtime's threads spin in this process: EDGECLS_ORT_SPIN=1 (what `--spin` sets), else not."""
    return os.environ.get(SPIN_ENV, "0").strip().lower() in ("1", "true", "yes")


@contextlib.contextmanager
def ort_spin(enabled: bool):
    """ONNX Runtime's threads spin for the runners opened inside (`--spin`); off again after, as before."""
    before = os.environ.get(SPIN_ENV)
    if enabled:
        os.environ[SPIN_ENV] = "1"
    try:
        yield
    finally:
        if enabled:
            if before is None:
                os.environ.pop(SPIN_ENV, None)
            else:
                os.environ[SPIN_ENV] = before


class OnnxRuntimeRunner(Runner):
    """An ONNX (FP32 or Q/DQ INT8) file in ONNX Runtime; CPU unless providers asks for cuda/tensorrt. `qdq`: fused
    (Q/DQ pairs folded into ONNX Runtime's int8 kernels) or exact (Q/DQ run as written, the other operators in float:
    the file's own arithmetic, TensorRT's up to float rounding; see deploy.forms.device_qdq for where it matters).
    `spin`: whether idle intra-op threads busy-wait (None: ort_spinning(), off unless asked; see SPIN_ENV)."""

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] = ("cpu",), threads: Optional[int] = None,
                 strict: bool = False, qdq: str = "fused", spin: Optional[bool] = None):
        import onnxruntime as ort

        path = os.fspath(path)
        if qdq not in QDQ_MODES:
            raise ValueError(f"OnnxRuntimeRunner qdq {qdq!r} is not one of {QDQ_MODES}")
        self.qdq = qdq
        self.description = f"onnxruntime:{os.path.basename(path)}"
        available = set(ort.get_available_providers())
        chosen, missing = [], []
        for name in providers:
            key = ORT_PROVIDERS.get(name.lower(), name)
            (chosen if key in available else missing).append(key)
        if missing:
            message = (f"ONNX Runtime here has no {', '.join(missing)} (it has {', '.join(sorted(available))}); "
                       "install onnxruntime-gpu for CUDA/TensorRT")
            if strict:
                raise BundleError(message)
            warnings.warn(message + "; running on CPU", RuntimeWarning, stacklevel=2)
        if "CPUExecutionProvider" not in chosen:
            chosen.append("CPUExecutionProvider")  # fallback for nodes the GPU providers do not take
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.spin = ort_spinning() if spin is None else bool(spin)
        for pool in ("intra_op", "inter_op"):
            options.add_session_config_entry(f"session.{pool}.allow_spinning", "1" if self.spin else "0")
        if qdq == "exact":
            options.add_session_config_entry("session.disable_quant_qdq", "1")
            # not ENABLE_ALL: its NCHWc layout reorders the float convolutions' sums, so a value on a quantization
            # step rounds the other way; EXTENDED gives ORT_DISABLE_ALL's numbers bit for bit, faster
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(path, sess_options=options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise BundleError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]}); "
                              "re-export the model or copy the bundle again") from None
        self.providers = self.session.get_providers()
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_shape = tuple(static_dim(d) for d in inp.shape[1:])
        fixed = static_dim(inp.shape[0])
        self.min_batch, self.max_batch = (fixed, fixed) if fixed else (1, None)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]


register_format("onnx", "onnxruntime", suffix=".onnx", triton=("onnxruntime_onnx", "model.onnx"),
                smoke_runtime="onnxruntime")
register_format("onnx-int8", "onnxruntime", suffix=".onnx", triton=("onnxruntime_onnx", "model.onnx"),
                smoke_runtime="onnxruntime")
register_runtime(RuntimeSpec(
    "onnxruntime", ("onnx", "onnx-int8"),
    lambda path, providers=("cpu",), threads=None, hint=None, qdq="fused": OnnxRuntimeRunner(path, providers, threads,
                                                                                             qdq=qdq),
    importable("onnxruntime", "onnxruntime", "onnxruntime"), "onnxruntime"))
