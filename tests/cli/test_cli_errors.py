"""Every mistake is one sentence: a bad YAML value, a missing folder or file, a misspelt key is `error: <sentence>`
on stderr and exit status 2, with no traceback and no run folder left behind; a bug keeps its traceback.

The mistakes run the CLI in this process (the `cli` fixture: same code path, no interpreter start-up); one of them,
and the bug whose traceback the interpreter prints, run `python main.py` as a user does."""

import json

import cv2
import numpy as np
import pytest

from edgecls_testing import NO_FIT_END, TINY, error_lines, file_hashes, printed_top1, run_main


def image_folder_with_an_empty_class(root):
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (root / name).mkdir(parents=True)
        for i in range(5):
            cv2.imwrite(str(root / name / f"{i}.png"), rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    (root / "emptyclass").mkdir()
    return root


# (what the user typed, what the one sentence must name)
MISTAKES = {
    "unknown backbone": (["--model.backbone", "resnet_50"], ["'resnet_50'", "model.backbone", "did you mean resnet50"]),
    "missing imagefolder root": (["--data.source", "ImageFolderSource", "--data.source.root", "{tmp}/no_such_folder"], ["{tmp}/no_such_folder"]),
    "empty class folder": (["--data.source", "ImageFolderSource", "--data.source.root", "{tmp}/images"], ["'emptyclass'"]),
    "offline ImageNet weights": (["--model.backbone", "mobilenet_v2", "--model.backbone_args", '{"weights": "IMAGENET1K_V1"}'],
                                 ["IMAGENET1K_V1", "weights_path"]),
    "image size 0": (["--data.image_size", "0"], ["image_size", "0"]),
    "unknown augment preset": (["--data.augment", "s9"], ["'s9'"]),
    "misspelt key": (["--model.lrr", "0.1"], ["--model.lrr"]),
    # argparse's prefix matching would have read it as --trainer.max_epochs and trained 7 epochs
    "option cut short": (["--trainer.max_epoch", "7"], ["--trainer.max_epoch is not", "the closest is --trainer.max_epochs"]),
    "value of the wrong type": (["--model.label_smoothing", "fast"], ["model.label_smoothing", "'fast'", "float"]),
    "unknown key in a YAML file": (["--config", "{tmp}/extra.yaml"], ["model.dropout_rate"]),
    "YAML that does not parse": (["--config", "{tmp}/broken.yaml"], ["{tmp}/broken.yaml", "line 2"]),
    "missing checkpoint": (["--ckpt_path", "{tmp}/nothing.ckpt"], ["{tmp}/nothing.ckpt", "--ckpt_path"]),
    # the keys and names of an older edgecls's README say what replaced them
    "old key model.lr": (["--model.lr", "0.1"], ["--model.lr is not", "now --model.optimizer.lr"]),
    "old key data.root": (["--data.root", "{tmp}/images"], ["--data.root is not", "now --data.source.root"]),
    "old key model.scheduler": (["--model.scheduler", "cosine"], ["now --model.lr_scheduler", "CosineAnnealingLR"]),
    "old source name": (["--data.source", "digits"], ["'digits'", "now DigitsSource"]),
    "old optimizer name": (["--model.optimizer", "sgd"], ["'sgd'", "now torch.optim.SGD"]),
    # one image larger than the memory: a sentence naming the setting, not the allocator's message
    "image size beyond memory": (["--data.image_size", "100000"], ["data.image_size 100000x100000", "lower data.image_size"]),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_user_mistake_is_one_sentence_and_exit_2(mistake, quickstart, tmp_path, cli):
    image_folder_with_an_empty_class(tmp_path / "images")
    (tmp_path / "extra.yaml").write_text("model:\n  dropout_rate: 0.2\n")
    (tmp_path / "broken.yaml").write_text("model:\n  lr: [0.1\ndata:\n  batch_size: 8\n")
    args, names = MISTAKES[mistake]
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    # offline: the weights download fails at once instead of reaching the network or a warm cache
    offline = {"TORCH_HOME": str(tmp_path / "torch"), "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    # one mistake as a user meets it, in a process of its own; the rest in this process (same code path)
    # (found after the seed is set: Lightning's "Seed set to 42" would come first, and only a process shows it)
    run = run_main if mistake == "unknown backbone" else cli
    proc = run(["fit", "--config", quickstart, *TINY, *NO_FIT_END, *args], tmp_path, expect_ok=False, env=offline)
    if run is run_main:
        assert proc.stderr.strip() == error_lines(proc.stderr)[0], proc.stderr[-3000:]  # the only line

    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "usage:" not in proc.stderr, proc.stderr[-3000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr[-3000:]
    assert proc.stderr.rstrip().endswith(errors[0])  # the last thing the user sees
    for name in names:
        assert name.replace("{tmp}", str(tmp_path)) in errors[0], errors[0]
    assert not (tmp_path / "runs").exists()  # nothing was started, so no empty version_0


def test_edgecls_debug_shows_the_traceback(quickstart, tmp_path, cli):
    # the exception leaves cli_main as it was raised: the interpreter prints its traceback (see the bug test below)
    with pytest.raises(ValueError, match="unknown backbone 'resnet_50'") as info:
        cli(["fit", "--config", quickstart, *TINY, *NO_FIT_END, "--model.backbone", "resnet_50"], tmp_path,
            expect_ok=False, env={"EDGECLS_DEBUG": "1"})
    assert any(entry.name == "build_backbone" for entry in info.traceback)


def test_a_fit_that_fails_in_set_up_leaves_no_run_folder_and_keeps_older_runs(quickstart, tmp_path, cli, monkeypatch):
    from cli.errors import Invocation

    # cosine without max_epochs fails in configure_optimizers: after config.yaml and the split lists are written
    fails_late = ["fit", "--config", quickstart, *TINY, *NO_FIT_END, "--model.lr_scheduler", "lightning_modules.schedules.CosineAnnealingLR", "--trainer.max_epochs", "-1"]
    with monkeypatch.context() as patched:
        patched.setattr(Invocation, "discard_new_run", lambda self: None)  # to see what a failed set-up wrote
        kept = cli(fails_late, tmp_path, expect_ok=False)
    older = tmp_path / "runs" / "quickstart" / "version_0"
    assert kept.returncode == 2 and (older / "config.yaml").is_file() and (older / "split" / "train.jsonl").is_file()
    before = file_hashes(older)

    proc = cli(fails_late, tmp_path, expect_ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == ["error: model.lr_scheduler CosineAnnealingLR needs T_max (model.lr_scheduler.init_args.T_max) or trainer.max_epochs to be set"]
    # its own version_1 is gone; the folder that was there before is untouched
    assert sorted(p.name for p in (tmp_path / "runs" / "quickstart").iterdir()) == ["version_0"]
    assert file_hashes(older) == before


BUG_IN_TRAINING = """
import sys
sys.argv = ["main.py"] + sys.argv[1:]
import lightning_modules.classifier as classifier
def training_step(self, batch, batch_idx):
    raise ValueError("a bug in training_step")
classifier.ImageClassifier.training_step = training_step
import main
main.cli_main()
"""


def test_an_error_inside_training_is_a_bug_and_keeps_its_traceback(quickstart, tmp_path):
    proc = run_main(["fit", "--config", quickstart, *TINY, *NO_FIT_END, "--trainer.max_epochs", "1"], tmp_path,
                    expect_ok=False, script=BUG_IN_TRAINING)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ValueError: a bug in training_step" in proc.stderr
    assert not error_lines(proc.stderr)
    # training had begun: the run keeps its folder and config for the post-mortem
    assert (tmp_path / "runs" / "quickstart" / "version_0" / "config.yaml").is_file()


FAILING_STEP = '''
from callbacks.fit_end import FitEndStep

class FailingStep(FitEndStep):
    """A fit-end step that raises: the chain records it and carries on."""

    def run(self, trainer, pl_module, record):
        raise RuntimeError("the calibrator ran out of disk")
'''


def test_a_failed_fit_end_step_exits_1_after_everything_printed(quickstart, tmp_path, cli, monkeypatch):
    (tmp_path / "failing_step.py").write_text(FAILING_STEP)
    monkeypatch.syspath_prepend(str(tmp_path))
    proc = cli(["fit", "--config", quickstart, *TINY, "--trainer.max_epochs", "1",
                "--trainer.callbacks", json.dumps([{"class_path": "failing_step.FailingStep"}])], tmp_path, expect_ok=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    printed_top1(proc.stdout)  # the fit and its test ran to the end
    assert error_lines(proc.stderr) == ["error: fit-end step failed: FailingStep: the calibrator ran out of disk"]
    assert proc.stderr.rstrip().endswith("the calibrator ran out of disk")
    assert (tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_16_mixed_on_the_cpu_trains_in_32_true_and_says_so(quickstart, tmp_path, cli):
    proc = cli(["fit", "--config", quickstart, *TINY, *NO_FIT_END, "--trainer.fast_dev_run", "true",
                "--trainer.precision", "16-mixed"], tmp_path)
    out = proc.stdout + proc.stderr
    assert "trainer.precision 16-mixed needs a GPU" in out and "bf16-mixed" in out
    # Lightning's own substitution did not happen: it says so, then trains in bfloat16 AMP
    assert "Automatic Mixed Precision" not in out and "Using `precision='bf16-mixed'` instead" not in out


@pytest.mark.parametrize("args, words", [
    (["--trainer.max_epochs", "0"], ["trainer.max_epochs 0 trains nothing"]),
    (["--model.optimizer.lr", "-1"], ["model.optimizer (AdamW) refused its settings", "Invalid learning rate: -1"]),
    (["--model.label_smoothing", "1.5"], ["model.label_smoothing must be in [0, 1)"]),
    (["--model.optimizer.betas", "[0.9, 1.5]"], ["model.optimizer (AdamW)", "beta"]),
])
def test_a_setting_that_cannot_train_is_refused_naming_it(args, words, quickstart, tmp_path, cli):
    proc = cli(["fit", "--config", quickstart, *TINY, *args], tmp_path, expect_ok=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and all(w in errors[0] for w in words), errors
    assert not (tmp_path / "runs").exists()


def test_a_fit_that_trains_no_step_ends_without_a_bundle_and_says_so(quickstart, tmp_path, cli):
    proc = cli(["fit", "--config", quickstart, *TINY, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "0"],
               tmp_path)
    assert "fit-end steps skipped: the fit trained no step" in proc.stderr
    run = tmp_path / "runs" / "quickstart" / "version_0"
    assert not (run / "bundle").exists() and not (run / ".bundle-staging").exists()
