"""The README's DVC lines on a fresh copy of the repository: `dvc repro` of the quickstart stage publishes
models/quickstart/, a second `dvc repro` does nothing, and push/pull through a local folder remote restores it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgecls_testing import REPO, file_hashes, load_recipe

pytest.importorskip("dvc")


def _fresh_copy(target: Path) -> None:
    """The working tree as a clone would have it: tracked files and new ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file() and not name.startswith(("tests/", "notebooks/")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def _tiny(recipe: Path) -> None:
    """Seconds, not minutes, on 2 shared cores: one short epoch of a width-4 ResNet on 16x16 digits."""
    config = load_recipe(recipe)
    config["trainer"].update(max_epochs=1, limit_train_batches=8, limit_val_batches=2, enable_progress_bar=False)
    config["model"]["backbone_args"] = {"num_blocks": [1, 1, 1, 1], "width": 4}
    config["data"]["image_size"] = 16
    for c in config["trainer"]["callbacks"]:
        if c["class_path"] in ("callbacks.Int8Quantization", "callbacks.CpuInt8Quantization"):
            c["init_args"] = {**(c.get("init_args") or {}), "num_samples": 64, "max_drop": 100.0}
        if c["class_path"] == "callbacks.DeployBundle":
            c["init_args"] = {"latency_iterations": 10, "throughput_iterations": 2}
    recipe.write_text(yaml.safe_dump(config, sort_keys=False))


def _run(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_dvc_repro_publishes_the_quickstart_bundle_once_and_push_pull_restore_it(tmp_path):
    repo = tmp_path / "clone"
    _fresh_copy(repo)
    _tiny(repo / "experiments" / "quickstart.yaml")
    dvc = [sys.executable, "-m", "dvc"]
    _run("git", "init", "-q", cwd=repo)  # .dvc/ is committed: a clone needs no `dvc init`

    _run(*dvc, "repro", "quickstart", cwd=repo)
    bundle = repo / "models" / "quickstart" / "bundle"
    assert (bundle / "manifest.json").is_file() and (bundle / "model.onnx").is_file()
    assert (repo / "models" / "quickstart" / "report.json").is_file()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["quickstart"]
    assert lock["params"]["experiments/quickstart.yaml"]["model"]["backbone_args"]["width"] == 4
    published = file_hashes(bundle)

    again = _run(*dvc, "repro", "quickstart", cwd=repo)
    assert "didn't change" in again or "up to date" in again, again
    assert sorted(p.name for p in (repo / "runs" / "quickstart").iterdir()) == ["version_0"]  # no second fit

    metrics = json.loads(subprocess.run([*dvc, "metrics", "show", "--json"], cwd=repo, capture_output=True,
                                        text=True, check=True).stdout)
    shown = metrics[""]["data"]["models/quickstart/metrics.json"]["data"]
    assert 0 <= shown["onnx_fp32"]["top1"] <= 1 and shown["onnx_fp32"]["latency_ms"] > 0

    remote = tmp_path / "remote"
    _run(*dvc, "remote", "add", "-d", "local", str(remote), cwd=repo)
    _run(*dvc, "push", "quickstart", cwd=repo)
    shutil.rmtree(bundle)
    shutil.rmtree(repo / ".dvc" / "cache")
    _run(*dvc, "pull", "quickstart", cwd=repo)
    assert file_hashes(bundle) == published
