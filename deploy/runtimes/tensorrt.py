"""TensorRT: serialized engines (the `tensorrt` format), registered as a plugin registers one. TensorRT itself is
imported only when an engine is opened, so this module loads on any device."""

from __future__ import annotations

import os

import numpy as np

from deploy.nvtx_ranges import nvtx_range
from deploy.registry import Runner, RuntimeSpec, register_format, register_runtime


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


def _tensorrt_status() -> tuple[bool, str]:
    from deploy.engine import tensorrt_status

    return tensorrt_status()


# Triton's tensorrt_plan platform; install checks an engine by its sidecar on first use, not by a smoke inference.
register_format("tensorrt", "tensorrt", suffix=".engine", triton=("tensorrt_plan", "model.plan"))
register_runtime(RuntimeSpec(
    "tensorrt", ("tensorrt",),
    lambda path, providers=("cpu",), threads=None, hint=None: TensorRTRunner(path),
    _tensorrt_status, "tensorrt"))
