"""ONNX Runtime: the default runtime of ONNX files (FP32 and Q/DQ INT8), registered as a plugin registers one."""

from __future__ import annotations

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


class OnnxRuntimeRunner(Runner):
    """An ONNX (FP32 or Q/DQ INT8) file in ONNX Runtime; CPU unless providers asks for cuda/tensorrt. `qdq`: fused
    (Q/DQ pairs folded into ONNX Runtime's int8 kernels) or exact (Q/DQ run as written, the other operators in float:
    the file's own arithmetic, TensorRT's up to float rounding; see deploy.forms.device_qdq for where it matters)."""

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] = ("cpu",), threads: Optional[int] = None,
                 strict: bool = False, qdq: str = "fused"):
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
