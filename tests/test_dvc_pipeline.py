"""The README's DVC lines on a fresh copy of the repository: `dvc repro` publishes models/quickstart/ and
models/quickstart_pruned/, a second `dvc repro` does nothing but refits after a code change, plain `dvc exp show`
fits 120 columns with both stages' top-1 and latency, and push/pull through a local folder remote restores a
bundle."""

import csv
import io
import json
import os
import re
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


def _tiny(recipe: Path, epochs: int = 1) -> None:
    """Seconds, not minutes, on 2 shared cores: short epochs of a width-4 ResNet on 16x16 digits (pruned after the
    first)."""
    config = load_recipe(recipe)
    config["trainer"].update(max_epochs=epochs, limit_train_batches=8, limit_val_batches=2, enable_progress_bar=False)
    config["model"]["backbone_args"] = {"num_blocks": [1, 1, 1, 1], "width": 4}
    config["data"]["image_size"] = 16
    for c in config["trainer"]["callbacks"]:
        if c["class_path"] == "callbacks.Int8Quantization":
            c["init_args"] = {**(c.get("init_args") or {}), "num_samples": 64, "max_drop": 100.0}
        if c["class_path"] == "callbacks.DeployBundle":
            c["init_args"] = {"latency_iterations": 10, "throughput_iterations": 2}
        if c["class_path"] == "callbacks.StructuredPruning":
            c["init_args"] = {**c["init_args"], "at_epoch": 1}
    recipe.write_text(yaml.safe_dump(config, sort_keys=False))


def _run(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _git(*args, cwd):
    return _run("git", "-c", "user.name=edgecls", "-c", "user.email=edgecls@localhost", *args, cwd=cwd)


@pytest.mark.slow
def test_dvc_repro_publishes_both_bundles_once_exp_show_fits_and_push_pull_restore_them(tmp_path):
    repo = tmp_path / "clone"
    _fresh_copy(repo)
    _tiny(repo / "experiments" / "quickstart.yaml")
    _tiny(repo / "experiments" / "quickstart_pruned.yaml", epochs=2)
    dvc = [sys.executable, "-m", "dvc"]
    _run("git", "init", "-q", cwd=repo)  # .dvc/ is committed: a clone needs no `dvc init`
    _git("add", "-A", cwd=repo)
    _git("commit", "-qm", "the project", cwd=repo)

    _run(*dvc, "repro", cwd=repo)
    bundle = repo / "models" / "quickstart" / "bundle"
    assert (bundle / "manifest.json").is_file() and (bundle / "model.onnx").is_file()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["quickstart"]
    assert lock["params"]["experiments/quickstart.yaml"] == {"model.optimizer.init_args.lr": 0.003, "trainer.max_epochs": 1}
    published = file_hashes(bundle)
    # what the README says to commit: the bundle is ignored (.gitignore's bundle/), the metrics git must keep
    status = _run("git", "status", "--porcelain", "--untracked-files=all", cwd=repo).split()
    assert {"dvc.lock", "models/fingerprint.json", "models/quickstart/metrics.json", "models/quickstart/more_metrics.json",
            "models/quickstart_pruned/metrics.json", "models/quickstart_pruned/more_metrics.json"} <= set(status)
    assert not [name for name in status if "/bundle" in name]

    again = _run(*dvc, "repro", cwd=repo)
    assert "didn't change" in again or "up to date" in again, again
    for experiment in ("quickstart", "quickstart_pruned"):  # no second fit
        assert sorted(p.name for p in (repo / "runs" / experiment).iterdir()) == ["version_0"], experiment

    metrics = json.loads(subprocess.run([*dvc, "metrics", "show", "--json"], cwd=repo, capture_output=True,
                                        text=True, check=True).stdout)
    files = metrics[""]["data"]
    assert list(files["models/quickstart/metrics.json"]["data"]) == ["top1", "cpu_ms"]
    shown = {**files["models/quickstart/metrics.json"]["data"], **files["models/quickstart/more_metrics.json"]["data"]}
    assert set(shown) == {"top1", "int8_trt", "int8_cpu", "cpu_ms", "mb", "params"}
    report = json.loads((bundle / "report.json").read_text())
    onnx_fp32 = next(r for r in report["rows"] if (r["format"], r["runtime"]) == ("onnx", "onnxruntime"))
    assert shown["top1"] == round(100 * onnx_fp32["top1"], 2) and shown["params"] == report["params"]
    assert shown["cpu_ms"] == round(min(r["latency_ms"] for r in report["rows"][1:]), 3)
    assert shown["mb"] == round(sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 1e6, 2)
    # the pruned stage's numbers under names of their own: the same names would put each file's path in the titles
    pruned = {**files["models/quickstart_pruned/metrics.json"]["data"],
              **files["models/quickstart_pruned/more_metrics.json"]["data"]}
    assert list(pruned) == ["pruned_top1", "pruned_cpu_ms", "pruned_int8_cpu", "pruned_int8_trt", "pruned_mb", "pruned_params"]
    assert pruned["pruned_params"] < shown["params"]  # pruning removed channels

    # a variant beside the committed baseline. Plain `dvc exp show` fits 120 columns, every title without a file's
    # path, and shows top-1 and latency of both stages for every row (DVC never folds the first column of the
    # metrics, params or deps, and folds the rest from the right: no code hash column, each stage's top1 and
    # cpu_ms in the metrics files dvc.yaml lists first)
    _git("add", "-A", cwd=repo)
    _git("commit", "-qm", "quickstart baseline", cwd=repo)
    _run(*dvc, "exp", "run", "--temp", "quickstart", "-S", "experiments/quickstart.yaml:model.optimizer.init_args.lr=0.01", cwd=repo)
    env = dict(os.environ, COLUMNS="120", DVC_NO_ANALYTICS="1")
    table = subprocess.run([*dvc, "exp", "show", "--no-pager"], cwd=repo, env=env, capture_output=True, text=True,
                           check=True).stdout
    lines = [line for line in table.splitlines() if line.strip()]
    assert max(len(line) for line in lines) <= 120 and "metrics.json:" not in table, table
    header = lines[1]
    titles = ["top1", "cpu_ms", "pruned_top1", "pruned_cpu_ms"]
    assert header.split()[2:6] == titles, table
    rows = [line for line in lines[3:] if not set(line.strip()) <= {"─"}]
    # every column, lr included (params fold before metrics on a narrow screen), in the rows' order
    full = list(csv.DictReader(io.StringIO(_run(*dvc, "exp", "show", "--csv", cwd=repo))))
    assert [r["model.optimizer.init_args.lr"] for r in full] == ["0.003", "0.003", "0.01"], full
    assert len(rows) == len(full) == 3, table  # the workspace, the baseline and its variant
    on_disk = {**json.loads((repo / "models/quickstart/metrics.json").read_text()),
               **json.loads((repo / "models/quickstart_pruned/metrics.json").read_text())}
    for row, values in zip(rows, full):  # metrics are right-aligned under their titles: a number, not an ellipsis
        cells = {t: row[:header.index(f" {t} ") + len(t) + 1].split()[-1] for t in titles}
        assert {t: float(c) for t, c in cells.items()} == {t: float(values[t]) for t in titles}, table
    first = {t: float(rows[0][:header.index(f" {t} ") + len(t) + 1].split()[-1]) for t in titles}
    assert first == {t: on_disk[t] for t in titles}, table  # the workspace row: the numbers the files hold
    assert file_hashes(bundle) == published  # --temp left the workspace as it was

    # push from here, pull in a fresh clone of what the README says to commit (dvc.lock, .dvc/config)
    remote = tmp_path / "remote"
    _run(*dvc, "remote", "add", "-d", "local", str(remote), cwd=repo)
    _run(*dvc, "push", "quickstart", cwd=repo)
    _git("add", "dvc.lock", ".dvc/config", cwd=repo)
    _git("commit", "-qm", "the local remote", cwd=repo)
    fresh = tmp_path / "fresh"
    _run("git", "clone", "-q", str(repo), str(fresh), cwd=tmp_path)
    assert not (fresh / "models" / "quickstart" / "bundle").exists()
    _run(*dvc, "pull", "quickstart", cwd=fresh)
    assert file_hashes(fresh / "models" / "quickstart" / "bundle") == published

    # a code change reaches both fits through models/fingerprint.json (a params entry, not a folder dependency)
    (repo / "deploy" / "errors.py").write_text((repo / "deploy" / "errors.py").read_text() + "# edited\n")
    _run(*dvc, "repro", "fingerprint", cwd=repo)
    changed = _run(*dvc, "status", cwd=repo)
    assert "quickstart:" in changed and "quickstart_pruned:" in changed, changed
    assert len(re.findall(r"modified:\s+code\b", changed)) == 2, changed
