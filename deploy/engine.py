"""ONNX -> TensorRT engine, for TensorRT 10.x and 11.x, with a sidecar JSON that pins where it may run.

An engine only loads on the TensorRT version and GPU architecture that built it, and loading it
elsewhere fails deep inside TensorRT. So every engine gets ``<engine>.json`` beside it, and runners
compare that sidecar with the running TensorRT and GPU *before* deserializing, refusing with the
command that rebuilds it. tensorrt, pycuda and cuda-python are imported inside functions only.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from typing import Any, Optional

from deploy.bundle import BundleError, atomic_write_bytes, atomic_write_json, sha256_file

PRECISIONS = ("fp32", "fp16", "int8")


class EngineError(BundleError):
    """An engine that cannot be built or must not be loaded here; the message says what to run."""


def tensorrt_status(device: int = 0) -> tuple[bool, str]:
    """(True, 'TensorRT x on GPU') where engines can be built and run here, else (False, why not)."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        return False, (f"tensorrt is not importable ({exc}); install it with pip install 'edgecls[trt]' "
                       "or use the TensorRT that ships with JetPack")
    from deploy.cuda_memory import gpu_info

    try:
        gpu = gpu_info(device)
    except Exception as exc:  # driver missing, no GPU, binding missing: all mean "not here"
        return False, f"TensorRT {trt.__version__} is installed but no CUDA GPU is usable ({exc})"
    return True, f"TensorRT {trt.__version__} on {gpu['name']} (compute capability {gpu['compute_capability']})"


def running_platform(device: int = 0) -> dict:
    """The TensorRT version and GPU an engine would load on here."""
    import tensorrt as trt

    from deploy.cuda_memory import gpu_info

    return {"tensorrt_version": trt.__version__, "gpu": gpu_info(device)}


def sidecar_path(engine_path: str | os.PathLike) -> str:
    return os.fspath(engine_path) + ".json"


def rebuild_command(engine_path: str | os.PathLike, sidecar: Optional[dict] = None) -> str:
    sidecar = sidecar or {}
    profile = sidecar.get("profile") or {}
    precision = sidecar.get("precision") or _precision_from_name(os.fspath(engine_path))
    cmd = f"python -m deploy build-engine --bundle {os.path.dirname(os.path.abspath(engine_path))} --precision {precision}"
    if profile.get("min") and profile.get("opt") and profile.get("max"):
        cmd += f" --min-batch {profile['min'][0]} --opt-batch {profile['opt'][0]} --max-batch {profile['max'][0]}"
    return cmd


def _precision_from_name(name: str) -> str:
    parts = os.path.basename(name).split(".")
    return next((p for p in parts if p in PRECISIONS), "fp16")


def _version_key(version: str) -> tuple:
    # 10.3.0.26 and 10.3.0.30 are builds of one release; engines are tied to major.minor.patch.
    return tuple(str(version).split(".")[:3])


def check_engine_sidecar(engine_path: str | os.PathLike, running: Optional[dict] = None) -> dict:
    """Return the engine's sidecar if it matches the running TensorRT and GPU, else raise EngineError."""
    engine_path = os.fspath(engine_path)
    path = sidecar_path(engine_path)
    try:
        with open(path, encoding="utf-8") as handle:
            sidecar = json.load(handle)
        built_trt = sidecar["tensorrt_version"]
        built_cc = sidecar["gpu"]["compute_capability"]
    except FileNotFoundError:
        raise EngineError(f"{path}: missing, so nothing says which TensorRT and GPU built {os.path.basename(engine_path)}; "
                          f"rebuild it here with: {rebuild_command(engine_path)}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineError(f"{path}: unreadable engine sidecar ({exc!r}); rebuild the engine here with: "
                          f"{rebuild_command(engine_path)}") from None
    running = running or running_platform()
    here_trt, here_gpu = running["tensorrt_version"], running["gpu"]
    if _version_key(built_trt) != _version_key(here_trt) or str(built_cc) != str(here_gpu["compute_capability"]):
        raise EngineError(
            f"{engine_path} was built with TensorRT {built_trt} for {sidecar['gpu'].get('name', 'a GPU')} "
            f"(compute capability {built_cc}) but this machine has TensorRT {here_trt} and {here_gpu.get('name', 'a GPU')} "
            f"(compute capability {here_gpu['compute_capability']}), so it cannot load here; rebuild it on this "
            f"device with: {rebuild_command(engine_path, sidecar)}")
    return sidecar


def convert_onnx_to_fp16(onnx_path: str, out_path: str) -> str:
    """FP16 ONNX with FP32 inputs/outputs, which TensorRT 11 needs for an FP16 engine (no FP16 flag there)."""
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError:
        raise EngineError("TensorRT 11 builds FP16 engines from an FP16 ONNX, and converting one needs onnx and "
                          "onnxconverter-common; install them with pip install onnx onnxconverter-common") from None
    model = float16.convert_float_to_float16(onnx.load(onnx_path), keep_io_types=True)
    atomic_write_bytes(out_path, model.SerializeToString())
    return out_path


def _check_profile(min_batch: int, opt_batch: int, max_batch: int) -> None:
    if not (1 <= min_batch <= opt_batch <= max_batch):
        raise EngineError(f"the batch profile must satisfy 1 <= min <= opt <= max, got min={min_batch} "
                          f"opt={opt_batch} max={max_batch}; change --min-batch/--opt-batch/--max-batch")


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, precision: str = "fp16",
                 min_batch: int = 1, opt_batch: int = 8, max_batch: int = 32, workspace_mb: int = 2048,
                 timing_cache_path: Optional[str] = None, device: int = 0) -> dict:
    """Build a serialized engine (and its sidecar) from an ONNX file; returns the sidecar dict.

    fp16 on TensorRT 10 uses the (deprecated) FP16 builder flag; on 11 the ONNX is converted to FP16 and
    built strongly typed. int8 expects a Q/DQ ONNX (explicit quantization) on both.
    """
    import tensorrt as trt

    onnx_path, engine_path = os.fspath(onnx_path), os.fspath(engine_path)
    if precision not in PRECISIONS:
        raise EngineError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    _check_profile(min_batch, opt_batch, max_batch)
    major = int(trt.__version__.split(".")[0])
    gpu = running_platform(device)["gpu"]
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = major >= 11
    source, temp_fp16 = onnx_path, None
    if major >= 11 and precision == "fp16":
        temp_fp16 = convert_onnx_to_fp16(onnx_path, engine_path + ".fp16.onnx")
        source = temp_fp16
    try:
        # STRONGLY_TYPED exists in 10 and 11 (always on in 11); EXPLICIT_BATCH is gone in 11, so never name it.
        flags = (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)) if strongly_typed else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(source):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse it ({errors})")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        if not strongly_typed and precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)  # int8 too: layers left unquantized may then run in fp16
        if not strongly_typed and precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # Q/DQ nodes give the scales; no calibrator
        tensor = network.get_input(0)
        chw = tuple(tensor.shape)[1:]
        shapes = {k: (b,) + chw for k, b in (("min", min_batch), ("opt", opt_batch), ("max", max_batch))}
        profile = builder.create_optimization_profile()
        profile.set_shape(tensor.name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)
        cache_bytes = b""
        if timing_cache_path and os.path.exists(timing_cache_path):
            with open(timing_cache_path, "rb") as handle:
                cache_bytes = handle.read()
        cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(cache, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineError(f"{onnx_path}: TensorRT {trt.__version__} could not build a {precision} engine "
                              "(see the TensorRT log above); try a larger --workspace-mb or another precision")
        if timing_cache_path:
            atomic_write_bytes(timing_cache_path, bytes(config.get_timing_cache().serialize()))
    finally:
        if temp_fp16 and os.path.exists(temp_fp16):
            os.unlink(temp_fp16)
    sidecar = {
        "engine": os.path.basename(engine_path),
        "tensorrt_version": trt.__version__,
        "gpu": gpu,
        "precision": precision,
        "strongly_typed": strongly_typed,
        "profile": {"input": tensor.name, **{k: list(v) for k, v in shapes.items()}},
        "output": network.get_output(0).name,
        "workspace_mb": int(workspace_mb),
        "onnx_file": os.path.basename(onnx_path),
        "onnx_sha256": sha256_file(onnx_path),
        "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    # Sidecar first: a crash between the two leaves an orphan sidecar, never an unlabelled engine.
    atomic_write_json(sidecar_path(engine_path), sidecar)
    atomic_write_bytes(engine_path, bytes(serialized))
    return sidecar


def write_sidecar(engine_path: str | os.PathLike, sidecar: dict[str, Any]) -> None:
    atomic_write_json(sidecar_path(engine_path), sidecar)
