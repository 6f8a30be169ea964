"""Runners: one interface over ONNX Runtime, OpenVINO and TensorRT, ``infer(NCHW float32) -> logits``.

The fit-end callbacks measure artifacts through these same classes, so the numbers in a bundle's report
are the numbers the device gets. Each runtime is registered by name in RUNTIMES (what it is, which manifest
formats it reads, whether it is usable here); a new runtime is one Runner class and one `register_runtime`.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Optional, Sequence

import numpy as np

from deploy.bundle import Bundle, BundleError
from deploy.forms import device_qdq, exact_notice
from deploy.nvtx_ranges import nvtx_range

ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class Runner:
    """Common interface: ``input_name``, ``output_name``, ``input_shape`` (C, H, W), ``min_batch``,
    ``max_batch`` (None = unbounded) and ``infer(batch) -> logits`` for any batch size; batches beyond the
    model's limits are split or padded here, so callers never need to know them."""

    input_name: str
    output_name: str
    input_shape: tuple
    min_batch: int = 1
    max_batch: Optional[int] = None
    description: str = ""

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[0] == 0:
            raise ValueError(f"{self.description}: expected a non-empty NCHW batch, got shape {batch.shape}")
        expected = tuple(d for d in self.input_shape)
        if any(isinstance(e, int) and e > 0 and e != got for e, got in zip(expected, batch.shape[1:])):
            raise ValueError(f"{self.description}: expected input [N, {', '.join(map(str, expected))}], got "
                             f"{list(batch.shape)}; preprocess with the bundle's preprocessing block")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        n = batch.shape[0]
        if self.max_batch is not None and n > self.max_batch:
            return np.concatenate([self.infer(batch[i:i + self.max_batch]) for i in range(0, n, self.max_batch)])
        if n < self.min_batch:
            padded = np.zeros((self.min_batch,) + batch.shape[1:], dtype=np.float32)
            padded[:n] = batch
            batch = padded
        with nvtx_range("infer"):
            return self._run(batch)[:n]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def static_dim(value) -> Optional[int]:
    return value if isinstance(value, int) and value > 0 else None


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


class TensorRTRunner(Runner):
    """A serialized TensorRT 10.x/11.x engine, run through the name-based API (execute_async_v3).

    The sidecar is checked before anything is deserialized; device and pinned host buffers are sized for
    the profile's max batch once and reused for every call. TensorRT reports most failures by returning
    False or None rather than raising, so each return is checked and becomes an EngineError that names the
    engine and the command that rebuilds it.
    """

    def __init__(self, engine_path: str | os.PathLike, device: int = 0, check_sidecar: bool = True):
        from deploy.engine import EngineError, check_engine_sidecar, rebuild_command, tensorrt_status

        engine_path = os.fspath(engine_path)
        self.engine_path = engine_path
        self.description = f"tensorrt:{os.path.basename(engine_path)}"
        self.memory = None
        ok, reason = tensorrt_status(device)
        if not ok:
            raise EngineError(f"{engine_path}: cannot run here because {reason}; use --format onnx instead")
        sidecar = check_engine_sidecar(engine_path) if check_sidecar else None
        import tensorrt as trt

        from deploy.cuda_memory import open_cuda

        self.trt = trt
        self._rebuild = rebuild_command(engine_path, sidecar)
        try:
            self.memory = open_cuda(device)
        except RuntimeError as exc:  # CudaUnavailable, or a CUDA call failing while making the stream
            raise EngineError(f"{engine_path}: cannot run here because CUDA is not usable ({exc}); "
                              "use --format onnx instead") from None
        self.memory.activate()
        try:
            self._load(engine_path)
        except BaseException:
            self.memory.deactivate()
            self.close()
            raise
        self.memory.deactivate()

    def _error(self, what: str, todo: str = "rebuild it with"):
        from deploy.engine import EngineError

        return EngineError(f"{self.engine_path}: TensorRT {self.trt.__version__} {what}; {todo}: {self._rebuild}")

    def _load(self, engine_path: str) -> None:
        trt = self.trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        try:
            with open(engine_path, "rb") as handle:
                plan = handle.read()
        except OSError as exc:
            from deploy.engine import EngineError

            raise EngineError(f"{engine_path}: cannot be read ({exc.strerror}); rebuild it with: {self._rebuild}") \
                from None
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise self._error("could not deserialize it (see the TensorRT log above)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise self._error("could not create an execution context (often: GPU memory is short)",
                              "free GPU memory, or rebuild it with a smaller --max-batch")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise self._error(f"finds {len(inputs)} inputs and {len(outputs)} outputs in it, but a classifier "
                              "engine has one of each")
        self.input_name, self.output_name = inputs[0], outputs[0]
        shape_min, _, shape_max = (tuple(int(d) for d in s)
                                   for s in self.engine.get_tensor_profile_shape(self.input_name, 0))
        self.min_batch, self.max_batch = shape_min[0], shape_max[0]
        self.input_shape = shape_max[1:]
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        # The output shape at max batch tells the per-image output size without running anything.
        self._set_input_shape(shape_max)
        out_shape = tuple(int(d) for d in self.context.get_tensor_shape(self.output_name))
        if not out_shape or any(d < 0 for d in out_shape):
            raise self._error(f"gives output {self.output_name} the shape {list(out_shape)} at input shape "
                              f"{list(shape_max)}, so its buffer cannot be sized")
        self.host_in = self.memory.pinned(shape_max, self.input_dtype)
        self.host_out = self.memory.pinned(out_shape, self.output_dtype)
        self.device_in = self.memory.device(self.host_in.nbytes)
        self.device_out = self.memory.device(self.host_out.nbytes)
        for name, pointer in ((self.input_name, self.device_in), (self.output_name, self.device_out)):
            if not self.context.set_tensor_address(name, pointer):
                raise self._error(f"rejected the device buffer for tensor {name} (set_tensor_address returned "
                                  "False)")

    def _set_input_shape(self, shape: tuple) -> None:
        if not self.context.set_input_shape(self.input_name, tuple(shape)):
            raise self._error(f"rejected input shape {list(shape)} for {self.input_name} (its profile allows batch "
                              f"{self.min_batch} to {self.max_batch})")

    def _run(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        host_in, host_out = self.host_in[:n], self.host_out[:n]
        host_in[...] = batch  # casts to the engine's input dtype where it is not float32
        self.memory.activate()
        try:
            self._set_input_shape(host_in.shape)
            # The copies and the kernels are asynchronous: these ranges mark when each was queued, and nsys's
            # CUDA rows under them show how long the GPU spent on it.
            with nvtx_range("copy in"):
                self.memory.htod(self.device_in, host_in)
            with nvtx_range("execute"):
                if not self.context.execute_async_v3(self.memory.stream_handle):
                    raise self._error(f"could not run a batch of {n} (execute_async_v3 returned False; see the "
                                      "TensorRT log above)")
            with nvtx_range("copy out"):
                self.memory.dtoh(host_out, self.device_out)
                self.memory.synchronize()
        finally:
            self.memory.deactivate()
        return host_out.astype(np.float32, copy=True)

    def close(self) -> None:
        memory = getattr(self, "memory", None)
        if memory is not None:
            self.context = self.engine = None
            memory.close()
            self.memory = None


def _package_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _importable(module: str, package: str, install: str) -> Callable[[], tuple[bool, str]]:
    def status() -> tuple[bool, str]:
        if importlib.util.find_spec(module) is None:
            return False, f"{module} is not installed (pip install {install})"
        return True, f"{package} {_package_version(package) or ''}".strip()

    return status


def _bf16_status() -> tuple[bool, str]:
    from deploy.cpu_features import has_bf16

    ok, what = _importable("openvino", "openvino", "openvino")()
    if ok and not has_bf16():
        return False, "this CPU has no native bf16 (AVX512_BF16, AMX or Arm BF16)"
    return ok, what


def _openvino(path, threads, hint, precision) -> Runner:
    from deploy.openvino_runner import OpenVinoRunner

    return OpenVinoRunner(path, threads, hint or "auto", precision=precision)


def __getattr__(name: str):
    if name == "OpenVinoRunner":  # it lives in deploy.openvino_runner; this name is kept for importers
        from deploy.openvino_runner import OpenVinoRunner

        return OpenVinoRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _tensorrt_status() -> tuple[bool, str]:
    from deploy.engine import tensorrt_status

    return tensorrt_status()


@dataclass(frozen=True)
class RuntimeSpec:
    """One device runtime: its name (CLI and cache), the manifest formats it reads, how to open a file, and
    whether it can run here (checked without importing it where possible)."""

    name: str
    formats: tuple[str, ...]
    open: Callable[..., Runner]  # (path, providers=, threads=, hint=) -> Runner
    status: Callable[[], tuple[bool, str]]
    package: str
    precision: Optional[str] = None  # the precision it computes in whatever the file holds (bf16); None: the file's

    def available(self) -> bool:
        return self.status()[0]

    def version(self) -> Optional[str]:
        return _package_version(self.package)


RUNTIMES: dict[str, RuntimeSpec] = {}
DEFAULT_RUNTIME = {"onnx": "onnxruntime", "onnx-int8": "onnxruntime", "tensorrt": "tensorrt"}


def register_runtime(spec: RuntimeSpec) -> RuntimeSpec:
    """Add a device runtime: `deploy bench` and `--runtime auto` consider it for every file of its formats, and
    the fit-end table measures each such file in it."""
    RUNTIMES[spec.name] = spec
    return spec


FORMAT_FIELDS: dict[str, dict] = {}  # a format's suffix, input layout, smoke-test runtime (deploy/runtimes/)


def register_format(name: str, default_runtime: str, **fields) -> None:
    """Add an artifact format (the manifest's `format`): bundles may list files of it, and `default_runtime`
    opens them where no --runtime is given; `fields`: suffix, layout (the input layout its files take: NHWC for
    most phone runtimes), smoke_runtime."""
    from deploy.bundle import FORMATS

    FORMAT_FIELDS[name] = dict(fields)
    if name not in FORMATS:
        FORMATS.append(name)
    DEFAULT_RUNTIME[name] = default_runtime


register_runtime(RuntimeSpec(
    "onnxruntime", ("onnx", "onnx-int8"),
    lambda path, providers=("cpu",), threads=None, hint=None, qdq="fused": OnnxRuntimeRunner(path, providers, threads,
                                                                                             qdq=qdq),
    _importable("onnxruntime", "onnxruntime", "onnxruntime"), "onnxruntime"))
register_runtime(RuntimeSpec(
    "openvino", ("onnx", "onnx-int8"),
    lambda path, providers=("cpu",), threads=None, hint=None: _openvino(path, threads, hint, "f32"),
    _importable("openvino", "openvino", "openvino"), "openvino"))
# The FP32 ONNX file run in bf16 where the CPU computes in bf16 natively: its own row with its own accuracy.
register_runtime(RuntimeSpec(
    "openvino-bf16", ("onnx",),
    lambda path, providers=("cpu",), threads=None, hint=None: _openvino(path, threads, hint, "bf16"),
    _bf16_status, "openvino", precision="bf16"))
register_runtime(RuntimeSpec(
    "tensorrt", ("tensorrt",),
    lambda path, providers=("cpu",), threads=None, hint=None: TensorRTRunner(path),
    _tensorrt_status, "tensorrt"))


import deploy.runtimes  # noqa: E402,F401 (LiteRT, NCNN and ExecuTorch register themselves, as a plugin does)


def runtime_spec(name: str) -> RuntimeSpec:
    if name not in RUNTIMES:
        raise BundleError(f"no runtime named {name!r}; use one of {sorted(RUNTIMES)}")
    return RUNTIMES[name]


def runner_for_file(path: str | os.PathLike, format: str, providers: Sequence[str] = ("cpu",),
                    threads: Optional[int] = None, runtime: Optional[str] = None,
                    hint: Optional[str] = None, qdq: str = "fused") -> Runner:
    """The runner for one artifact file of a manifest format (onnx, onnx-int8, tensorrt) in `runtime` (a name
    in RUNTIMES; None: the format's default, ONNX Runtime for ONNX files); `qdq` exact is ONNX Runtime's only."""
    if format not in DEFAULT_RUNTIME:
        raise BundleError(f"{os.fspath(path)}: no runner for format {format!r}")
    spec = runtime_spec(runtime or DEFAULT_RUNTIME[format])
    if format not in spec.formats:
        raise BundleError(f"{os.fspath(path)}: {spec.name} cannot run {format} files (it reads "
                          f"{', '.join(spec.formats)}); pass another --runtime or --format")
    extra = {"qdq": qdq} if qdq != "fused" else {}
    return spec.open(path, providers=providers, threads=threads, hint=hint, **extra)


def open_runner(bundle: Bundle, entry: dict, providers: Sequence[str] = ("cpu",), threads: Optional[int] = None,
                runtime: Optional[str] = None, hint: Optional[str] = None, say: bool = True) -> Runner:
    """The right runner for one manifest artifact entry, run as this device should (device_qdq); where that is
    not ONNX Runtime's fused kernels, a RuntimeWarning says why (`say` False: none)."""
    runtime = runtime or DEFAULT_RUNTIME.get(entry["format"], "")
    qdq = device_qdq(entry["format"], entry.get("runtime"), runtime, providers)
    path = bundle.artifact_path(entry)
    if qdq == "exact" and say:  # the CLI shows a warning once per line that issues it
        warnings.warn(exact_notice(entry["file"]), RuntimeWarning, stacklevel=2)
    return runner_for_file(path, entry["format"], providers, threads, runtime, hint, qdq)
