"""Pinned host buffers, device buffers and a stream, through cuda-python first and pycuda as the fallback.

cuda-python is what ``pip install 'edgecls[trt]'`` installs: it comes as wheels (NVIDIA's own TensorRT samples
use it), while pycuda builds from source and needs the CUDA headers, so it is kept only for machines that
already have it. Imported only by the TensorRT runner and the engine builder, and each import of cuda-python /
pycuda happens inside a function, so a CPU-only device never needs either.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np


class CudaUnavailable(RuntimeError):
    """Neither cuda-python nor pycuda can reach a CUDA GPU."""


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6 / cuda-bindings 13
    except ImportError:
        from cuda import cudart  # older cuda-python; removed in cuda-bindings 13
    return cudart


def _check(result: Any) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA runtime call failed: {getattr(err, 'name', err)}")
    return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)


class PyCudaMemory:
    """pycuda on the device's primary context, so it shares memory and context with other CUDA users."""

    name = "pycuda"

    def __init__(self, device: int = 0):
        import pycuda.driver as cuda

        cuda.init()
        self.cuda = cuda
        self.context = cuda.Device(device).retain_primary_context()
        self.context.push()
        try:
            self.stream = cuda.Stream()
        finally:
            self.context.pop()
        self._allocations: list[Any] = []

    @property
    def stream_handle(self) -> int:
        return self.stream.handle

    def activate(self) -> None:
        self.context.push()

    def deactivate(self) -> None:
        self.context.pop()

    def pinned(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        return self.cuda.pagelocked_empty(shape, dtype)

    def device(self, nbytes: int) -> int:
        allocation = self.cuda.mem_alloc(max(int(nbytes), 1))
        self._allocations.append(allocation)
        return int(allocation)

    def htod(self, device_ptr: int, host: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(device_ptr, host, self.stream)

    def dtoh(self, host: np.ndarray, device_ptr: int) -> None:
        self.cuda.memcpy_dtoh_async(host, device_ptr, self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self.context.push()
        try:
            for allocation in self._allocations:
                allocation.free()
            self._allocations.clear()
        finally:
            self.context.pop()
            self.context.detach()


class CudaPythonMemory:
    """cuda-python's runtime API (what NVIDIA's own TensorRT samples use)."""

    name = "cuda-python"

    def __init__(self, device: int = 0):
        self.cudart = _cudart()
        _check(self.cudart.cudaSetDevice(device))
        self.stream = _check(self.cudart.cudaStreamCreate())
        self._device: list[int] = []
        self._host: list[int] = []

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def activate(self) -> None:
        pass

    def deactivate(self) -> None:
        pass

    def pinned(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        ptr = int(_check(self.cudart.cudaMallocHost(max(nbytes, 1))))
        self._host.append(ptr)
        raw = (ctypes.c_byte * max(nbytes, 1)).from_address(ptr)
        return np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape))).reshape(shape)

    def device(self, nbytes: int) -> int:
        ptr = int(_check(self.cudart.cudaMalloc(max(int(nbytes), 1))))
        self._device.append(ptr)
        return ptr

    def htod(self, device_ptr: int, host: np.ndarray) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(self.cudart.cudaMemcpyAsync(device_ptr, host.ctypes.data, host.nbytes, kind, self.stream))

    def dtoh(self, host: np.ndarray, device_ptr: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(self.cudart.cudaMemcpyAsync(host.ctypes.data, device_ptr, host.nbytes, kind, self.stream))

    def synchronize(self) -> None:
        _check(self.cudart.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        for ptr in self._device:
            self.cudart.cudaFree(ptr)
        for ptr in self._host:
            self.cudart.cudaFreeHost(ptr)
        self._device.clear()
        self._host.clear()
        self.cudart.cudaStreamDestroy(self.stream)


def _has_pycuda() -> bool:
    try:
        import pycuda.driver  # noqa: F401
    except ImportError:
        return False
    return True


def _has_cuda_python() -> bool:
    try:
        _cudart()
    except ImportError:
        return False
    return True


_NEITHER = "neither cuda-python nor pycuda is installed; install cuda-python (pip install cuda-python)"


def open_cuda(device: int = 0):
    """cuda-python when importable, else pycuda; CudaUnavailable says what to install when neither is."""
    if _has_cuda_python():
        return CudaPythonMemory(device)
    if _has_pycuda():
        return PyCudaMemory(device)
    raise CudaUnavailable(_NEITHER + " to run TensorRT engines")


def gpu_info(device: int = 0) -> dict:
    """{'name', 'compute_capability' ('8.7')} of a GPU, via cuda-python or else pycuda."""
    if _has_cuda_python():
        cudart = _cudart()
        count = int(_check(cudart.cudaGetDeviceCount()))
        if count <= device:
            raise CudaUnavailable(f"no CUDA GPU number {device} (found {count})")
        props = _check(cudart.cudaGetDeviceProperties(device))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return {"name": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}
    if not _has_pycuda():
        raise CudaUnavailable(_NEITHER + ", so no GPU can be reached")
    import pycuda.driver as cuda

    cuda.init()
    if cuda.Device.count() <= device:
        raise CudaUnavailable(f"no CUDA GPU number {device} (found {cuda.Device.count()})")
    dev = cuda.Device(device)
    major, minor = dev.compute_capability()
    return {"name": dev.name(), "compute_capability": f"{major}.{minor}"}
