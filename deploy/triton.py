"""A Triton Inference Server model repository from a bundle artifact.

Layout: ``REPO/<name>/config.pbtxt``, ``REPO/<name>/labels.txt``, ``REPO/<name>/1/model.onnx`` (or
``model.plan`` for an engine, Triton's default file name for the tensorrt_plan platform).
"""

from __future__ import annotations

import os
import shutil
from typing import Optional

from deploy.atomic import atomic_path, atomic_write_bytes
from deploy.bundle import Bundle, BundleError

PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "onnx-int8": ("onnxruntime_onnx", "model.onnx"),
             "tensorrt": ("tensorrt_plan", "model.plan")}


def config_pbtxt(name: str, platform: str, input_name: str, output_name: str, input_dims: list[int],
                 num_classes: int, max_batch_size: int, preferred_batch_sizes: list[int],
                 queue_delay_us: int = 100, instance_kind: Optional[str] = None) -> str:
    """Triton model configuration (protobuf text); dims exclude the batch dimension, as Triton expects."""
    preferred = sorted({b for b in preferred_batch_sizes if 1 <= b <= max_batch_size})
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch_size}",
        "input [",
        "  {",
        f'    name: "{input_name}"',
        "    data_type: TYPE_FP32",
        "    format: FORMAT_NCHW",
        f"    dims: [ {', '.join(str(d) for d in input_dims)} ]",
        "  }",
        "]",
        "output [",
        "  {",
        f'    name: "{output_name}"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {num_classes} ]",
        '    label_filename: "labels.txt"',
        "  }",
        "]",
        "dynamic_batching {",
    ]
    if preferred:
        lines.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]")
    lines += [f"  max_queue_delay_microseconds: {queue_delay_us}", "}"]
    if instance_kind:
        lines += ["instance_group [", "  {", "    count: 1", f"    kind: KIND_{instance_kind.upper()}", "  }", "]"]
    return "\n".join(lines) + "\n"


def write_triton_repository(bundle: Bundle, out_dir: str, entry: dict, model_name: Optional[str] = None,
                            max_batch_size: Optional[int] = None, instance_kind: Optional[str] = None,
                            io_names: tuple[str, str] = ("input", "logits")) -> str:
    """Write one model into a Triton repository folder; returns the model folder."""
    if entry["format"] not in PLATFORMS:
        raise BundleError(f"{entry['file']}: `deploy triton` writes {', '.join(PLATFORMS)} models, not "
                          f"{entry['format']}; pass --format onnx or --format onnx-int8")
    platform, filename = PLATFORMS[entry["format"]]
    name = model_name or bundle.manifest["name"]
    if not name or any(c in name for c in "/\\ \""):
        raise BundleError(f"Triton model name {name!r} must be non-empty without slashes, spaces or quotes; pass --name")
    profile_max = None
    if entry["format"] == "tensorrt":
        import json

        from deploy.engine import sidecar_path

        try:
            with open(sidecar_path(bundle.artifact_path(entry)), encoding="utf-8") as handle:
                sidecar = json.load(handle)
            profile_max = sidecar["profile"]["max"][0]
            io_names = (sidecar["profile"]["input"], sidecar.get("output", io_names[1]))
        except (OSError, ValueError, KeyError):
            raise BundleError(f"{sidecar_path(bundle.artifact_path(entry))}: missing or unreadable, so the engine's "
                              "max batch is unknown; rebuild the engine with `python -m deploy build-engine`") from None
    max_batch = max_batch_size or profile_max or 32
    if profile_max is not None and max_batch > profile_max:
        raise BundleError(f"--max-batch-size {max_batch} exceeds the engine's optimization profile max {profile_max}; "
                          "use a smaller value or rebuild the engine with a larger --max-batch")
    model_dir = os.path.join(out_dir, name)
    os.makedirs(os.path.join(model_dir, "1"), exist_ok=True)
    target = os.path.join(model_dir, "1", filename)
    with atomic_path(target) as tmp:
        shutil.copyfile(bundle.artifact_path(entry), tmp)
    atomic_write_bytes(os.path.join(model_dir, "labels.txt"), ("\n".join(bundle.classes) + "\n").encode("utf-8"))
    text = config_pbtxt(name, platform, io_names[0], io_names[1], list(bundle.input_shape), len(bundle.classes),
                        max_batch, [1, 8, max_batch], instance_kind=instance_kind)
    atomic_write_bytes(os.path.join(model_dir, "config.pbtxt"), text.encode("utf-8"))
    return model_dir
