"""LiteRT (formerly TensorFlow Lite): .tflite files, FP32 and full INT8 with float input and output, run by the
torch-free `ai-edge-litert` Interpreter (XNNPACK on the CPU of a phone, a Raspberry Pi or a PC).

A file's input is NHWC where its step wrote it so (the layout Android's image APIs hand over) and NCHW otherwise;
the runner reads which from the file's input shape and transposes deploy.preprocess's NCHW batch to it. The files
are exported at batch 1 (what a phone runs); a larger batch runs image by image.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from deploy.bundle import BundleError
from deploy.registry import Runner, RuntimeSpec, installed, missing_package, register_format, register_runtime

NAME, FORMAT, PACKAGE, MODULE = "litert", "tflite", "ai-edge-litert", "ai_edge_litert"


def tensor_layout(shape) -> str:
    """NHWC where the last axis holds the 3 colour channels and the second does not, else NCHW."""
    shape = [int(d) for d in shape]
    return "NHWC" if len(shape) == 4 and shape[3] == 3 and shape[1] != 3 else "NCHW"


class LiteRTRunner(Runner):
    def __init__(self, path: str | os.PathLike, threads: Optional[int] = None) -> None:
        if not installed(MODULE):
            raise BundleError(missing_package("LiteRT", MODULE, PACKAGE, "litert", ".tflite"))
        from ai_edge_litert.interpreter import Interpreter

        path = os.fspath(path)
        self.description = f"litert:{os.path.basename(path)}"
        try:
            self.interpreter = Interpreter(model_path=path, num_threads=threads or os.cpu_count() or 1)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{path}: LiteRT cannot load it ({str(exc).splitlines()[0]}); copy the bundle again "
                              "or re-export the model") from None
        inp, out = self.interpreter.get_input_details()[0], self.interpreter.get_output_details()[0]
        if inp["dtype"] != np.float32 or out["dtype"] != np.float32:
            raise BundleError(f"{path}: its input/output are {np.dtype(inp['dtype']).name}/"
                              f"{np.dtype(out['dtype']).name}, but deploy feeds float32 images and reads float32 "
                              "logits; export it with float input and output (LiteRTExport does)")
        self.input_index, self.output_index = inp["index"], out["index"]
        self.input_name, self.output_name = inp["name"], out["name"]
        self.layout = tensor_layout(inp["shape"])
        shape = [int(d) for d in inp["shape"]]
        self.input_shape = tuple(shape[1:]) if self.layout == "NCHW" else (shape[3], shape[1], shape[2])
        self.min_batch = self.max_batch = shape[0]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self.layout == "NHWC":
            batch = np.ascontiguousarray(batch.transpose(0, 2, 3, 1))
        self.interpreter.set_tensor(self.input_index, batch)
        self.interpreter.invoke()
        return np.array(self.interpreter.get_tensor(self.output_index), dtype=np.float32)


def status() -> tuple[bool, str]:
    if not installed(MODULE):
        return False, missing_package("LiteRT", MODULE, PACKAGE, "litert", ".tflite")
    from importlib import metadata

    return True, f"{PACKAGE} {metadata.version(PACKAGE)}"


register_format(FORMAT, NAME, suffix=".tflite", layout="NHWC", smoke_runtime=NAME)
register_runtime(RuntimeSpec(NAME, (FORMAT,), lambda path, providers=("cpu",), threads=None, hint=None:
                             LiteRTRunner(path, threads), status, PACKAGE))
