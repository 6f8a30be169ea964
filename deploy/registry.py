"""The one registry of device runtimes and artifact formats, and the Runner interface every runtime implements.

Every command that opens a file asks this module: `deploy bench`, `deploy infer`, `--runtime auto`, `install`'s
smoke test, `deploy triton` and the fit-end table (callbacks/bundle.py). A runtime is a Runner class plus one
`register_runtime(RuntimeSpec(...))`; a kind of file is one `register_format(...)`. The built-in runtimes
(deploy/runtimes/: onnxruntime, openvino, tensorrt) register themselves exactly as a plugin does (deploy.plugins):
importing the deploy.runtimes package registers them, and every command imports it before its first lookup. This
module imports none of them (they import it).
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


def package_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def importable(module: str, package: str, install: str) -> Callable[[], tuple[bool, str]]:
    """A RuntimeSpec status: usable where `module` can be imported (checked without importing it)."""
    def status() -> tuple[bool, str]:
        if importlib.util.find_spec(module) is None:
            return False, f"{module} is not installed (pip install {install})"
        return True, f"{package} {package_version(package) or ''}".strip()

    return status


def installed(module: str) -> bool:
    """Whether `module` can be imported here (found without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_package(runtime: str, module: str, package: str, extra: str, file_kind: str) -> str:
    """The one sentence of a runtime whose package is not on this device."""
    return (f"{runtime} is not installed here, so {file_kind} files cannot run ({module} missing); "
            f"pip install {package} (or edgecls[{extra}]), or pick another --runtime")


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
        return package_version(self.package)


@dataclass(frozen=True)
class FormatSpec:
    """One kind of artifact file (the manifest's `format`) and what the commands need to know of it."""

    name: str
    default_runtime: str  # opens its files where no --runtime is given
    suffix: str = ""  # its file's ending, e.g. ".onnx"
    layout: str = "NCHW"  # the input layout its files take (NHWC for most phone runtimes)
    triton: Optional[tuple[str, str]] = None  # (Triton platform, model file name) where Triton serves it; else None
    smoke_runtime: Optional[str] = None  # the runtime `install` smoke-tests its files in; None: checksum only


RUNTIMES: dict[str, RuntimeSpec] = {}
FORMATS: dict[str, FormatSpec] = {}


def register_runtime(spec: RuntimeSpec) -> RuntimeSpec:
    """Add a device runtime: `deploy bench` and `--runtime auto` consider it for every file of its formats, and
    the fit-end table measures each such file in it."""
    RUNTIMES[spec.name] = spec
    return spec


def register_format(name: str, default_runtime: str, **fields) -> FormatSpec:
    """Add an artifact format (the manifest's `format`): bundles may list files of it, and `default_runtime`
    opens them where no --runtime is given; `fields`: FormatSpec's other fields (suffix, layout, triton,
    smoke_runtime)."""
    spec = FormatSpec(name, default_runtime, **fields)
    FORMATS[name] = spec
    return spec


def _load_plugins() -> None:
    """Load the plugins (deploy.plugins: EDGECLS_PLUGINS, the `edgecls.plugins` entry points, among them the
    package's own ExecuTorch runtime) where a lookup misses, as `python -m deploy` loads them before a command: code
    that uses the registry in-process finds the same runtimes and formats."""
    from deploy.plugins import load_plugins

    load_plugins()


def runtime_spec(name: str) -> RuntimeSpec:
    if name not in RUNTIMES:
        _load_plugins()
    if name not in RUNTIMES:
        raise BundleError(f"no runtime named {name!r}; use one of {sorted(RUNTIMES)}")
    return RUNTIMES[name]


def format_spec(name: str) -> Optional[FormatSpec]:
    """The format registered under `name`; None for a format no module loaded here, plugins included, registers."""
    if name not in FORMATS:
        _load_plugins()
    return FORMATS.get(name)


def default_runtime(format: str) -> Optional[str]:
    spec = format_spec(format)
    return spec.default_runtime if spec is not None else None


def runnable_here(format: str) -> bool:
    """Some runtime installed here reads files of `format`."""
    format_spec(format)  # a plugin's format: its runtime registers with it
    return any(format in spec.formats and spec.available() for spec in RUNTIMES.values())


def unrunnable_notice(entry: dict) -> str:
    """The one line a command prints for an artifact it skips because nothing here runs its format."""
    spec = FORMATS.get(entry["format"])
    why = (f"its runtime {spec.default_runtime} is not usable here ({runtime_spec(spec.default_runtime).status()[1]})"
           if spec is not None and spec.default_runtime in RUNTIMES else
           "no runtime here reads that format (set EDGECLS_PLUGINS to the plugin that adds it)")
    return f"{entry['file']} ({entry['format']}) skipped: {why}"


def runner_for_file(path: str | os.PathLike, format: str, providers: Sequence[str] = ("cpu",),
                    threads: Optional[int] = None, runtime: Optional[str] = None,
                    hint: Optional[str] = None, qdq: str = "fused") -> Runner:
    """The runner for one artifact file of a manifest format (onnx, onnx-int8, tensorrt) in `runtime` (a name
    in RUNTIMES; None: the format's default, ONNX Runtime for ONNX files); `qdq` exact is ONNX Runtime's only."""
    if format_spec(format) is None:
        raise BundleError(f"{os.fspath(path)}: no runner for format {format!r}")
    spec = runtime_spec(runtime or FORMATS[format].default_runtime)
    if format not in spec.formats:
        raise BundleError(f"{os.fspath(path)}: {spec.name} cannot run {format} files (it reads "
                          f"{', '.join(spec.formats)}); pass another --runtime or --format")
    extra = {"qdq": qdq} if qdq != "fused" else {}
    return spec.open(path, providers=providers, threads=threads, hint=hint, **extra)


def open_runner(bundle: Bundle, entry: dict, providers: Sequence[str] = ("cpu",), threads: Optional[int] = None,
                runtime: Optional[str] = None, hint: Optional[str] = None, say: bool = True) -> Runner:
    """The right runner for one manifest artifact entry, run as this device should (device_qdq); where that is
    not ONNX Runtime's fused kernels, a RuntimeWarning says why (`say` False: none)."""
    runtime = runtime or default_runtime(entry["format"]) or ""
    qdq = device_qdq(entry["format"], entry.get("runtime"), runtime, providers)
    path = bundle.artifact_path(entry)
    if qdq == "exact" and say:  # the CLI shows a warning once per line that issues it
        warnings.warn(exact_notice(entry["file"]), RuntimeWarning, stacklevel=2)
    return runner_for_file(path, entry["format"], providers, threads, runtime, hint, qdq)

