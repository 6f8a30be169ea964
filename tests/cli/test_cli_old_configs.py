"""A run written by an older edgecls (data sources by name, optimizer and schedule as plain model settings) still
resumes and bundles: its config.yaml and checkpoints are read with today's keys, and the command says so in one line."""

import torch
import yaml

from edgecls_testing import NO_FIT_END, TINY, error_lines, file_hashes, printed_top1


def old_model(new: dict) -> dict:
    """The model settings as edgecls wrote them before the optimizer and schedule were callables."""
    optimizer, schedule = new["optimizer"]["init_args"], new["lr_scheduler"]
    cosine = schedule["class_path"].endswith("CosineAnnealingLR")
    kept = {k: v for k, v in new.items() if k not in ("optimizer", "lr_scheduler")}
    old = {k: kept.pop(k) for k in ("backbone", "backbone_args") if k in kept}
    old.update(optimizer="adamw", lr=optimizer["lr"], weight_decay=optimizer["weight_decay"], betas=[0.9, 0.999],
               momentum=0.9, scheduler="cosine" if cosine else "onecycle", T_max=None,
               eta_min=schedule["init_args"].get("eta_min", 0.0) if cosine else 0.0, pct_start=0.3)
    return {**old, **kept}


def old_data(new: dict) -> dict:
    """The data settings as edgecls wrote them before sources were classes."""
    old = {"source": "digits", "root": None}
    old.update({k: v for k, v in new.items() if k != "source"})
    old.update(download=False, synthetic=None, source_args=None)
    return old


OLD_BEST = ("ModelCheckpoint{'monitor': 'val/top1', 'mode': 'max', 'every_n_train_steps': 0, 'every_n_epochs': 1, "
            "'train_time_interval': None}")


def as_older_edgecls_wrote_it(run, max_steps=None):
    """config.yaml and every checkpoint's hyperparameters of `run` in the keys of the older edgecls."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"], config["data"] = old_model(config["model"]), old_data(config["data"])
    if max_steps is not None:
        config["trainer"]["max_steps"] = max_steps
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        state["hyper_parameters"] = old_model(dict(state["hyper_parameters"]))
        state["datamodule_hyper_parameters"] = old_data(dict(state["datamodule_hyper_parameters"]))
        # the best checkpoint's state, under the key of the ModelCheckpoint on val/top1 it was written by
        state["callbacks"] = {OLD_BEST if k.startswith("BestCheckpoint") else k: v for k, v in state["callbacks"].items()}
        torch.save(state, ckpt)
    return config


COSINE = ["--model.lr_scheduler", "lightning_modules.schedules.CosineAnnealingLR"]


def test_an_old_run_resumes_and_bundles_with_its_keys_read_as_todays(quickstart, tmp_path, cli):
    # a cosine schedule, stopped after its first epoch (as a kill would): the resume trains the second one
    cli(["fit", "--config", quickstart, *TINY, *NO_FIT_END, *COSINE, "--trainer.max_epochs", "2",
              "--trainer.max_steps", "8"], tmp_path)
    run = tmp_path / "runs" / "quickstart" / "version_0"
    old = as_older_edgecls_wrote_it(run, max_steps=-1)
    assert old["model"]["optimizer"] == "adamw" and old["data"]["source"] == "digits"

    proc = cli(["fit", "--config", "runs/quickstart/version_0/config.yaml", "--ckpt_path", "last"], tmp_path)
    notes = [line for line in proc.stderr.splitlines() if "uses the keys of an older edgecls" in line]
    assert notes == ["config.yaml of runs/quickstart/version_0 uses the keys of an older edgecls; read as data.source: "
                     "DigitsSource(), model.optimizer: AdamW(lr=0.01, weight_decay=0.0005, betas=[0.9, 0.999]), "
                     "model.lr_scheduler: CosineAnnealingLR(eta_min=0.0)"], proc.stderr[-3000:]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 16  # the second epoch trained, in the same run
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]
    printed_top1(proc.stdout)  # the fit ended with its test
    # the best so far was restored: one best checkpoint kept, not the first epoch's left beside the second's
    assert len(list((run / "checkpoints").glob("epoch*.ckpt"))) == 1
    group = last["optimizer_states"][0]["param_groups"][0]
    assert group["weight_decay"] == 0.0005 and tuple(group["betas"]) == (0.9, 0.999)

    # bundle --run of the finished old run: its config.yaml and its checkpoint's hyperparameters are read as today's
    as_older_edgecls_wrote_it(run)
    proc = cli(["bundle", "--run", "runs/quickstart/version_0"], tmp_path)
    assert "config.yaml of runs/quickstart/version_0 uses the keys of an older edgecls" in proc.stderr
    printed_top1(proc.stdout)
    assert not error_lines(proc.stderr)


def test_an_old_setting_without_a_counterpart_is_one_sentence_saying_what_to_write(quickstart, tmp_path, cli):
    cli(["fit", "--config", quickstart, *TINY, *NO_FIT_END, "--trainer.max_epochs", "2",
              "--trainer.max_steps", "8"], tmp_path)
    run = tmp_path / "runs" / "quickstart" / "version_0"
    config = as_older_edgecls_wrote_it(run, max_steps=-1)
    config["data"].update(source="stripes", source_args={"count": 200})  # a source registered with register_source
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = file_hashes(run)

    proc = cli(["fit", "--config", run / "config.yaml", "--ckpt_path", "last"], tmp_path, expect_ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr[-3000:]
    for words in ("config.yaml of", "data.source 'stripes'", "class_path", "DataSource", "data.source_args"):
        assert words in errors[0], errors[0]
    assert file_hashes(run) == before


OLD_CIFAR_RECIPE = """\
experiment: old_cifar
trainer: {max_epochs: 30}
model:
  backbone: resnet
  optimizer: sgd
  lr: 0.1
  weight_decay: 0.0005
  momentum: 0.9
  scheduler: cosine
  T_max: 30
data:
  source: cifar10
  root: data
  download: false
  augment: s2
"""


def test_an_old_sgd_cosine_cifar_recipe_reads_as_the_same_settings_in_todays_keys(tmp_path, cli):
    (tmp_path / "old_cifar.yaml").write_text(OLD_CIFAR_RECIPE)
    proc = cli(["fit", "--config", "old_cifar.yaml", "--print_config"], tmp_path)
    assert "old_cifar.yaml uses the keys of an older edgecls" in proc.stderr
    printed = yaml.safe_load(proc.stdout)
    optimizer, schedule, data = printed["model"]["optimizer"], printed["model"]["lr_scheduler"], printed["data"]
    assert optimizer["class_path"] == "torch.optim.SGD"
    assert {k: optimizer["init_args"][k] for k in ("lr", "weight_decay", "momentum", "nesterov")} == {
        "lr": 0.1, "weight_decay": 0.0005, "momentum": 0.9, "nesterov": True}
    assert schedule["class_path"] == "lightning_modules.schedules.CosineAnnealingLR"
    assert schedule["init_args"]["T_max"] == 30 and schedule["init_args"]["eta_min"] == 0.0
    assert data["source"] == {"class_path": "datamodules.sources.Cifar10Source",
                              "init_args": {"root": "data", "download": False}}
    assert data["augment"] == "rrc_affine_dropout" and printed["experiment"] == "old_cifar"
