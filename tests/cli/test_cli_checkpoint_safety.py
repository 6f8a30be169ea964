"""No code runs from a checkpoint, and a checkpoint that cannot be read is one sentence naming it.

Checkpoints are what people download and share. A .ckpt of plain dicts passes torch.load(weights_only=True), so what
it says (class paths, a backbone's module) must stay data: compared with the command and the YAML, never imported
or called. The hostile files are made here: a checkpoint whose hyperparameters name os.system or a module that
leaves a marker file when imported, random bytes, a cut-short file, and a pickle whose __reduce__ calls os.system.
One tiny fit per module makes the run they are made from."""

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from edgecls_testing import EXPERIMENTS, NO_FIT_END, TINY, error_lines, file_hashes, run_main

QUICKSTART = str(EXPERIMENTS / "quickstart.yaml")
MODULE_THAT_MARKS = 'open("IMPORTED", "w").close()\n'  # pwned.py: imported, it leaves a file named IMPORTED


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished one-epoch run (runs/quickstart/version_0) and the folder it was made in."""
    folder = tmp_path_factory.mktemp("trained")
    run_main(["fit", "--config", QUICKSTART, *TINY, *NO_FIT_END, "--trainer.max_epochs", "1"], folder)
    return folder / "runs" / "quickstart" / "version_0"


def a_run_in(here, trained):
    """A copy of the trained run under `here`/runs/quickstart/version_0, and pwned.py beside it."""
    run = here / "runs" / "quickstart" / "version_0"
    shutil.copytree(trained, run)
    (here / "pwned.py").write_text(MODULE_THAT_MARKS)
    return run


def with_hparams(source, target, **changes):
    """`source` saved as `target` with its hyperparameters changed: plain dicts and strings only."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    state["hyper_parameters"] = {**state["hyper_parameters"], **changes}
    torch.save(state, target)
    return target


SHELL = {"class_path": "os.system", "init_args": {"command": "touch SHELL"}}


def refused(proc, *words):
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr[-3000:]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def nothing_ran(here):
    assert not (here / "SHELL").exists() and not (here / "IMPORTED").exists() and not (here / "PICKLED").exists()


def test_a_checkpoint_naming_a_shell_command_or_a_module_runs_nothing_under_any_command(trained, tmp_path, cli):
    run = a_run_in(tmp_path, trained)
    last = run / "checkpoints" / "last.ckpt"
    shell = with_hparams(last, tmp_path / "shell.ckpt", optimizer=SHELL, lr_scheduler=SHELL,
                         _instantiator="pwned.make", _class_path="pwned.Model")
    module = with_hparams(last, tmp_path / "module.ckpt", backbone="pwned.tiny")
    common = ["--config", QUICKSTART, *TINY, *NO_FIT_END]

    # fit restores the optimizer's and the schedule's states: their classes must be the command's
    fit = cli(["fit", *common, "--ckpt_path", shell], tmp_path, expect_ok=False)
    refused(fit, str(shell), "model.optimizer.class_path (os.system in the checkpoint, torch.optim.AdamW here)")
    # the backbone is the command's; the checkpoint's is compared, and its module never imported
    predict = cli(["predict", *common, "--ckpt_path", module], tmp_path, expect_ok=False)
    refused(predict, str(module), "model.backbone (pwned.tiny in the checkpoint, resnet here)")
    nothing_ran(tmp_path)
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]

    # test scores the network the command describes: the checkpoint's optimizer is neither used nor imported
    tested = cli(["test", *common, "--ckpt_path", shell], tmp_path)
    assert "test/top1 = " in tested.stdout
    nothing_ran(tmp_path)

    # bundle --run of a run whose last.ckpt was swapped for the hostile one: refused, the run as it was
    torch.save(torch.load(shell, weights_only=True), last)
    before = file_hashes(run)
    refused(cli(["bundle", "--run", run], tmp_path, expect_ok=False), str(last), "model.optimizer.class_path")
    nothing_ran(tmp_path)
    assert file_hashes(run) == before


def test_load_from_checkpoint_imports_and_calls_nothing_the_checkpoint_names(trained, tmp_path, monkeypatch):
    from lightning_modules import ImageClassifier

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "pwned.py").write_text(MODULE_THAT_MARKS)
    last = trained / "checkpoints" / "last.ckpt"
    # Lightning's own load_from_checkpoint imports and calls the `_instantiator` a checkpoint names
    model = ImageClassifier.load_from_checkpoint(with_hparams(last, tmp_path / "a.ckpt", _instantiator="pwned.make"))
    saved = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(value, saved[name]) for name, value in model.state_dict().items())
    with pytest.raises(ValueError, match=r"--model.optimizer.class_path 'os.system' is not a torch optimizer"):
        ImageClassifier.load_from_checkpoint(with_hparams(last, tmp_path / "b.ckpt", optimizer=SHELL))
    with pytest.raises(ValueError, match="'pwned' a checkpoint is never allowed to import"):
        ImageClassifier.load_from_checkpoint(with_hparams(last, tmp_path / "c.ckpt", backbone="pwned.tiny"))
    # a pruned network's recorded layer shapes only ever shrink the YAML's: a billion channels is refused, not allocated
    state = torch.load(last, map_location="cpu", weights_only=True)
    conv = next(name for name, shape in state["layer_shapes"].items() if shape["type"] == "Conv2d")
    state["layer_shapes"][conv] = {**state["layer_shapes"][conv], "out_channels": 10**9}
    torch.save(state, tmp_path / "d.ckpt")
    with pytest.raises(ValueError, match=f"the checkpoint's layer '{conv}' is .* not a pruned copy of this network"):
        ImageClassifier.load_from_checkpoint(tmp_path / "d.ckpt")
    nothing_ran(tmp_path)


class RunsACommand:
    """Pickled, it unpickles as os.system("touch PICKLED"): what torch.load(weights_only=False) would run."""

    def __reduce__(self):
        return os.system, ("touch PICKLED",)


def unreadable(kind, path, good):
    if kind == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "cut short":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    else:  # a pickle whose __reduce__ calls os.system, in torch.save's own format
        torch.save({"state_dict": {}, "hyper_parameters": RunsACommand()}, path, pickle_module=pickle)
    return path


@pytest.mark.parametrize("kind", ["random bytes", "cut short", "malicious pickle"])
def test_an_unreadable_checkpoint_is_one_sentence_naming_it_under_every_command(kind, trained, tmp_path, cli):
    run = a_run_in(tmp_path, trained)
    last = run / "checkpoints" / "last.ckpt"
    bad = unreadable(kind, tmp_path / "downloaded.ckpt", last)
    common = ["--config", QUICKSTART, *TINY, *NO_FIT_END]
    before = file_hashes(run)
    for command in ("fit", "validate", "test", "predict"):
        proc = cli([command, *common, "--ckpt_path", bad], tmp_path, expect_ok=False)
        refused(proc, f"cannot read checkpoint {bad}", "--ckpt_path")
    # the run's own last.ckpt gone bad: resume and bundle --run say so, and change nothing of the run
    shutil.copy(bad, last)
    before = file_hashes(run)
    named = "cannot read checkpoint runs/quickstart/version_0/checkpoints/last.ckpt"
    refused(cli(["fit", *common, "--ckpt_path", "last"], tmp_path, expect_ok=False), named)
    refused(cli(["bundle", "--run", run.relative_to(tmp_path)], tmp_path, expect_ok=False), named)
    assert file_hashes(run) == before
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]
    nothing_ran(tmp_path)


@pytest.mark.parametrize("setting", ["optimizer", "lr_scheduler"])
def test_an_optimizer_or_scheduler_that_is_not_torchs_is_refused_before_it_is_called(setting, tmp_path, cli):
    proc = cli(["fit", "--config", QUICKSTART, *TINY, *NO_FIT_END, f"--model.{setting}.class_path", "os.system",
                f"--model.{setting}.init_args.command", "touch SHELL"], tmp_path, expect_ok=False)
    sentence = refused(proc, f"--model.{setting}.class_path 'os.system' is not a torch")
    assert "torch.optim." in sentence  # what it must be
    nothing_ran(tmp_path)
    assert not (tmp_path / "runs").exists()


def test_an_optimizer_in_a_recipe_that_is_not_torchs_is_refused_before_it_is_called(tmp_path, cli):
    import yaml

    recipe = yaml.safe_load(Path(QUICKSTART).read_text())
    recipe["model"]["optimizer"] = SHELL
    recipe["trainer"]["callbacks"] = []
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    without_lr = [*TINY[:2], *TINY[4:]]  # os.system takes no lr: jsonargparse would refuse that first
    assert "--model.optimizer.lr" not in without_lr
    proc = cli(["fit", "--config", "recipe.yaml", *without_lr], tmp_path, expect_ok=False)
    refused(proc, "--model.optimizer.class_path 'os.system'")
    nothing_ran(tmp_path)


def test_a_batch_that_cannot_fit_in_memory_is_refused_naming_the_settings(tmp_path, cli, monkeypatch):
    from datamodules import datamodule

    # a machine with 64 MB: one 64x64 image fits (61 kB as uint8 and float32), a batch of the 1,079 train images not
    monkeypatch.setattr(datamodule, "memory_bytes", lambda: 64 * 10**6)
    proc = cli(["fit", "--config", QUICKSTART, *TINY, *NO_FIT_END, "--data.image_size", "64",
                "--data.batch_size", "2048"], tmp_path, expect_ok=False)
    refused(proc, "data.batch_size 2048 at data.image_size 64x64 makes one batch of 1,079 images 66.3 MB",
            "lower data.batch_size or data.image_size")
    # a batch_size above the split's images is no larger than the split: 2048 at 16 px fits where 1,079 images do
    cli(["fit", "--config", QUICKSTART, *TINY, *NO_FIT_END, "--data.batch_size", "2048",
         "--trainer.fast_dev_run", "true"], tmp_path)


def test_an_allocation_that_fails_is_one_sentence_naming_the_size_settings(tmp_path, cli, monkeypatch):
    from datamodules import datamodule

    # past the data's own check (a machine that says it has 1 PB): the network's example input, 120 GB, fails
    monkeypatch.setattr(datamodule, "memory_bytes", lambda: 10**15)
    proc = cli(["fit", "--config", QUICKSTART, *TINY, *NO_FIT_END, "--data.image_size", "100000"], tmp_path,
               expect_ok=False)
    refused(proc, "out of memory", "120.0 GB", "data.image_size", "data.batch_size")
    assert not (tmp_path / "runs").exists()
