"""Versions of a bundle on the device: install, roll back, list.

A models folder holds every installed bundle and a `current` pointer:

    <models>/versions/0001/   a bundle, copied in whole and verified there
    <models>/versions/0002/
    <models>/current -> versions/0002

The copy is verified where it landed (manifest, every sha256, one inference per ONNX file) before it gets
a version number, and `current` is switched by renaming a new symlink over the old one, so a reader sees
the old version or the new one and a failed install leaves `current` as it was.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import warnings
import tempfile
from typing import Optional

import numpy as np

from deploy.bundle import LABELS, MANIFEST, BundleError, check_bundle_tree, is_ok, load_bundle, read_manifest

VERSIONS = "versions"
CURRENT = "current"
HISTORY = "history.jsonl"  # one {"version", "at"} line per switch of `current`: which versions were ever in use
_VERSION = re.compile(r"^\d{4,}$")
# What a bundle holds beside its artifacts, copied when present; anything else (a stray scratch file, a device's
# runtime-choice cache) stays behind.
COMPANIONS = (MANIFEST, LABELS, "report.md", "report.json", "report.png", "confusion.png", "config.yaml")
_INCOMING = re.compile(r"^\.incoming-(\d+)-")


def versions(models_dir: str) -> list[str]:
    """Installed version names, oldest first."""
    folder = os.path.join(models_dir, VERSIONS)
    if not os.path.isdir(folder):
        return []
    return sorted((name for name in os.listdir(folder) if _VERSION.match(name)), key=int)


def current_version(models_dir: str) -> Optional[str]:
    """The version `current` points at, or None before the first install."""
    link = os.path.join(models_dir, CURRENT)
    if not os.path.islink(link):
        return None
    return os.path.basename(os.path.normpath(os.readlink(link)))


def is_models_dir(path: str) -> bool:
    return os.path.islink(os.path.join(path, CURRENT)) and not os.path.isfile(os.path.join(path, MANIFEST))


def resolve_bundle_dir(path: str) -> str:
    """A bundle folder as given, or a models folder's current version, resolved to its real path once so that
    a switch while a command runs cannot mix two versions' files."""
    if is_models_dir(path):
        return os.path.realpath(os.path.join(path, CURRENT))
    return path


def smoke_test(bundle_dir: str, runtime: Optional[str] = None) -> int:
    """One inference per artifact in its format's smoke-test runtime (or, with `runtime`, per artifact that runtime
    reads, in it) on a zero image: it loads, takes the manifest's input shape and returns one finite score per
    class. Returns how many artifacts ran."""
    import deploy.runtimes  # noqa: F401 (the built-in runtimes register themselves)
    from deploy.registry import FORMATS, RUNTIMES, runtime_spec, unrunnable_notice

    bundle = load_bundle(bundle_dir, verify=True)
    if runtime is not None:
        return _smoke_test_in(bundle, runtime)
    testable = [e for e in bundle.artifacts if getattr(FORMATS.get(e["format"]), "smoke_runtime", None)]
    onnx = []
    for entry in testable:
        smoke = RUNTIMES.get(FORMATS[entry["format"]].smoke_runtime)
        if smoke is not None and smoke.available():
            onnx.append(entry)
        else:  # a format whose runtime this device lacks: the rest of the bundle is still checked
            warnings.warn(unrunnable_notice(entry), RuntimeWarning, stacklevel=2)
    for entry in bundle.artifacts:
        if entry["format"] not in FORMATS:  # a plugin's format without its plugin here
            warnings.warn(unrunnable_notice(entry), RuntimeWarning, stacklevel=2)
    if not onnx:
        raise BundleError(f"{os.path.join(bundle_dir, MANIFEST)}: no ONNX artifact to smoke-test, so this bundle "
                          "cannot be checked here; install a bundle made by the fit-end callbacks")
    batch = np.zeros((1, *bundle.input_shape), dtype=np.float32)
    for entry in onnx:
        path = bundle.artifact_path(entry)
        with runtime_spec(FORMATS[entry["format"]].smoke_runtime).open(path) as runner:
            try:
                logits = runner.infer(batch)
            except Exception as exc:  # onnxruntime's own exception types
                raise BundleError(f"{path}: the smoke inference failed ({str(exc).splitlines()[0]}); "
                                  "re-create the bundle") from None
        if logits.shape != (1, len(bundle.classes)) or not np.isfinite(logits).all():
            raise BundleError(f"{path}: the smoke inference returned {list(logits.shape)} scores (finite: "
                              f"{bool(np.isfinite(logits).all())}) for {len(bundle.classes)} classes; re-create the bundle")
    return len(onnx)


def _smoke_test_in(bundle, runtime: str) -> int:
    from deploy.registry import runner_for_file, runtime_spec

    spec = runtime_spec(runtime)
    ok, why = spec.status()
    if not ok:
        raise BundleError(why)
    entries = [e for e in bundle.artifacts if e["format"] in spec.formats]
    if not entries:
        raise BundleError(f"{os.path.join(bundle.path, MANIFEST)}: no artifact that {runtime} reads "
                          f"({', '.join(spec.formats)}), so nothing could be smoke-tested; install with another --runtime")
    batch = np.zeros((1, *bundle.input_shape), dtype=np.float32)
    for entry in entries:
        path = bundle.artifact_path(entry)
        with runner_for_file(path, entry["format"], runtime=runtime) as runner:
            logits = runner.infer(batch)
        if logits.shape != (1, len(bundle.classes)) or not np.isfinite(logits).all():
            raise BundleError(f"{path}: the smoke inference in {runtime} returned {list(logits.shape)} scores for "
                              f"{len(bundle.classes)} classes; re-create the bundle")
    return len(entries)


def switch_current(models_dir: str, version: str) -> None:
    """Point `current` at versions/<version> with one rename (atomic on POSIX)."""
    link = os.path.join(models_dir, CURRENT)
    tmp = os.path.join(models_dir, f".current-{os.getpid()}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.join(VERSIONS, version), tmp)  # relative, so the folder can be moved or mounted elsewhere
    os.replace(tmp, link)
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    with open(os.path.join(models_dir, HISTORY), "a", encoding="utf-8") as history:
        history.write(json.dumps({"version": version, "at": stamp}) + "\n")


def ever_current(models_dir: str) -> Optional[set[str]]:
    """The versions `current` ever pointed at, from the history; None for a folder made before it was kept."""
    try:
        with open(os.path.join(models_dir, HISTORY), encoding="utf-8") as history:
            return {json.loads(line)["version"] for line in history if line.strip()}
    except (OSError, ValueError, KeyError):
        return None


def bundle_files(bundle_dir: str, manifest: dict) -> list[str]:
    """The files `install` copies: every ok artifact the manifest lists (and an engine's sidecar JSON) and the
    companions in COMPANIONS, as paths relative to the bundle."""
    wanted = [name for name in COMPANIONS if os.path.isfile(os.path.join(bundle_dir, name))]
    for entry in manifest["artifacts"]:
        if is_ok(entry):
            wanted.append(entry["file"])
            wanted += [part["file"] for part in entry.get("companions", [])]  # an OpenVINO IR's .bin
            if os.path.isfile(os.path.join(bundle_dir, entry["file"] + ".json")):
                wanted.append(entry["file"] + ".json")
    root = os.path.realpath(bundle_dir)
    for name in wanted:
        if os.path.commonpath([root, os.path.realpath(os.path.join(bundle_dir, name))]) != root:
            raise BundleError(f"{os.path.join(bundle_dir, MANIFEST)}: lists {name}, which is outside the bundle; "
                              "make the bundle again")
    return list(dict.fromkeys(wanted))


def remove_stale_incoming(folder: str) -> list[str]:
    """Remove the `.incoming-<pid>-*` staging folders of installs whose process is gone (killed mid-copy)."""
    removed = []
    for name in os.listdir(folder):
        match = _INCOMING.match(name)
        if not match or _running(int(match.group(1))):
            continue
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
        removed.append(name)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def install(bundle_dir: str, models_dir: str, runtime: Optional[str] = None) -> dict:
    """Copy a bundle in as the next version, verify the copy, then switch `current` to it."""
    manifest = read_manifest(bundle_dir)  # a folder that is not a bundle fails before anything is copied
    check_bundle_tree(bundle_dir)
    files = bundle_files(bundle_dir, manifest)
    if os.path.exists(os.path.join(models_dir, CURRENT)) and not os.path.islink(os.path.join(models_dir, CURRENT)):
        raise BundleError(f"{os.path.join(models_dir, CURRENT)}: exists and is not a symlink, so this is not a models "
                          "folder made by `deploy install`; pick another --to folder")
    folder = os.path.join(models_dir, VERSIONS)
    os.makedirs(folder, exist_ok=True)
    remove_stale_incoming(folder)
    staging = tempfile.mkdtemp(prefix=f".incoming-{os.getpid()}-", dir=folder)
    try:
        copy = os.path.join(staging, "bundle")
        for name in files:  # only what the manifest lists and its companions; never a link (refused above)
            os.makedirs(os.path.dirname(os.path.join(copy, name)), exist_ok=True)
            shutil.copy2(os.path.join(bundle_dir, name), os.path.join(copy, name), follow_symlinks=False)
        smoked = smoke_test(copy, runtime)
        while True:
            existing = versions(models_dir)
            version = f"{int(existing[-1]) + 1 if existing else 1:04d}"
            try:
                os.rename(copy, os.path.join(folder, version))  # fails if another install took the number
                break
            except OSError:
                if not os.path.exists(os.path.join(folder, version)):
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    previous = current_version(models_dir)
    switch_current(models_dir, version)
    return {"version": version, "previous": previous, "path": os.path.join(folder, version), "smoke_tested": smoked}


def rollback(models_dir: str, version: Optional[str] = None) -> dict:
    """Switch `current` to `version`, or to the newest version older than the current one."""
    installed = versions(models_dir)
    now = current_version(models_dir)
    if not installed or now is None:
        raise BundleError(f"{models_dir}: no installed versions to roll back to; install one first with "
                          "`python -m deploy install --bundle <dir> --to <models dir>`")
    if version is not None:
        version = f"{int(version):04d}" if version.isdigit() else version
        if version not in installed:
            raise BundleError(f"{models_dir}: no version {version} (installed: {', '.join(installed)}); "
                              "see `python -m deploy list`")
    else:
        older = [v for v in installed if int(v) < int(now)]
        if not older:
            raise BundleError(f"{models_dir}: version {now} is the oldest installed, so there is nothing older to "
                              "roll back to; pass --version to pick one")
        version = older[-1]
    load_bundle(os.path.join(models_dir, VERSIONS, version), verify=True)  # never switch to a damaged version
    switch_current(models_dir, version)
    return {"version": version, "previous": now}


def list_versions(models_dir: str) -> list[dict]:
    """One row per installed version and artifact, with the manifest's metrics."""
    if not os.path.isdir(models_dir):
        raise BundleError(f"{models_dir}: no such models folder; install a bundle into it first")
    now = current_version(models_dir)
    used = ever_current(models_dir)
    rows = []
    for version in versions(models_dir):
        path = os.path.join(models_dir, VERSIONS, version)
        # installed but never switched to: an install killed between its copy and the switch
        state = "current" if version == now else ("?" if used is None else "was current" if version in used
                                                   else "never current")
        try:
            manifest = read_manifest(path)
        except BundleError as exc:
            rows.append({"version": version, "current": version == now, "state": state, "name": "?",
                         "created": "?", "artifact": f"unreadable: {exc}"})
            continue
        base = {"version": version, "current": version == now, "state": state, "name": manifest["name"],
                "created": manifest.get("created"), "commit": (manifest.get("source") or {}).get("git_commit")}
        ok = [a for a in manifest["artifacts"] if a.get("status", "ok") == "ok"] or [{}]
        for entry in ok:
            metrics = entry.get("metrics") or {}
            top1 = metrics.get("top1")
            rows.append(dict(base, artifact=entry.get("file"), precision=entry.get("precision"),
                             test_top1=None if top1 is None else 100 * top1, latency_ms=metrics.get("latency_ms")))
    return rows
