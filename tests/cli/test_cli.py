"""The `fit` command as a user runs it: YAML in, a run directory, TensorBoard events and test metrics out."""

import csv
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from edgecls_testing import EXPERIMENTS, NO_FIT_END, TINY, file_hashes, printed_top1
from cli.app import cli_main


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.mark.parametrize("config", sorted(p.name for p in EXPERIMENTS.glob("*.yaml")))
def test_every_experiment_parses(config, capsys):
    with pytest.raises(SystemExit) as done:
        cli_main(["fit", "--config", str(EXPERIMENTS / config), "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    from lightning_modules.backbones import BACKBONES, available_backbones
    from lightning_modules.backbones.torchvision_zoo import torchvision_names

    name = printed["model"]["backbone"]
    assert name in available_backbones() and name in BACKBONES or name in torchvision_names() or name.startswith("timm:"), name
    assert printed["data"]["source"]


def test_command_line_overrides_reach_the_config(quickstart, capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", quickstart, "--model.optimizer.lr", "0.02", "--trainer.max_epochs", "3", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["optimizer"]["init_args"]["lr"] == 0.02 and printed["trainer"]["max_epochs"] == 3


def test_quickstart_fast_dev_run(quickstart, tmp_path, cli):
    proc = cli(["fit", "--config", quickstart, "--trainer.fast_dev_run", "true", *TINY], tmp_path)
    # one train and one val batch, then the test of the final weights on one batch of 64 images: a top-1 of k/64
    assert re.search(r"^test/top1 = [0-9.]+ \(test split, 32-true, final weights\)$", proc.stdout, re.M), proc.stdout
    correct = printed_top1(proc.stdout) * 64
    assert abs(correct - round(correct)) < 64 * 5e-5, proc.stdout
    # a smoke run: no checkpoint and no bundle left behind
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("manifest.json"))


def test_fit_writes_a_run_with_config_checkpoints_grad_norms_and_hparams(quickstart, tmp_path, cli):
    cli(["fit", "--config", quickstart, "--trainer.max_epochs", "2", "--model.log_grad_norm_every", "2", *TINY, *NO_FIT_END], tmp_path)
    run = tmp_path / "runs" / "quickstart" / "version_0"
    assert (run / "config.yaml").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["backbone"] == "resnet" and saved["trainer"]["max_epochs"] == 2
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("epoch") for n in ckpts)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["hyper_parameters"]["num_classes"] == 10  # linked from data.num_classes

    acc = events(run)
    scalars = acc.Tags()["scalars"]
    assert "weights/grad_norm" in scalars
    assert any(t.startswith("weights/grad_norm/net.conv1.weight") for t in scalars)
    steps = [e.step for e in acc.Scalars("weights/grad_norm")]
    assert steps == list(range(0, 16, 2))  # every log_grad_norm_every optimizer steps, 2 epochs of 8
    for tag in ("3 train/loss_step", "1 val/top1", "1 val/top5", "1 val/f1", "1 val/top1_best", "2 test/top1", "3 train/lr",
                "3 train/epoch"):
        assert tag in scalars, tag
    # TensorBoard's Scalars and Time Series tabs show sections sorted by name: val, test, train, gradient norms last,
    # their total before the per-parameter charts; nothing from Lightning (epoch, lr-AdamW) above them
    sections = sorted({t.split("/")[0] for t in scalars})
    assert sections == ["1 val", "2 test", "3 train", "weights"], sections
    # CUSTOM SCALARS: the total gradient norm has a chart, the per-parameter norms (hundreds of lines) have none
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert charts["gradient norm (all parameters)"] == ["weights/grad_norm$"]
    assert not [title for title, tags in charts.items() if any(t.startswith("weights/grad_norm/") for t in tags)]
    # one split a chart: the multiline chart colours lines by run, so a run's train and val would share a colour
    split_of = lambda tag: tag.split("/")[0]  # noqa: E731
    assert all(len({split_of(t) for t in tags}) == 1 for tags in charts.values()), charts
    assert charts["train loss"] == ["3 train/loss_epoch$"] and charts["val loss"] == ["1 val/loss$"]
    norms = sorted(t for t in scalars if t.startswith("weights/"))
    assert norms[0] == "weights/grad_norm" and len(norms) > 10
    assert acc.Scalars("1 val/top1_best")[-1].value == max(e.value for e in acc.Scalars("1 val/top1"))
    assert "1 val/top1_confusion" in acc.Tags()["images"]
    # the confusion image of an epoch is logged only when its val top-1 is the best so far: the last one shown is the
    # best checkpoint's, not the last epoch's
    tops = [(e.step, e.value) for e in acc.Scalars("1 val/top1")]
    best_steps = [step for i, (step, value) in enumerate(tops) if all(value >= v for _, v in tops[:i])]
    # (Lightning logs an epoch's val scalars at the step before global_step, the image at global_step)
    assert [e.step - 1 for e in acc.Images("1 val/top1_confusion")] == best_steps, tops

    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos][:5] == [  # the most wanted first
        "2 test/top1", "bundle/int8_delta_top1_pt", "bundle/cpu_latency_ms", "bundle/size_mb", "1 val/top1_best"]
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["lr"].string_value == "0.01"  # the command-line override
    assert session.hparams["backbone"].string_value == "resnet"
    assert session.hparams["batch_size"].string_value == "64" and session.hparams["max_epochs"].string_value == "2"


def test_test_and_predict_on_a_runs_checkpoint_write_into_that_run(quickstart, tmp_path, cli):
    cli(["fit", "--config", quickstart, *TINY, *NO_FIT_END, "--trainer.max_epochs", "1"], tmp_path)
    run = tmp_path / "runs" / "quickstart" / "version_0"
    fitted = file_hashes(run)
    # `test` on the run's checkpoint: its metrics join the run's own TensorBoard run (no sub-run version_0/test),
    # printed as the one line a fit prints, not again in Lightning's boxed table
    tested = cli(["test", "--config", quickstart, *TINY, "--ckpt_path", run / "checkpoints" / "last.ckpt"], tmp_path)
    assert re.search(r"^test/top1 = [0-9.]+ \(test split, 32-true, runs/quickstart/version_0/checkpoints/last\.ckpt\)$",
                     tested.stdout, re.M), tested.stdout
    assert "Test metric" not in tested.stdout and "DataLoader 0" not in tested.stdout
    assert [e.value for e in events(run).Scalars("2 test/top1")][-1] == pytest.approx(printed_top1(tested.stdout), abs=1e-4)
    assert not list((run / "test").glob("events.*")) and (run / "test" / "config.yaml").is_file()
    assert {k: v for k, v in file_hashes(run).items() if k in fitted} == fitted  # the fit's files as they were
    fitted = {k: v for k, v in file_hashes(run).items() if not k.startswith("events.")}
    proc = cli(["predict", "--config", quickstart, *TINY, "--ckpt_path", run / "checkpoints" / "last.ckpt"], tmp_path)
    out = run / "predict" / "predictions.csv"
    # no new, empty version_1: the predictions sit in the checkpoint's run, and the fit's own files are as they were
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]
    # besides predict/, only an event file of no events (Lightning opens the writer of every command)
    assert {k: v for k, v in file_hashes(run).items() if not k.startswith(("predict/", "events."))} == fitted
    assert str(out.relative_to(tmp_path)) in proc.stdout
    rows = list(csv.DictReader(out.open(newline="")))
    assert len(rows) == 359  # the digits test split
    assert list(rows[0]) == ["index", "file", "true_class", "predicted", "probability"]
    assert all(r["predicted"] in [str(i) for i in range(10)] and 0.1 <= float(r["probability"]) <= 1.0 for r in rows)
    # each row names its image, as the run's split list does, and its true class from that list
    listed = [json.loads(line) for line in (run / "split" / "test.jsonl").read_text().splitlines()]
    assert [(r["file"], r["true_class"]) for r in rows] == [(e["file"], e["class"]) for e in listed]


def test_resumed_fit_ends_where_an_uninterrupted_fit_ends(quickstart, tmp_path, cli):
    whole, split = tmp_path / "whole", tmp_path / "split"
    whole.mkdir(), split.mkdir()
    common = ["fit", "--config", quickstart, *TINY, *NO_FIT_END, "--model.lr_scheduler", "lightning_modules.schedules.CosineAnnealingLR"]
    straight = cli([*common, "--trainer.max_epochs", "2"], whole)
    # killed after its first epoch: the schedule still spans two epochs, as in the fit it interrupts
    cli([*common, "--trainer.max_epochs", "2", "--trainer.max_steps", "8"], split)
    resumed = cli([*common, "--trainer.max_epochs", "2", "--ckpt_path", "last"], split)

    # --ckpt_path last continued version_0 in place instead of starting a version_1 from scratch
    assert sorted(p.name for p in (split / "runs" / "quickstart").iterdir()) == ["version_0"]
    assert printed_top1(resumed.stdout) == printed_top1(straight.stdout) > 0.5
    a = torch.load(whole / "runs/quickstart/version_0/checkpoints/last.ckpt", weights_only=True, map_location="cpu")
    b = torch.load(split / "runs/quickstart/version_0/checkpoints/last.ckpt", weights_only=True, map_location="cpu")
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    for name, tensor in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], tensor, rtol=0, atol=1e-6, msg=name)
