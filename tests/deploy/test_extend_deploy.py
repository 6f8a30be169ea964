"""A device runtime and an artifact format of the user's own, added the way the README's "Add a device runtime" and
"Add an artifact format" show: one file each, named once (EDGECLS_PLUGINS on the device, a YAML line in training),
no file of the project touched."""

import json
import os
import subprocess
import sys

from edgecls_testing import REPO, TINY, readme_blocks, readme_recipe, run_main


def deploy(args, cwd, plugins):
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGECLS_PLUGINS": plugins, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "deploy", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def bench_rows(stdout: str, artifact: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines() if line.startswith(artifact + " ")]


def test_a_device_runtime_is_one_file_named_in_edgecls_plugins(digits_bundle, tmp_path):
    (tmp_path / "opencv_runtime.py").write_text(readme_blocks("Add a device runtime")["python"])
    proc = deploy(["bench", "--bundle", digits_bundle.path, "--format", "onnx", "--runtime", "opencv", "--batch", "1,4",
                   "--iterations", "5", "--no-progress"], tmp_path, "opencv_runtime")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = bench_rows(proc.stdout, "model.onnx")
    assert [(row[2], row[3]) for row in rows] == [("opencv", "1"), ("opencv", "4")], proc.stdout
    missing = deploy(["bench", "--bundle", digits_bundle.path, "--runtime", "opencv"], tmp_path, "no_such_plugin")
    assert missing.returncode == 2 and missing.stderr.startswith("error: plugin 'no_such_plugin' (from the "
                                                                 "EDGECLS_PLUGINS variable) cannot be imported")


def test_the_readme_runtime_gives_onnx_runtimes_logits(digits_bundle, tmp_path, monkeypatch):
    import numpy as np

    from deploy.runners import RUNTIMES, OnnxRuntimeRunner, runner_for_file

    (tmp_path / "opencv_runtime.py").write_text(readme_blocks("Add a device runtime")["python"])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(RUNTIMES, "opencv", None)  # restored after the test; the import below registers it
    import opencv_runtime  # noqa: F401

    path = os.path.join(digits_bundle.path, "model.onnx")
    x = np.random.default_rng(0).standard_normal((4, *OnnxRuntimeRunner(path).input_shape)).astype(np.float32)
    with runner_for_file(path, "onnx", runtime="opencv") as runner:
        np.testing.assert_allclose(runner.infer(x), OnnxRuntimeRunner(path).infer(x), atol=1e-4)


def test_an_artifact_format_is_one_file_and_one_yaml_line(tmp_path):
    (tmp_path / "torchscript_format.py").write_text(readme_blocks("Add an artifact format")["python"])
    recipe = readme_recipe("Add an artifact format", tmp_path)
    run_main(["fit", "--config", recipe, *TINY, "--trainer.max_epochs", "1"], tmp_path,
             env={"PYTHONPATH": f"{tmp_path}:{REPO}"})
    bundle = tmp_path / "runs" / "quickstart" / "version_0" / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    (ts,) = [a for a in manifest["artifacts"] if a["format"] == "torchscript"]
    assert ts["status"] == "ok" and ts["file"] == "model.torchscript.pt" and (bundle / ts["file"]).is_file()
    onnx = next(a for a in manifest["artifacts"] if a["format"] == "onnx")
    assert abs(ts["metrics"]["top1"] - onnx["metrics"]["top1"]) < 0.005  # the same network, on the test split
    report = json.loads((bundle / "report.json").read_text())
    assert [(r["runtime"]) for r in report["rows"] if r.get("file") == "model.torchscript.pt"] == ["torch"]  # one row

    # on the device: the format and its runtime come from the same file, named in EDGECLS_PLUGINS
    proc = deploy(["bench", "--bundle", bundle, "--format", "torchscript", "--batch", "1", "--iterations", "5",
                   "--no-progress"], tmp_path, "torchscript_format")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [row[2] for row in bench_rows(proc.stdout, "model.torchscript.pt")] == ["torch"], proc.stdout
    # without the plugin: its file is skipped with one line, and the ONNX file is measured
    plain = deploy(["bench", "--bundle", bundle, "--batch", "1", "--iterations", "2", "--no-progress"], tmp_path, "")
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert [line for line in plain.stderr.splitlines() if "model.torchscript.pt" in line] == [
        "warning: model.torchscript.pt (torchscript) skipped: no runtime here reads that format (set EDGECLS_PLUGINS "
        "to the plugin that adds it)"]
    assert bench_rows(plain.stdout, "model.onnx") and not bench_rows(plain.stdout, "model.torchscript.pt")
    # and install, whose smoke test runs what it can here: the ONNX file, the other file said in one line
    installed = deploy(["install", "--bundle", bundle, "--to", tmp_path / "models"], tmp_path, "")
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert [line for line in installed.stderr.splitlines() if "model.torchscript.pt" in line] == [
        "warning: model.torchscript.pt (torchscript) skipped: no runtime here reads that format (set EDGECLS_PLUGINS "
        "to the plugin that adds it)"]
    assert "1 ONNX file(s) smoke-tested" in installed.stdout
