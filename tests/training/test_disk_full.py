"""A disk that fills during a fit: one sentence naming the folder, every checkpoint on disk whole, exit status 2.

One test fills a real disk (a small tmpfs mounted here, where the machine allows it: root in a container); the
other makes the checkpoint writer see a full disk at its second save, in this process."""

import os
import shutil
import subprocess
import uuid
from collections import namedtuple

import pytest
import torch

from edgecls_testing import NO_FIT_END, TINY, error_lines, run_main


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", f"edgecls-{uuid.uuid4().hex[:8]}", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


def _checkpoints_are_whole(run):
    for ckpt in run.rglob("*.ckpt"):
        torch.load(ckpt, map_location="cpu", weights_only=True)  # a truncated file raises here
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name]


def test_a_disk_that_fills_mid_fit_is_one_sentence_and_leaves_whole_checkpoints(small_disk, quickstart):
    proc = run_main(["fit", "--config", quickstart, *TINY, *NO_FIT_END, "--trainer.max_epochs", "6"], small_disk,
                    expect_ok=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "no space left on the disk holding" in errors[0], proc.stderr[-3000:]
    run = small_disk / "runs" / "quickstart" / "version_0"
    if run.exists():
        _checkpoints_are_whole(run)


def test_a_checkpoint_that_does_not_fit_keeps_the_one_before_and_names_the_space(quickstart, tmp_path, cli,
                                                                                 monkeypatch):
    from training import checkpoint_io

    usage = namedtuple("usage", "total used free")
    saves = []
    real_usage = shutil.disk_usage

    def disk_usage(path):
        saves.append(path)
        return usage(10**9, 10**9 - 1000, 1000) if len(saves) > 2 else real_usage(path)  # full from epoch 2 on

    monkeypatch.setattr(checkpoint_io.shutil, "disk_usage", disk_usage)
    proc = cli(["fit", "--config", quickstart, *TINY, *NO_FIT_END, "--trainer.max_epochs", "3"], tmp_path,
               expect_ok=False)
    assert proc.returncode == 2
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr[-2000:]
    assert "no space left on the disk holding" in errors[0] and ".ckpt needs" in errors[0] and "1 kB is free" in errors[0]
    assert "resume with --ckpt_path last" in errors[0]
    run = tmp_path / "runs" / "quickstart" / "version_0"
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 0  # epoch 0's checkpoint, whole; epoch 1's never replaced it half-written
    _checkpoints_are_whole(run)
    assert os.path.isfile(run / "config.yaml")


def test_a_full_disk_during_the_test_step_is_one_sentence_too(quickstart, tmp_path, cli, monkeypatch):
    """The test step's TensorBoard writes used to end in a traceback: any ENOSPC in a command is the sentence."""
    import errno

    from training.run_logger import RunLogger

    real = RunLogger.log_metrics

    def log_metrics(self, metrics, step=None):
        if any(k.startswith("test/") for k in metrics):
            raise OSError(errno.ENOSPC, "No space left on device", os.path.join(self.log_dir, "events.out.tfevents"))
        return real(self, metrics, step)

    monkeypatch.setattr(RunLogger, "log_metrics", log_metrics)
    proc = cli(["fit", "--config", quickstart, *TINY, *NO_FIT_END, "--trainer.max_epochs", "1"], tmp_path,
               expect_ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "no space left on the disk holding" in errors[0] and "MB free" in errors[0], errors
    _checkpoints_are_whole(tmp_path / "runs" / "quickstart" / "version_0")


def test_a_fit_end_step_that_fails_on_a_full_disk_says_so(tmp_path, monkeypatch):
    from callbacks import fit_end

    usage = namedtuple("usage", "total used free")
    assert fit_end.disk_full_sentence(ValueError("DecodeError: Error parsing message"), tmp_path) is None
    monkeypatch.setattr(fit_end.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**5, 10**5))
    sentence = fit_end.disk_full_sentence(ValueError("DecodeError: Error parsing message"), tmp_path)
    assert sentence.startswith(f"no space left on the disk holding {tmp_path} (0 MB free)")


def test_the_steps_scratch_files_never_reach_the_bundle(tmp_path):
    from callbacks.bundle import drop_strays

    staging = tmp_path / ".bundle-staging"
    (staging / "engines").mkdir(parents=True)
    for name in ("model.onnx", "model.int8.onnx", "labels.txt", "report.json", ".model.prepared-inferred.onnx",
                 ".model.int8-ptq-plain.onnx", "timing.cache", "engines/model.fp16.engine",
                 "engines/model.fp16.engine.json"):
        (staging / name).write_bytes(b"x")
    manifest = {"artifacts": [{"file": "model.onnx"}, {"file": "model.int8.onnx"},
                              {"file": "engines/model.fp16.engine"}, {"file": None, "status": "failed"}]}
    removed = drop_strays(staging, manifest)
    assert sorted(removed) == [".model.int8-ptq-plain.onnx", ".model.prepared-inferred.onnx", "timing.cache"]
    assert sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()) == [
        "engines/model.fp16.engine", "engines/model.fp16.engine.json", "labels.txt", "model.int8.onnx",
        "model.onnx", "report.json"]
