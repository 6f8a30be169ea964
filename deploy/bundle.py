"""The deploy bundle on disk: manifest.json (schema_version 1), labels.txt and the artifacts it lists.

Reading checks everything a device could get wrong after a copy (a missing file, a truncated file, a
hand-edited manifest) and says which file is at fault in one sentence. Writing is atomic, so a manifest
on disk is always either the old one or the new one, never half of each.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from deploy.atomic import atomic_write_bytes, atomic_write_json  # noqa: F401 (re-exported: deploy.bundle's writers)
from deploy.preprocessing_rules import PreprocessingError, check_preprocessing

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
LABELS = "labels.txt"
FORMATS = ["onnx", "onnx-int8", "tensorrt"]  # and any a plugin adds (deploy.runners.register_format)
_REBUILD_HINT = "re-create the bundle with the training run's fit-end callbacks or fix the file by hand"


class BundleError(ValueError):
    """A bundle that cannot be used as it is; the message names the file or field and what to do."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _fail(where: str, message: str) -> BundleError:
    return BundleError(f"{where}: {message}")


def validate_preprocessing(pre: Any, where: str = MANIFEST) -> dict:
    """Check a ``preprocessing`` block (datamodules.presets.Preprocessing.to_dict()) and return it."""
    try:
        return check_preprocessing(pre)
    except PreprocessingError as exc:
        raise _fail(where, f"{exc}; {_REBUILD_HINT}") from None


STATUSES = ("ok", "skipped", "failed")


def validate_artifact(entry: Any, where: str = MANIFEST) -> dict:
    """Check one ``artifacts`` entry. An ok entry (status "ok" or absent) has file, format, precision, sha256 and
    bytes (metrics and runtime_metrics optional); a skipped or failed one has format, precision and its one-sentence reason."""
    if not isinstance(entry, dict):
        raise _fail(where, f"every entry of 'artifacts' must be an object, got {entry!r}")
    status = entry.get("status", "ok")
    if status not in STATUSES:
        raise _fail(where, f"artifact 'status' must be one of {list(STATUSES)}, got {status!r}")
    name = entry.get("file")
    label = name or f"{entry.get('format')} {entry.get('precision')}"
    if entry.get("format") not in FORMATS:
        raise _fail(where, f"artifact {label}: 'format' must be one of {list(FORMATS)}, got {entry.get('format')!r}")
    if not isinstance(entry.get("precision"), str):
        raise _fail(where, f"artifact {label}: 'precision' must be a string such as 'fp32', 'fp16' or 'int8'")
    if status != "ok":
        if not (isinstance(entry.get("reason"), str) and entry["reason"]):
            raise _fail(where, f"artifact {label}: a {status} entry must give its 'reason'")
        return entry
    if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise _fail(where, f"artifact 'file' must be a path relative to the bundle folder, got {name!r}")
    digest = entry.get("sha256")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise _fail(where, f"artifact {name}: 'sha256' must be 64 lowercase hex digits, got {digest!r}")
    if not (isinstance(entry.get("bytes"), int) and entry["bytes"] >= 0):
        raise _fail(where, f"artifact {name}: 'bytes' must be a non-negative integer, got {entry.get('bytes')!r}")
    for companion in entry.get("companions") or []:
        if not (isinstance(companion, dict) and isinstance(companion.get("file"), str) and companion["file"]
                and not os.path.isabs(companion["file"]) and ".." not in companion["file"].split("/")
                and isinstance(companion.get("sha256"), str) and isinstance(companion.get("bytes"), int)):
            raise _fail(where, f"artifact {name}: each of 'companions' must give a relative 'file', its 'sha256' and "
                               f"'bytes', got {companion!r}")
    if "metrics" in entry and not isinstance(entry["metrics"], dict):
        raise _fail(where, f"artifact {name}: 'metrics' must be an object")
    if "form" in entry and not (isinstance(entry["form"], str) and entry["form"]):
        raise _fail(where, f"artifact {name}: 'form' must be a non-empty string such as \"INT8 CPU-form\", got "
                           f"{entry['form']!r}")
    # Optional (older bundles have none): the same file measured in other runtimes, e.g. OpenVINO in bf16.
    by_runtime = entry.get("runtime_metrics", {})
    if not (isinstance(by_runtime, dict) and all(isinstance(k, str) and isinstance(v, dict)
                                                 for k, v in by_runtime.items())):
        raise _fail(where, f"artifact {name}: 'runtime_metrics' must map runtime names to metric objects")
    if entry.get("gate", "met") not in ("met", "not met"):
        raise _fail(where, f"artifact {name}: 'gate' must be \"met\" or \"not met\", got {entry.get('gate')!r}")
    return entry


def is_ok(entry: dict) -> bool:
    return entry.get("status", "ok") == "ok"


def validate_manifest(manifest: Any, where: str = MANIFEST) -> dict:
    """Check a manifest dict against schema_version 1; raise BundleError naming the first bad field."""
    if not isinstance(manifest, dict):
        raise _fail(where, f"the manifest must be a JSON object, got {type(manifest).__name__}")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise _fail(where, f"'schema_version' is {version!r} but this runtime reads version {SCHEMA_VERSION}; "
                           "use a deploy runtime from the same edgecls release as the bundle")
    if not isinstance(manifest.get("name"), str):
        raise _fail(where, "'name' must be a string")
    task = manifest.get("task")
    if not isinstance(task, dict):
        raise _fail(where, f"'task' must be an object with 'classes' and 'input'; {_REBUILD_HINT}")
    classes = task.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise _fail(where, f"'task.classes' must be a non-empty list of class names, got {classes!r}")
    inp = task.get("input")
    shape = inp.get("shape") if isinstance(inp, dict) else None
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
        raise _fail(where, f"'task.input.shape' must be [C, H, W] of positive integers, got {shape!r}")
    if inp.get("layout", "NCHW") != "NCHW" or inp.get("dtype", "float32") != "float32":
        raise _fail(where, f"'task.input' must be float32 NCHW, got dtype={inp.get('dtype')!r} layout={inp.get('layout')!r}")
    pre = validate_preprocessing(manifest.get("preprocessing"), where)
    if list(pre.get("crop") or pre["resize"]) != shape[1:]:
        raise _fail(where, f"'task.input.shape' {shape} does not match the preprocessing output size {pre.get('crop') or pre['resize']}")
    artifacts = manifest.get("artifacts")
    if not isinstance(artifacts, list):
        raise _fail(where, "'artifacts' must be a list (it may be empty)")
    seen = set()
    for entry in artifacts:
        validate_artifact(entry, where)
        if not is_ok(entry):
            continue
        if entry["file"] in seen:
            raise _fail(where, f"artifact {entry['file']} is listed twice")
        seen.add(entry["file"])
    return manifest


@dataclass
class Bundle:
    """A validated bundle folder: the manifest and what the runtime needs from it."""

    path: str
    manifest: dict
    classes: list[str] = field(default_factory=list)

    @property
    def preprocessing(self) -> dict:
        return self.manifest["preprocessing"]

    @property
    def artifacts(self) -> list[dict]:
        """The artifacts that are in the folder (status ok)."""
        return [a for a in self.manifest["artifacts"] if is_ok(a)]

    @property
    def unavailable(self) -> list[dict]:
        """The artifacts the fit-end chain skipped or failed to make, each with its reason."""
        return [a for a in self.manifest["artifacts"] if not is_ok(a)]

    @property
    def input_shape(self) -> list[int]:
        return self.manifest["task"]["input"]["shape"]

    def artifact_path(self, entry: dict) -> str:
        return os.path.join(self.path, entry["file"])

    def artifact(self, format: Optional[str] = None, precision: Optional[str] = None,
                 prefer: Iterable[str] = ()) -> dict:
        """The first artifact of that format (and precision); the first artifact when format is None. Where
        several match (two onnx-int8 files: TensorRT's and the CPU form), the first whose manifest `runtime` is
        in `prefer` wins."""
        matches = [e for e in self.artifacts
                   if (format is None or e["format"] == format) and (precision is None or e["precision"] == precision)]
        prefer = tuple(prefer)
        for entry in sorted(matches, key=lambda e: e.get("runtime") not in prefer):  # stable: manifest order
            return entry
        have = ", ".join(f"{a['file']} ({a['format']}, {a['precision']})" for a in self.artifacts) or "none"
        want = " ".join(x for x in (format, precision) if x) or "any"
        why = next((f" ({a['status']} at fit end: {a['reason']})" for a in self.unavailable
                    if format in (None, a["format"]) and precision in (None, a["precision"])), "")
        raise BundleError(f"{os.path.join(self.path, MANIFEST)}: no {want} artifact in this bundle{why} (it has: {have}); "
                          "build it first, e.g. with `python -m deploy build-engine` for TensorRT")


def verify_artifact(bundle_dir: str, entry: dict) -> None:
    """Check that one artifact, and each companion file it needs (NCNN's weights), exists with the size and
    sha256 the manifest records."""
    for companion in entry.get("companions") or []:
        _verify_file(bundle_dir, companion)
    _verify_file(bundle_dir, entry)


def _verify_file(bundle_dir: str, entry: dict) -> None:
    path = os.path.join(bundle_dir, entry["file"])
    if not os.path.isfile(path):
        raise BundleError(f"{path}: artifact listed in {MANIFEST} is missing; copy the whole bundle folder again")
    size = os.path.getsize(path)
    if size != entry["bytes"]:
        raise BundleError(f"{path}: artifact is {size} bytes but {MANIFEST} records {entry['bytes']} (truncated or "
                          "replaced); copy the whole bundle folder again")
    if sha256_file(path) != entry["sha256"]:
        raise BundleError(f"{path}: artifact sha256 does not match {MANIFEST} (corrupt or replaced); copy the "
                          "whole bundle folder again")


def check_bundle_tree(bundle_dir: str | os.PathLike) -> None:
    """Refuse a bundle holding anything but regular files and folders: a symbolic link (to a system file, or a
    linked folder that a relative path passes through), a FIFO, a socket or a device file could make `install`
    copy, and `infer` read, a file from outside the bundle."""
    root = os.fspath(bundle_dir)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(f"{path}: a symbolic link inside the bundle (to {os.readlink(path)}); a bundle holds "
                                  "only regular files, so it is refused: copy the bundle with the files themselves "
                                  "(cp -rL) or make it again")
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise BundleError(f"{path}: not a regular file (a FIFO, socket or device) inside the bundle, so it is "
                                  "refused; remove it or make the bundle again")


def read_manifest(bundle_dir: str | os.PathLike) -> dict:
    path = os.path.join(os.fspath(bundle_dir), MANIFEST)
    if not os.path.isdir(bundle_dir):
        raise BundleError(f"{os.fspath(bundle_dir)}: no such bundle folder; pass the folder that holds {MANIFEST}")
    try:
        with open(path, "rb") as handle:
            manifest = json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: missing, so this folder is not a bundle (or its copy is incomplete); "
                          "copy the whole bundle folder again") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: corrupt, not valid JSON ({exc}); copy the whole bundle folder again") from None
    return validate_manifest(manifest, path)


def load_bundle(bundle_dir: str | os.PathLike, verify: bool | Iterable[str] = True) -> Bundle:
    """Read and validate a bundle; verify=True checks every artifact's sha256, a list of files checks only those."""
    bundle_dir = os.fspath(bundle_dir)
    manifest = read_manifest(bundle_dir)
    check_bundle_tree(bundle_dir)
    classes = list(manifest["task"]["classes"])
    labels_path = os.path.join(bundle_dir, LABELS)
    if os.path.exists(labels_path):
        with open(labels_path, encoding="utf-8") as handle:
            labels = [line.rstrip("\r\n") for line in handle if line.strip()]
        if labels != classes:
            raise BundleError(f"{labels_path}: its {len(labels)} class names differ from 'task.classes' in {MANIFEST} "
                              f"({len(classes)} names); one of the two was edited, copy the bundle again")
    if verify:
        wanted = None if verify is True else set(verify)
        for entry in manifest["artifacts"]:
            if is_ok(entry) and (wanted is None or entry["file"] in wanted):
                verify_artifact(bundle_dir, entry)
    return Bundle(path=bundle_dir, manifest=manifest, classes=classes)


def artifact_entry(path: str | os.PathLike, format: str, precision: str, metrics: Optional[dict] = None,
                   bundle_dir: Optional[str] = None) -> dict:
    """The manifest entry for a file that exists now: its name relative to the bundle, sha256 and size."""
    path = os.fspath(path)
    name = os.path.relpath(path, bundle_dir) if bundle_dir else os.path.basename(path)
    entry = {"file": name.replace(os.sep, "/"), "format": format, "precision": precision,
             "sha256": sha256_file(path), "bytes": os.path.getsize(path)}
    if metrics is not None:
        entry["metrics"] = dict(metrics)
    return validate_artifact(entry, path)


def new_manifest(name: str, classes: list[str], preprocessing: dict, artifacts: Optional[list[dict]] = None,
                 source: Optional[dict] = None, versions: Optional[dict] = None) -> dict:
    """A schema-1 manifest; task.input.shape follows from the preprocessing output size."""
    pre = validate_preprocessing(dict(preprocessing))
    height, width = pre.get("crop") or pre["resize"]
    return validate_manifest({
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "task": {"classes": list(classes), "input": {"shape": [3, height, width], "dtype": "float32", "layout": "NCHW"}},
        "preprocessing": pre,
        "artifacts": list(artifacts or []),
        "source": dict(source or {}),
        "versions": dict(versions or {}),
    })


def write_labels(bundle_dir: str | os.PathLike, classes: list[str]) -> None:
    atomic_write_bytes(os.path.join(os.fspath(bundle_dir), LABELS), ("\n".join(classes) + "\n").encode("utf-8"))


def write_manifest(bundle_dir: str | os.PathLike, manifest: dict) -> str:
    """Validate and write manifest.json atomically; returns its path."""
    path = os.path.join(os.fspath(bundle_dir), MANIFEST)
    atomic_write_json(path, validate_manifest(manifest, path))
    return path


def add_artifact(bundle_dir: str | os.PathLike, entry: dict) -> dict:
    """Add (or replace, by file name) one artifact in manifest.json atomically; returns the new manifest."""
    manifest = read_manifest(bundle_dir)
    validate_artifact(entry, os.path.join(os.fspath(bundle_dir), MANIFEST))
    # a device-built engine also replaces the fit's "skipped" record of the same format and precision
    manifest["artifacts"] = [a for a in manifest["artifacts"]
                             if a.get("file") != entry["file"]
                             and (is_ok(a) or (a["format"], a["precision"]) != (entry["format"], entry["precision"]))] + [entry]
    write_manifest(bundle_dir, manifest)
    return manifest
