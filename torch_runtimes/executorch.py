"""ExecuTorch: .pte programs, their convolutions delegated to XNNPACK (FP32, and INT8 from PT2E's XNNPACKQuantizer),
the runtime PyTorch ships for Android and iOS apps. Its Python runtime (`executorch.runtime`) needs torch, so on a
device this runtime is for checking a file, not for serving it: an app links the C++ runtime instead. Hence a plugin
(torch_runtimes, the `edgecls.plugins` entry point), not a module of the torch-free deploy/ package.
Programs are exported at batch 1; a batch runs image by image."""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import numpy as np

from deploy.bundle import BundleError
from deploy.registry import Runner, RuntimeSpec, installed, missing_package, register_format, register_runtime

NAME, FORMAT, PACKAGE, MODULE = "executorch", "pte", "executorch", "executorch"


def _missing() -> Optional[str]:
    if not installed(MODULE):
        return missing_package("ExecuTorch", MODULE, PACKAGE, "executorch", ".pte")
    if not installed("torch"):
        return ("ExecuTorch's Python runtime needs torch, which is not installed here, so .pte files cannot run "
                "(an app links ExecuTorch's C++ runtime instead); pip install torch, or pick another --runtime")
    return None


@contextlib.contextmanager
def _quiet_stderr():
    """Silence what C++ writes to file descriptor 2 for the span (Python's own sys.stderr is left alone)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class ExecuTorchRunner(Runner):
    """`threads` is not applied: ExecuTorch's Python runtime sizes XNNPACK's thread pool to the cores itself."""

    def __init__(self, path: str | os.PathLike, threads: Optional[int] = None) -> None:
        missing = _missing()
        if missing:
            raise BundleError(missing)
        import torch

        with _quiet_stderr():  # loading the runtime prints cpuinfo's probing of Arm-only files on x86
            from executorch.runtime import Runtime

        path = os.fspath(path)
        self.description = f"executorch:{os.path.basename(path)}"
        self._torch = torch
        try:
            with _quiet_stderr():  # and so may the first Runtime.get()
                runtime = Runtime.get()
            self.method = runtime.load_program(path).load_method("forward")
        except Exception as exc:  # the runtime raises RuntimeError/ValueError of its own for unreadable programs
            said = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BundleError(f"{path}: ExecuTorch cannot load it ({said}); "
                              "copy the bundle again or re-export the model") from None
        meta = self.method.metadata.input_tensor_meta(0)
        shape = tuple(int(d) for d in meta.sizes())
        self.input_name, self.output_name = "input", "logits"
        self.input_shape = shape[1:]
        self.min_batch = self.max_batch = shape[0]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = self.method.execute([self._torch.from_numpy(np.ascontiguousarray(batch))])[0]
        return out.detach().numpy().astype(np.float32, copy=True)


def status() -> tuple[bool, str]:
    missing = _missing()
    if missing:
        return False, missing
    from importlib import metadata

    return True, f"{PACKAGE} {metadata.version(PACKAGE)}"


register_format(FORMAT, NAME, suffix=".pte", layout="NCHW", smoke_runtime=NAME)
register_runtime(RuntimeSpec(NAME, (FORMAT,), lambda path, providers=("cpu",), threads=None, hint=None:
                             ExecuTorchRunner(path, threads), status, PACKAGE))
