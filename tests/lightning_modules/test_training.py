"""Training behaviour a user relies on: non-finite steps are skipped (and stop the fit when they persist),
and the same YAML trains with two DDP processes on the CPU."""

import functools

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from torch import nn

from edgecls_testing import TINY, printed_top1s, run_main
from datamodules import ImageClassificationDataModule
from deploy.bundle import load_bundle
from lightning_modules import ImageClassifier
from training.leaderboard import Leaderboard
from training.run_logger import RunLogger


class NaNLossAt(nn.Module):
    """Cross-entropy that turns NaN at chosen training steps, as a bad batch or an overflow would."""

    def __init__(self, model: ImageClassifier, steps: set[int]):
        super().__init__()
        self.inner, self.steps, self.model = model.criterion, steps, [model]

    def forward(self, logits, y):
        loss = self.inner(logits, y)
        model = self.model[0]
        return loss * float("nan") if model.training and model.global_step in self.steps else loss


class WeightsAt(pl.Callback):
    """Snapshots of the weights before each training batch."""

    def __init__(self):
        self.before = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}


def fit(model, max_epochs=1, logger=False, extra_callbacks=(), **trainer_kwargs):
    snapshots = WeightsAt()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, limit_val_batches=2, callbacks=[snapshots, *extra_callbacks], **trainer_kwargs)
    data = ImageClassificationDataModule(image_size=16, batch_size=64)
    trainer.fit(model, datamodule=data)
    return trainer, snapshots


def tiny_model(**kwargs):
    return ImageClassifier(num_classes=10, backbone="resnet", backbone_args={"num_blocks": [1, 1, 1, 1], "width": 4},
                           input_size=(16, 16), optimizer=functools.partial(torch.optim.AdamW, lr=0.01), log_confusion_matrix=False, **kwargs)


def test_a_nan_loss_is_skipped_logged_and_the_fit_goes_on():
    model = tiny_model()
    model.criterion = NaNLossAt(model, {3})
    with pytest.warns(UserWarning, match=r"step 3: non-finite .* the step is skipped"):
        trainer, snapshots = fit(model, limit_train_batches=8)

    assert trainer.global_step == 8 and not trainer.should_stop  # the fit ran to its end
    assert model.skipped_steps == 1
    # the NaN step changed no weight: what step 4 started from is what step 3 started from
    for name, before in snapshots.before[3].items():
        if "running_" not in name and "num_batches_tracked" not in name:  # batch-norm statistics follow forward passes
            torch.testing.assert_close(snapshots.before[4][name], before, rtol=0, atol=0, msg=name)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(snapshots.before[5]["conv1.weight"], snapshots.before[4]["conv1.weight"])  # training resumed


def test_skipped_steps_chart_starts_at_zero_and_counts_a_skip_between_logging_steps(tmp_path):
    model = tiny_model()
    model.criterion = NaNLossAt(model, {3})
    logger = TensorBoardLogger(tmp_path, name="run", default_hp_metric=False)
    with pytest.warns(UserWarning, match=r"step 3: non-finite"):
        fit(model, limit_train_batches=8, logger=logger, log_every_n_steps=50)
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/skipped_steps")] == [(0, 0.0), (3, 1.0)]


def test_best_val_top1_survives_a_checkpoint_round_trip():
    model = tiny_model()
    model.val_best_top1.update(torch.tensor(0.75))
    checkpoint = {}
    model.on_save_checkpoint(checkpoint)
    resumed = tiny_model()
    resumed.on_load_checkpoint(checkpoint)
    resumed.val_best_top1.update(torch.tensor(0.5))  # a worse first epoch after the resume
    assert float(resumed.val_best_top1.compute()) == 0.75


def test_persistent_non_finite_steps_stop_the_fit_with_one_clear_message_and_a_failed_run_in_hparams(tmp_path):
    model = tiny_model(max_bad_steps=3)
    model.criterion = NaNLossAt(model, set(range(2, 100)))
    logger = RunLogger(tmp_path, name="run", default_hp_metric=False)
    with pytest.warns(UserWarning, match=r"stopping the fit: 3 steps in a row were non-finite \(last at step 4\).*gradient_clip_val"):
        trainer, snapshots = fit(model, max_epochs=3, logger=logger, extra_callbacks=[Leaderboard()])
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    end = plugin_data_pb2.HParamsPluginData.FromString(acc.PluginTagToContent("hparams")["_hparams_/session_end_info"])
    assert end.session_end_info.status == api_pb2.STATUS_FAILURE  # HPARAMS' status filter lists it as Failure

    assert trainer.should_stop and trainer.global_step == 5  # steps 2, 3, 4 were bad; 17 batches an epoch, 3 epochs asked
    final = model.net.state_dict()
    for name, before in snapshots.before[2].items():
        if "num_batches_tracked" not in name and "running" not in name:
            torch.testing.assert_close(final[name], before, rtol=0, atol=0, msg=name)  # no bad update applied


@pytest.mark.slow  # two processes, a fit and a bundle
def test_two_process_cpu_ddp_fit_writes_one_run_one_bundle_and_synced_metrics(quickstart, tmp_path):
    proc = run_main(["fit", "--config", quickstart, *TINY, "--trainer.max_epochs", "1",
                     "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"], tmp_path, timeout=400)
    runs = tmp_path / "runs" / "quickstart"
    assert [p.name for p in runs.iterdir()] == ["version_0"]
    assert sorted(p.name for p in (runs / "version_0" / "checkpoints").iterdir()) == ["epoch000.ckpt", "last.ckpt"]
    # the fit-end callbacks ran on rank zero only: one bundle, complete and verified
    assert sorted(p.name for p in runs.rglob("manifest.json")) == ["manifest.json"]
    bundle = load_bundle(runs / "version_0" / "bundle", verify=True)
    assert {a["format"] for a in bundle.artifacts} == {"onnx", "onnx-int8"}
    printed = printed_top1s(proc.stdout)
    assert len(printed) == 1  # rank zero reports, once

    # The two processes each tested half of the split; the synced metric is the whole split's.
    model = ImageClassifier.load_from_checkpoint(runs / "version_0" / "checkpoints" / "epoch000.ckpt")
    data = ImageClassificationDataModule(image_size=16, batch_size=64)
    single = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False).test(model, datamodule=data, verbose=False)
    # Each of the 359 test images is scored once (no padded repeat from a DistributedSampler): the same figure.
    assert printed[0] == pytest.approx(single[0]["test/top1"], abs=5e-5 + 1e-7)  # printed with 4 decimals
    for warning in ("sync_dist=True", "it is recommended to use `Trainer(devices=1"):
        assert warning not in proc.stdout + proc.stderr, warning
