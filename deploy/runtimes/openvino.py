"""OpenVINO's CPU plugin as a Runner, set for the CPU it runs on, and its two runtimes (openvino, openvino-bf16),
registered as a plugin registers one.

Threads are the physical cores this process may use (deploy.cpu_features: the affinity mask folded by the
kernel's topology), not OpenVINO's own guess, which on small or shared machines can leave cores idle or
oversubscribe SMT siblings. At batch 1 the model is compiled with PERFORMANCE_HINT=LATENCY and a static input
shape (one stream, every thread on one request; a static shape spares the plugin its per-call shape work);
batches go to a THROUGHPUT compile (several streams, the batch split across that many requests run at once).
`hint` forces one of the two for every batch.

Precision is explicit: f32 keeps the FP32 file exact (on CPUs with AVX512_BF16 or AMX the plugin would
otherwise run it in bf16, and the accuracy the manifest records would not be the accuracy the device gets);
bf16 is the separate `openvino-bf16` runtime, measured and scored as its own row.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Optional

import numpy as np

from deploy.bundle import BundleError
from deploy.cpu_features import physical_cores
from deploy.errors import message_line
from deploy.registry import Runner, RuntimeSpec, importable, register_format, register_runtime, static_dim

STATIC_SHAPES = 4  # batch sizes kept compiled with a static shape under the latency hint

_OV_CORE = None


def _openvino_core(ov):
    global _OV_CORE
    if _OV_CORE is None:
        _OV_CORE = ov.Core()  # loading the plugins once per process; every compile_model shares it
    return _OV_CORE


class OpenVinoRunner(Runner):
    """An ONNX (FP32 or Q/DQ INT8) file, read directly (no IR step), or an OpenVINO IR (.xml beside its .bin: FP32,
    or NNCF's INT8), compiled by OpenVINO for its CPU plugin.

    hint: auto (latency at batch 1, throughput above) | latency | throughput. precision: f32 | bf16 (the
    plugin's INFERENCE_PRECISION_HINT). threads: INFERENCE_NUM_THREADS; None = the usable physical cores.
    properties: further CPU plugin properties for every compile (e.g. {"ENABLE_CPU_PINNING": "YES"}), on top
    of the hint, threads and precision above; a property the plugin does not know fails at open time.
    call: how a static-shape request runs: sync (infer, on the calling thread) | async (start_async + wait,
    on the plugin's stream thread while the caller waits).
    """

    HINTS = ("auto", "latency", "throughput")
    PRECISIONS = ("f32", "bf16")
    CALLS = ("sync", "async")

    def __init__(self, path: str | os.PathLike, threads: Optional[int] = None, hint: str = "auto",
                 device: str = "CPU", precision: str = "f32", properties: Optional[dict] = None,
                 call: str = "sync"):
        try:
            import openvino as ov
        except ImportError as exc:
            raise BundleError(f"openvino is not importable ({exc}); install it with pip install openvino "
                              "or pass --runtime onnxruntime") from None
        path = os.fspath(path)
        hint = (hint or "auto").lower()
        if hint not in self.HINTS:
            raise BundleError(f"OpenVINO performance hint {hint!r} is not one of {list(self.HINTS)}")
        if precision not in self.PRECISIONS:
            raise BundleError(f"OpenVINO inference precision {precision!r} is not one of {list(self.PRECISIONS)}")
        if call not in self.CALLS:
            raise BundleError(f"OpenVINO call style {call!r} is not one of {list(self.CALLS)}")
        self.path, self.hint, self.device, self.precision, self.call = path, hint, device, precision, call
        self.properties = dict(properties or {})
        self.threads = int(threads) if threads else physical_cores()
        self.description = f"openvino:{os.path.basename(path)}" + ("" if precision == "f32" else f" ({precision})")
        self.core = _openvino_core(ov)
        try:
            self.model = self.core.read_model(path)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own for unreadable models
            raise self._unusable(exc) from None
        inp, out = self.model.inputs[0], self.model.outputs[0]
        self.input_name, self.output_name = inp.get_any_name(), out.get_any_name()
        dims = [d.get_length() if d.is_static else None for d in inp.get_partial_shape()]
        self.input_shape = tuple(static_dim(d) for d in dims[1:])
        fixed = static_dim(dims[0])
        self.min_batch, self.max_batch = (fixed, fixed) if fixed else (1, None)
        self._latency: OrderedDict = OrderedDict()  # batch size -> infer request of a static-shape compile
        self._throughput = None  # (compiled model, infer requests)
        # Compile now, so a file the plugin cannot take fails at open time, not at the first call.
        self._throughput_requests() if hint == "throughput" else self._latency_request(fixed or 1)

    def _unusable(self, exc: BaseException) -> BundleError:
        return BundleError(f"{self.path}: OpenVINO cannot compile it ({message_line(exc)}); re-export the model, "
                           "copy the bundle again or pass --runtime onnxruntime")

    def config(self, hint: str) -> dict:
        """The compile settings for one hint: what `bench` and the profiler report as this runner's setup."""
        return {"PERFORMANCE_HINT": hint.upper(), "INFERENCE_NUM_THREADS": self.threads,
                "INFERENCE_PRECISION_HINT": self.precision, **self.properties}

    def _compile(self, model, hint: str):
        try:
            return self.core.compile_model(model, self.device, self.config(hint))
        except Exception as exc:
            raise self._unusable(exc) from None

    def _latency_request(self, n: int):
        request = self._latency.get(n)
        if request is not None:
            self._latency.move_to_end(n)
            return request
        model = self.model
        if self.max_batch is None and all(self.input_shape):
            model = self.model.clone()
            model.reshape({model.inputs[0]: [n, *self.input_shape]})
        request = self._compile(model, "latency").create_infer_request()
        self._latency[n] = request
        while len(self._latency) > STATIC_SHAPES:
            self._latency.popitem(last=False)
        return request

    def _throughput_requests(self) -> list:
        if self._throughput is None:
            compiled = self._compile(self.model, "throughput")
            count = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            self._throughput = (compiled, [compiled.create_infer_request() for _ in range(count)])
        return self._throughput[1]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        if self.hint == "latency" or (self.hint == "auto" and n == 1) or self.max_batch is not None:
            request = self._latency_request(n) if self.max_batch is None else self._latency_request(self.max_batch)
            if self.call == "async":
                request.start_async({0: batch}, share_inputs=True)
                request.wait()
            else:
                request.infer({0: batch}, share_inputs=True)
            return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        requests = self._throughput_requests()
        chunks = np.array_split(batch, min(n, len(requests)))
        used = requests[:len(chunks)]
        for request, chunk in zip(used, chunks):
            request.start_async({0: np.ascontiguousarray(chunk)}, share_inputs=True)
        for request in used:
            request.wait()
        return np.concatenate([np.array(r.get_output_tensor(0).data, dtype=np.float32, copy=True) for r in used])

    def compiled_settings(self) -> list[dict]:
        """What the plugin compiled, read back from it: one dict per compiled model (batch: its static batch
        size, None where dynamic; hint; threads; precision)."""
        compiled = [(n, r.get_compiled_model()) for n, r in self._latency.items()]
        if self._throughput is not None:
            compiled.append((None, self._throughput[0]))
        static = self.max_batch is None and all(self.input_shape)  # see _latency_request
        return [{"batch": n if static else None,
                 "hint": str(c.get_property("PERFORMANCE_HINT")).split(".")[-1].lower(),
                 "threads": int(c.get_property("INFERENCE_NUM_THREADS")),
                 "streams": int(c.get_property("NUM_STREAMS")),
                 "precision": c.get_property("INFERENCE_PRECISION_HINT").to_string()} for n, c in compiled]

    def close(self) -> None:
        self._latency.clear()
        self._throughput = None


def _bf16_status() -> tuple[bool, str]:
    from deploy.cpu_features import has_bf16

    ok, what = importable("openvino", "openvino", "openvino")()
    if ok and not has_bf16():
        return False, "this CPU has no native bf16 (AVX512_BF16, AMX or Arm BF16)"
    return ok, what


# OpenVINO's own IR (.xml + its .bin, a companion; callbacks.OpenVinoIR: FP32, and INT8 by NNCF): read by the same
# OpenVINO runner. Triton here serves ONNX and TensorRT only (deploy triton says so in one sentence).
register_format("openvino-ir", "openvino", suffix=".xml", smoke_runtime="openvino")
register_runtime(RuntimeSpec(
    "openvino", ("onnx", "onnx-int8", "openvino-ir"),
    lambda path, providers=("cpu",), threads=None, hint=None: OpenVinoRunner(path, threads, hint or "auto",
                                                                             precision="f32"),
    importable("openvino", "openvino", "openvino"), "openvino"))
# The FP32 ONNX file run in bf16 where the CPU computes in bf16 natively: its own row with its own accuracy.
register_runtime(RuntimeSpec(
    "openvino-bf16", ("onnx",),
    lambda path, providers=("cpu",), threads=None, hint=None: OpenVinoRunner(path, threads, hint or "auto",
                                                                             precision="bf16"),
    _bf16_status, "openvino", precision="bf16"))
