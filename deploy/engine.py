"""ONNX -> TensorRT engine, for TensorRT 10.x and 11.x, with a sidecar JSON that pins where it may run.

An engine only loads on the TensorRT version and GPU architecture that built it, and loading it
elsewhere fails deep inside TensorRT. So every engine gets ``<engine>.json`` beside it, and runners
compare that sidecar with the running TensorRT and GPU *before* deserializing, refusing with the
command that rebuilds it. tensorrt, cuda-python and pycuda are imported inside functions only.
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


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _parser_errors(parser, limit: int = 3) -> str:
    count = int(parser.num_errors)
    if count == 0:
        return "the parser reported no error"
    shown = "; ".join(_one_line(parser.get_error(i)) for i in range(min(count, limit)))
    return f"{count} parser error{'s' if count > 1 else ''}, first: {shown}"


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, precision: str = "fp16",
                 min_batch: int = 1, opt_batch: int = 8, max_batch: int = 32, workspace_mb: int = 2048,
                 timing_cache_path: Optional[str] = None, device: int = 0) -> dict:
    """Build a serialized engine (and its sidecar) from an ONNX file; returns the sidecar dict.

    fp32 clears TF32 (on by default) so it really is FP32. fp16 on TensorRT 10 uses the (deprecated) FP16
    builder flag; on 11 the ONNX is converted to FP16 and built strongly typed. int8 expects a Q/DQ ONNX
    (explicit quantization) on both. Every failure, including one raised inside tensorrt, is an EngineError
    whose one-sentence message names the file, what failed and what to do; nothing is written then.
    """
    onnx_path, engine_path = os.fspath(onnx_path), os.fspath(engine_path)
    if precision not in PRECISIONS:
        raise EngineError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    _check_profile(min_batch, opt_batch, max_batch)
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EngineError(f"{engine_path}: cannot be built here because tensorrt is not importable ({exc}); install "
                          "it with pip install 'edgecls[trt]' or use the TensorRT that ships with JetPack") from None
    try:
        gpu = running_platform(device)["gpu"]
    except Exception as exc:  # no driver, no GPU or no CUDA binding: all mean "not here"
        raise EngineError(f"{engine_path}: cannot be built here because no CUDA GPU is usable ({_one_line(exc)}); "
                          "build it on the device that will run it") from None
    major = int(trt.__version__.split(".")[0])
    strongly_typed = major >= 11
    stage = {"step": "starting the build"}  # what was running, should tensorrt itself raise
    temp_fp16 = engine_path + ".fp16.onnx" if strongly_typed and precision == "fp16" else None
    try:
        source = onnx_path
        if temp_fp16:
            stage["step"] = "converting the ONNX to FP16"
            source = convert_onnx_to_fp16(onnx_path, temp_fp16)
        serialized, io, cache_out = _build_serialized(
            trt, onnx_path, source, engine_path, precision, strongly_typed, (min_batch, opt_batch, max_batch),
            int(workspace_mb), timing_cache_path, stage)
    except EngineError:
        raise
    except Exception as exc:
        raise EngineError(f"{onnx_path}: TensorRT {trt.__version__} failed while {stage['step']} "
                          f"({type(exc).__name__}: {_one_line(exc)}); fix what the TensorRT log above reports and "
                          f"build {os.path.basename(engine_path)} again") from exc
    finally:
        if temp_fp16 and os.path.exists(temp_fp16):
            os.unlink(temp_fp16)
    sidecar = {
        "engine": os.path.basename(engine_path),
        "tensorrt_version": trt.__version__,
        "gpu": gpu,
        "precision": precision,
        "strongly_typed": strongly_typed,
        "tf32": precision != "fp32",
        "profile": io["profile"],
        "output": io["output"],
        "workspace_mb": int(workspace_mb),
        "onnx_file": os.path.basename(onnx_path),
        "onnx_sha256": sha256_file(onnx_path),
        "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if cache_out is not None:
        atomic_write_bytes(timing_cache_path, cache_out)
    # Sidecar first: a crash between the two leaves an orphan sidecar, never an unlabelled engine.
    atomic_write_json(sidecar_path(engine_path), sidecar)
    atomic_write_bytes(engine_path, serialized)
    return sidecar


def _build_serialized(trt, onnx_path: str, source: str, engine_path: str, precision: str, strongly_typed: bool,
                      batches: tuple, workspace_mb: int, timing_cache_path: Optional[str],
                      stage: dict) -> tuple[bytes, dict, Optional[bytes]]:
    """(engine bytes, profile and output names, timing cache bytes or None); writes nothing."""
    version = trt.__version__
    what = onnx_path if source == onnx_path else f"{onnx_path} (as FP16 ONNX)"
    stage["step"] = "parsing the ONNX"
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # STRONGLY_TYPED exists in 10 and 11 (always on in 11); EXPLICIT_BATCH is gone in 11, so never name it.
    flags = (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(source):
        raise EngineError(f"{what}: TensorRT {version} cannot parse it ({_parser_errors(parser)}); re-export the "
                          "model with operators and an opset this TensorRT supports")
    if network.num_inputs < 1 or network.num_outputs < 1:
        raise EngineError(f"{onnx_path}: has {network.num_inputs} inputs and {network.num_outputs} outputs, but an "
                          "engine here needs one image input and one logits output; re-export the model")
    tensor = network.get_input(0)
    shape = tuple(int(d) for d in tensor.shape)
    if len(shape) != 4 or any(d < 1 for d in shape[1:]):
        raise EngineError(f"{onnx_path}: input {tensor.name} has shape {list(shape)}, but only its batch dimension "
                          "may be dynamic (NCHW); re-export the model with a fixed channel count and image size")

    stage["step"] = "configuring the builder"
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default: an "fp32" engine would run TF32 on Ampere/Orin
    if not strongly_typed and precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8 too: layers left unquantized may then run in fp16
    if not strongly_typed and precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # Q/DQ nodes give the scales; no calibrator
    shapes = {k: (b,) + shape[1:] for k, b in zip(("min", "opt", "max"), batches)}
    profile = builder.create_optimization_profile()
    profile.set_shape(tensor.name, shapes["min"], shapes["opt"], shapes["max"])
    if config.add_optimization_profile(profile) < 0:
        raise EngineError(f"{onnx_path}: TensorRT {version} rejected the batch profile min={batches[0]} "
                          f"opt={batches[1]} max={batches[2]} for input {tensor.name} {list(shape)}; choose "
                          "--min-batch/--opt-batch/--max-batch within the batch sizes the ONNX allows (a fixed "
                          "batch allows only itself), or re-export it with a dynamic batch")

    if timing_cache_path:
        stage["step"] = "loading the timing cache"
        cache_bytes = b""
        if os.path.exists(timing_cache_path):
            with open(timing_cache_path, "rb") as handle:
                cache_bytes = handle.read()
        cache = config.create_timing_cache(cache_bytes)
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise EngineError(f"{timing_cache_path}: TensorRT {version} cannot use this timing cache (one from "
                              "another TensorRT version or GPU, or a damaged file); delete it and build again")

    stage["step"] = f"building the {precision.upper()} engine"
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"{what}: TensorRT {version} could not build an {precision.upper()} engine in a "
                          f"{workspace_mb} MB workspace (the TensorRT log above says why); raise --workspace-mb, or "
                          "try another precision")
    cache_out = None
    if timing_cache_path:
        stage["step"] = "saving the timing cache"
        built_cache = config.get_timing_cache()
        if built_cache is None:
            raise EngineError(f"{timing_cache_path}: TensorRT {version} built the engine but returned no timing "
                              "cache to save; delete the file and build again")
        cache_out = bytes(built_cache.serialize())
    io = {"profile": {"input": tensor.name, **{k: list(v) for k, v in shapes.items()}},
          "output": network.get_output(0).name}
    return bytes(serialized), io, cache_out


def write_sidecar(engine_path: str | os.PathLike, sidecar: dict[str, Any]) -> None:
    atomic_write_json(sidecar_path(engine_path), sidecar)
