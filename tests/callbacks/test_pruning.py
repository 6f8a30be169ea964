"""Structured pruning as a user meets it: channels removed mid-fit, params and MACs down by what was asked, the
fit going on to its last epoch, a best checkpoint that reloads pruned, a pruned ONNX that is smaller and runs,
a resume that does not prune twice; and Lightning's mask-only pruning, for contrast."""

import functools
import re
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import pytorch_lightning as pl
import torch
import yaml
from onnx import numpy_helper
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint, ModelPruning
from torch import nn

from callbacks import AtEpochs, StructuredPruning, export_onnx, prune_channels
from callbacks.pruning import count_macs_params, sparsity
from edgecls_testing import EXPERIMENTS, TINY, printed_top1
from datamodules import ImageClassificationDataModule
from deploy.runners import OnnxRuntimeRunner
from lightning_modules import SELECTION_METRIC, ImageClassifier, build_backbone, classifier_layer
from lightning_modules.schedules import OneCycleLR

BACKBONE_ARGS = {"num_blocks": [1, 1, 1, 1], "width": 16}  # widths 16..128: round_to 8 can halve every one


def tiny_model() -> ImageClassifier:
    return ImageClassifier(num_classes=10, backbone="resnet", backbone_args=BACKBONE_ARGS, input_size=(16, 16),
                           optimizer=functools.partial(torch.optim.AdamW, lr=0.01), lr_scheduler=OneCycleLR, log_confusion_matrix=False)


def digits() -> ImageClassificationDataModule:
    return ImageClassificationDataModule(image_size=16, batch_size=64)


def fit(model, tmp_path, callbacks, max_epochs=3):
    best = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor=SELECTION_METRIC, mode="max", filename="epoch{epoch:03d}",
                           auto_insert_metric_name=False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_train_batches=4, limit_val_batches=2, num_sanity_val_steps=0,
                         callbacks=[best, *callbacks])
    trainer.fit(model, datamodule=digits())
    return trainer


def conv_widths(net: nn.Module) -> list[int]:
    return [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pruned")
    torch.manual_seed(0)
    model = tiny_model()
    widths = conv_widths(model.net)
    pruning = StructuredPruning(at_epoch=1, ratio=0.5)
    trainer = fit(model, tmp, [pruning])
    return SimpleNamespace(model=model, trainer=trainer, pruning=pruning, widths_before=widths, tmp=tmp)


@pytest.fixture(scope="module")
def unpruned_onnx(tmp_path_factory):
    return export_onnx(tiny_model().net, tmp_path_factory.mktemp("onnx") / "unpruned.onnx", (16, 16))


def test_pruning_removes_the_asked_channels_and_params_and_macs_drop_by_as_much(pruned):
    stats, net = pruned.pruning.stats, pruned.model.net
    assert stats["epoch"] == 1
    # ratio 0.5 with round_to 8: every conv keeps half its channels (a multiple of 8), the classes stay 10
    assert conv_widths(net) == [w // 2 for w in pruned.widths_before]
    assert all(w % 8 == 0 for w in conv_widths(net))
    assert classifier_layer(net).out_features == 10
    assert stats["params_after"] <= 0.5 * stats["params_before"]
    assert stats["macs_after"] <= 0.5 * stats["macs_before"]
    # the recorded numbers are the network's own
    assert count_macs_params(net, torch.zeros(1, 3, 16, 16)) == (stats["macs_after"], stats["params_after"])


def test_the_fit_goes_on_with_an_optimizer_and_schedule_over_the_pruned_weights(pruned):
    trainer = pruned.trainer
    assert trainer.current_epoch == 3 and trainer.global_step == 3 * 4  # ran to max_epochs
    optimizer = trainer.optimizers[0]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in pruned.model.parameters()}
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.optimizer is optimizer
    assert scheduler.total_steps == 2 * 4  # OneCycle over the two epochs left after pruning


def test_the_best_checkpoint_is_pruned_and_reloads_with_the_same_predictions(pruned):
    path = pruned.trainer.checkpoint_callback.best_model_path
    epoch = int(re.search(r"epoch(\d+)", path).group(1))
    assert epoch >= 1, f"best checkpoint {path} predates the pruning"
    loaded = ImageClassifier.load_from_checkpoint(path, map_location="cpu").eval()
    assert conv_widths(loaded.net) == conv_widths(pruned.model.net)
    assert sum(p.numel() for p in loaded.parameters()) == pruned.pruning.stats["params_after"]

    reference = tiny_model()
    reference.on_load_checkpoint(torch.load(path, map_location="cpu", weights_only=True))
    reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    x, _ = next(iter(_val_loader()))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference.eval()(x))


def _val_loader():
    data = digits()
    data.setup("fit")
    return ((data.normalize(x), y) for x, y in data.val_dataloader())


def test_the_pruned_onnx_is_smaller_and_runs_like_torch(pruned, unpruned_onnx):
    path = pruned.trainer.checkpoint_callback.best_model_path
    model = ImageClassifier.load_from_checkpoint(path, map_location="cpu").eval()
    pruned_onnx = export_onnx(model.net, pruned.tmp / "pruned.onnx", (16, 16))
    assert pruned_onnx.stat().st_size < 0.5 * unpruned_onnx.stat().st_size
    x, _ = next(iter(_val_loader()))
    with torch.no_grad():
        expected = model(x).numpy()
    got = OnnxRuntimeRunner(pruned_onnx).infer(x.numpy())
    np.testing.assert_allclose(got, expected, atol=1e-4)


class Validations(Callback):
    def __init__(self):
        self.seen = []  # (epoch, val/top1, the metric the best checkpoint and early stopping rank by)

    def on_validation_end(self, trainer, pl_module):
        metrics = trainer.callback_metrics
        self.seen.append((trainer.current_epoch, float(metrics["val/top1"]), float(metrics[SELECTION_METRIC])))


def test_early_stopping_does_not_count_the_dip_after_pruning_against_the_unpruned_best(tmp_path):
    torch.manual_seed(0)
    early, seen = EarlyStopping(monitor=SELECTION_METRIC, mode="max", patience=1), Validations()
    trainer = fit(tiny_model(), tmp_path, [StructuredPruning(at_epoch=1, ratio=0.5), early, seen], max_epochs=3)
    assert trainer.current_epoch == 3  # every epoch ran: the first pruned one ranks above the unpruned best
    before = [ranked for epoch, _, ranked in seen.seen if epoch < 1]
    after = [ranked for epoch, _, ranked in seen.seen if epoch >= 1]
    assert before and after and min(after) > max(before)
    # within one network the order is val/top1's
    assert all(ranked - top1 == pytest.approx(1.0 if epoch >= 1 else 0.0) for epoch, top1, ranked in seen.seen)


def test_a_macs_target_is_reached_in_steps_without_overshooting_far():
    for backbone, args in (("resnet", BACKBONE_ARGS), ("mobilenet_v2", {"width_mult": 0.5})):
        torch.manual_seed(0)
        net = build_backbone(backbone, 10, **args)
        stats = prune_channels(net, torch.zeros(1, 3, 16, 16), macs_reduction=2.0)
        assert stats["macs_after"] <= stats["macs_before"] / 2, backbone
        assert stats["macs_after"] >= stats["macs_before"] / 3, f"{backbone} pruned far past the target"
        assert net(torch.zeros(2, 3, 16, 16)).shape == (2, 10)


@pytest.mark.slow  # two fits, one resumed
def test_a_pruned_run_resumes_from_last_without_pruning_again(tmp_path, cli):
    config = yaml.safe_load((EXPERIMENTS / "quickstart_pruned.yaml").read_text())
    # The user's YAML at test size: prune at the start of epoch 1; fit-end steps other than the export left out.
    keep = ("callbacks.StructuredPruning", "callbacks.ONNXExport")
    config["trainer"]["callbacks"] = [c for c in config["trainer"]["callbacks"] if c["class_path"] in keep]
    config["trainer"]["callbacks"][0]["init_args"]["at_epoch"] = 1
    path = tmp_path / "quickstart_pruned.yaml"
    path.write_text(yaml.safe_dump(config))
    # cosine: a OneCycle schedule cannot be stretched over epochs added on resume (pruned or not)
    tiny = [*TINY[:1], yaml.safe_dump(BACKBONE_ARGS, default_flow_style=True).strip(), *TINY[2:], "--model.lr_scheduler", "lightning_modules.schedules.CosineAnnealingLR"]

    # interrupted after 2 of its 3 epochs (8 batches an epoch): a finished run is not resumable
    first = cli(["fit", "--config", path, *tiny, "--trainer.max_epochs", "3", "--trainer.max_steps", "16"], tmp_path)
    assert re.search(r"structured pruning at epoch 1: params [\d,]+ -> [\d,]+ .*MACs", first.stdout + first.stderr)
    run = tmp_path / "runs" / "quickstart_pruned" / "version_0"
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = next(v for k, v in last["callbacks"].items() if "StructuredPruning" in k)
    assert state["pruned"] and state["stats"]["macs_after"] * 2 <= state["stats"]["macs_before"]

    # the fit-end export holds the pruned network
    exported = onnx.load(next(run.rglob("model.onnx")))
    onnx_params = sum(numpy_helper.to_array(t).size for t in exported.graph.initializer)
    assert onnx_params < state["stats"]["params_before"] * 0.8

    second = cli(["fit", "--config", path, *tiny, "--trainer.max_epochs", "3", "--ckpt_path", "last"], tmp_path)
    log = second.stdout + second.stderr
    assert "structured pruning at epoch" not in log
    printed_top1(second.stdout)  # the resumed fit ended with its test
    resumed = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 2 and resumed["layer_shapes"] == last["layer_shapes"]


def test_lightning_masks_zero_half_the_weights_but_the_onnx_stays_as_large(tmp_path, unpruned_onnx):
    torch.manual_seed(0)
    model = tiny_model()
    masks = ModelPruning("l1_unstructured", amount=0.5, use_global_unstructured=True, apply_pruning=AtEpochs([0]),
                         make_pruning_permanent=True)
    fit(model, tmp_path, [masks], max_epochs=2)
    assert sparsity(model.net) == pytest.approx(0.5, abs=0.02)
    assert sum(p.numel() for p in model.net.parameters()) == count_macs_params(tiny_model().net, torch.zeros(1, 3, 16, 16))[1]
    masked_onnx = export_onnx(model.net, tmp_path / "masked.onnx", (16, 16))
    assert masked_onnx.stat().st_size == pytest.approx(unpruned_onnx.stat().st_size, rel=0.02)


def test_user_errors_are_one_sentence(tmp_path):
    with pytest.raises(ValueError, match="ratio must be between 0 and 1"):
        StructuredPruning(ratio=1.5)
    with pytest.raises(ValueError, match="exactly one of ratio .* or macs_reduction"):
        StructuredPruning(ratio=0.3, macs_reduction=2.0)
    with pytest.raises(ValueError, match="macs_reduction must be above 1"):
        StructuredPruning(macs_reduction=0.5)
    with pytest.raises(ValueError, match="at_epoch 2 is not below trainer.max_epochs 2"):
        fit(tiny_model(), tmp_path, [StructuredPruning(at_epoch=2, ratio=0.3)], max_epochs=2)
    with pytest.raises(ValueError, match="single-process fits only"):
        StructuredPruning(ratio=0.3).on_fit_start(SimpleNamespace(world_size=2), None)
