"""NCNN: Tencent's runtime for phones and ARM boards (a Raspberry Pi's usual choice), torch-free (`pip install ncnn`).

A file is a pair: model.<precision>.ncnn.param (the graph, text) and model.<precision>.ncnn.bin (the weights), both
written by pnnx; the manifest lists the .param and names the .bin as its companion. FP16 files store weights in
half precision (half the size) and are run with fp16 storage, as NCNN runs them on an ARM CPU; FP32 files are run
with every fp16 option off, so they compute what torch computes. NCNN takes one CHW image per call (its Mat has no
batch axis), so a batch runs image by image.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from deploy.bundle import BundleError
from deploy.registry import Runner, RuntimeSpec, installed, missing_package, register_format, register_runtime

NAME, FORMAT, PACKAGE, MODULE = "ncnn", "ncnn", "ncnn", "ncnn"
PARAM, WEIGHTS = ".ncnn.param", ".ncnn.bin"


def weights_of(param: str | os.PathLike) -> str:
    """The .bin file beside a .param file."""
    param = os.fspath(param)
    return param[: -len(PARAM)] + WEIGHTS if param.endswith(PARAM) else param + ".bin"


def input_shape_of(param: str | os.PathLike) -> tuple:
    """(C, H, W) from the Input layer's own parameters (0=w 1=h 2=c), which NCNNExport writes; (3, None, None)
    for a file without them (pnnx's as it comes)."""
    with open(param, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            fields = line.split()
            if fields[:1] == ["Input"]:
                values = dict(f.split("=", 1) for f in fields[4:] if "=" in f)
                try:
                    w, h, c = (int(values[k]) for k in ("0", "1", "2"))
                except (KeyError, ValueError):
                    break
                return (c, h, w)
    return (3, None, None)


class NcnnRunner(Runner):
    def __init__(self, path: str | os.PathLike, threads: Optional[int] = None) -> None:
        if not installed(MODULE):
            raise BundleError(missing_package("NCNN", MODULE, PACKAGE, "ncnn", ".ncnn.param"))
        import ncnn

        path = os.fspath(path)
        weights = weights_of(path)
        self.description = f"ncnn:{os.path.basename(path)}"
        if not os.path.isfile(weights):
            raise BundleError(f"{weights}: the weights of {os.path.basename(path)} are missing; copy the whole bundle "
                              "folder (each .ncnn.param needs its .ncnn.bin)")
        fp16 = ".fp16." in os.path.basename(path)
        self.net = ncnn.Net()
        opt = self.net.opt
        opt.use_fp16_storage = opt.use_fp16_packed = fp16
        opt.use_fp16_arithmetic = False  # x86 has no fp16 arithmetic; on ARM it would change the numbers
        opt.num_threads = threads or os.cpu_count() or 1
        if self.net.load_param(path) != 0 or self.net.load_model(weights) != 0:
            raise BundleError(f"{path}: NCNN cannot load it or its {os.path.basename(weights)}; copy the bundle again "
                              "or re-export the model")
        self._ncnn = ncnn
        self.input_name, self.output_name = self.net.input_names()[0], self.net.output_names()[0]
        self.input_shape = input_shape_of(path)
        self.min_batch = self.max_batch = 1

    def _run(self, batch: np.ndarray) -> np.ndarray:
        extractor = self.net.create_extractor()
        extractor.input(self.input_name, self._ncnn.Mat(np.ascontiguousarray(batch[0])).clone())
        code, out = extractor.extract(self.output_name)
        if code != 0:
            raise RuntimeError(f"{self.description}: NCNN could not run the image (extract returned {code})")
        return np.array(out, dtype=np.float32).reshape(1, -1)

    def close(self) -> None:
        net = getattr(self, "net", None)
        if net is not None:
            net.clear()
            self.net = None


def status() -> tuple[bool, str]:
    if not installed(MODULE):
        return False, missing_package("NCNN", MODULE, PACKAGE, "ncnn", ".ncnn.param")
    from importlib import metadata

    return True, f"{PACKAGE} {metadata.version(PACKAGE)}"


register_format(FORMAT, NAME, suffix=PARAM, layout="NCHW", smoke_runtime=NAME)
register_runtime(RuntimeSpec(NAME, (FORMAT,), lambda path, providers=("cpu",), threads=None, hint=None:
                             NcnnRunner(path, threads), status, PACKAGE))
