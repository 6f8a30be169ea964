"""ImageClassifier: a backbone from the registry, cross-entropy with label smoothing, torchmetrics per stage,
gradient-norm monitoring and a guard against non-finite steps."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.utilities import grad_norm, rank_zero_info, rank_zero_warn
from torch import nn
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from lightning_modules import schedules
from lightning_modules.architecture import apply_layer_shapes, layer_shapes
from lightning_modules.backbones import PretrainedInput, build_backbone, pretrained_input
from lightning_modules.figures import confusion_matrix_figure

# Gradient L2 norms, a section after the metrics (training.run_logger: TensorBoard lists sections by name,
# the splits first) and tags within one by name, so the total (the section's own name) comes first and the
# per-parameter norms (GRAD_NORM/<parameter>) after it.
GRAD_NORM = "weights/grad_norm"
# What the best checkpoint and early stopping rank validations by: val/top1 plus the number of times the network was
# replaced mid-fit (structured pruning, pruning masks), so every validation of the network the fit ends with ranks
# above every one of an earlier network, and within one network the order is val/top1's. Not sent to the loggers.
SELECTION_METRIC = "val/top1_ranked"


class ImageClassifier(pl.LightningModule):
    """Image classifier trained from YAML.

    Args:
        num_classes: number of classes (linked from data.num_classes).
        backbone: network name: resnet | mobilenet_v2 (the project's own), any torchvision classifier
            (mobilenet_v3_small, efficientnet_b0, resnet18, ...) or timm:<name> (pip install timm).
        backbone_args: arguments of the backbone builder (resnet: num_blocks, width; mobilenet_v2: width_mult,
            dropout, freeze_features, weights, weights_path; torchvision and timm models: weights, weights_path,
            dropout, freeze_features, bn_momentum and the model's own constructor arguments).
        input_size: [H, W] the network sees (linked from data.input_size); used for the model summary.
        optimizer: any torch optimizer, as LightningCLI's callable ({class_path: torch.optim.AdamW, init_args:
            {lr: 0.001, weight_decay: 0.0001}}); it gets the trainable parameters.
        lr_scheduler: any torch LR scheduler, as a callable that gets the optimizer (unset: a constant rate).
            Arguments that are a length of the fit are filled in where unset: total_steps (optimizer steps left;
            stepped every step) and T_max (epochs left; stepped every epoch). lightning_modules.schedules holds
            OneCycleLR and CosineAnnealingLR with those lengths and the peak rate left to the fit and the optimizer.
        label_smoothing: cross-entropy label smoothing.
        log_grad_norm_every: log per-parameter and total gradient L2 norms every N optimizer steps (0: never).
        max_bad_steps: stop the fit after this many non-finite steps in a row.
        log_confusion_matrix: log a confusion-matrix figure at validation and test end.
        channels_last: run the network in channels_last memory format (NHWC); default: on CUDA only, where
            convolutions in bf16/fp16 run 2-3x faster in it (measured: benchmarks/gpu_throughput.py).
    """

    def __init__(
        self,
        num_classes: int = 10,
        backbone: str = "resnet",
        backbone_args: Optional[dict[str, Any]] = None,
        input_size: Sequence[int] = (32, 32),
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        label_smoothing: float = 0.1,
        log_grad_norm_every: int = 50,
        max_bad_steps: int = 5,
        log_confusion_matrix: bool = True,
        channels_last: Optional[bool] = None,
    ) -> None:
        super().__init__()
        check_settings(label_smoothing=label_smoothing, log_grad_norm_every=log_grad_norm_every, max_bad_steps=max_bad_steps)
        # logger=False: hparams go to TensorBoard once, together with the data's and a real metric (on_fit_start)
        self.save_hyperparameters(logger=False)
        # Built outside LightningCLI (a test, a notebook) the callables are recorded as LightningCLI records them.
        self.hparams.optimizer = schedules.as_config(self.hparams.optimizer)
        self.hparams.lr_scheduler = schedules.as_config(self.hparams.lr_scheduler)
        # Rebuilt from that plain record: LightningCLI's own callables hold its parser, which a deepcopy (the
        # fit-end steps' copy of the model) cannot copy under DDP.
        hp = self.hparams
        self.optimizer = schedules.from_config(hp.optimizer, "optimizer") if isinstance(hp.optimizer, dict) else optimizer
        self.lr_scheduler = (schedules.from_config(hp.lr_scheduler, "lr_scheduler") if isinstance(hp.lr_scheduler, dict)
                             else lr_scheduler)
        self._check_optimization()
        self.net = build_backbone(backbone, num_classes, **(backbone_args or {}))
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.example_input_array = torch.zeros(1, 3, *input_size)

        self.train_metrics = MetricCollection({"top1": MulticlassAccuracy(num_classes, average="micro")}, prefix="train/")
        self.val_metrics = self._eval_metrics(num_classes, "val/")
        self.test_metrics = self._eval_metrics(num_classes, "test/")
        self.val_confmat = MulticlassConfusionMatrix(num_classes)
        self.test_confmat = MulticlassConfusionMatrix(num_classes)
        self.val_best_top1 = MaxMetric()
        self.network_changes = 0  # see SELECTION_METRIC and network_changed
        self.bad_steps_in_a_row = 0
        self.skipped_steps = 0
        self._bad_loss: Optional[str] = None

    @staticmethod
    def _eval_metrics(num_classes: int, prefix: str) -> MetricCollection:
        metrics: dict[str, Any] = {
            "top1": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        }
        if num_classes > 5:
            metrics["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        # compute_groups=False: top-1 and top-5 have the same state layout, and torchmetrics would merge them
        # whenever their states coincide after the first batch (then top-5 reports top-1).
        return MetricCollection(metrics, prefix=prefix, compute_groups=False)

    @property
    def pretrained_input(self) -> Optional[PretrainedInput]:
        """The input the backbone's pretrained weights expect (mean, std, size, from the weights' own config), or
        None when it starts from random values: the DataModule normalizes with it where data.mean_std is auto."""
        return pretrained_input(self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # --- memory format --------------------------------------------------------------------------

    def _memory_format(self) -> torch.memory_format:
        wanted = self.hparams.get("channels_last")
        if wanted is None:
            wanted = self.device.type == "cuda"
        return torch.channels_last if wanted else torch.contiguous_format

    def _set_memory_format(self) -> None:
        self._format = self._memory_format()
        self.net.to(memory_format=self._format)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=getattr(self, "_format", torch.contiguous_format))

    # --- training -------------------------------------------------------------------------------

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(self._input(x))
        loss = self.criterion(logits, y)
        if not torch.isfinite(loss):
            # Backward still runs (in DDP every rank must take part); on_before_optimizer_step drops the step.
            self._bad_loss = f"non-finite loss ({loss.item()})"
            return loss
        self.train_metrics.update(logits.detach(), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        return loss

    def on_train_epoch_end(self) -> None:
        # torchmetrics values are already synced across processes; sync_dist=True averages equal values (no
        # change) and keeps Lightning's "use sync_dist=True" warning away under DDP.
        self.log_dict(self.train_metrics.compute(), sync_dist=True)
        self.train_metrics.reset()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Gradients here are this step's, after backward and before clipping and the update; in
        # training_step they would still be the previous step's.
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        bad_loss, self._bad_loss = self._bad_loss, None
        if bad_loss or not torch.isfinite(total):
            if bad_loss:
                self._bad_step(bad_loss)
            elif not self._scaler_handles_overflow():
                bad = [n for n, p in self.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
                self._bad_step(f"non-finite gradient in {len(bad)} parameter(s): {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
            # Without gradients the optimizer leaves every parameter as it is: the step is skipped.
            optimizer.zero_grad(set_to_none=True)
            return
        self.bad_steps_in_a_row = 0
        every = self.hparams.log_grad_norm_every
        if every and self.global_step % every == 0 and self.trainer.is_global_zero:
            # Straight to the loggers: self.log would also wait for trainer.log_every_n_steps, and the two
            # cadences together would log at neither. Gradients are already all-reduced, so rank zero's are everyone's.
            norms = grad_norm(self, norm_type=2)  # {"grad_2.0_norm/<parameter>": ..., "grad_2.0_norm_total": ...}
            total = float(norms.pop("grad_2.0_norm_total"))
            norms = {GRAD_NORM: total, **{f"{GRAD_NORM}/{k.split('/', 1)[1]}": float(v) for k, v in norms.items()}}
            for logger in self.loggers:
                logger.log_metrics(norms, step=self.global_step)

    def _scaler_handles_overflow(self) -> bool:
        # With 16-bit AMP, GradScaler skips overflowing steps itself and lowers its scale; those are expected.
        return getattr(self.trainer.precision_plugin, "scaler", None) is not None

    def _bad_step(self, what: str) -> None:
        step = self.global_step
        self.skipped_steps += 1
        self.bad_steps_in_a_row += 1
        rank_zero_warn(f"step {step}: {what}; the step is skipped (skipped so far: {self.skipped_steps})")
        if self.trainer.is_global_zero:  # straight to the loggers: self.log would drop it between log_every_n_steps
            for logger in self.loggers:
                logger.log_metrics({"train/skipped_steps": float(self.skipped_steps)}, step=step)
        if self.bad_steps_in_a_row >= self.hparams.max_bad_steps:
            self.trainer.should_stop = True
            ckpt = getattr(self.trainer.checkpoint_callback, "best_model_path", "") or "none saved yet"
            rank_zero_warn(
                f"stopping the fit: {self.bad_steps_in_a_row} steps in a row were non-finite (last at step {step}); "
                f"no bad update was applied, and the best checkpoint is {ckpt}. Lower model.lr, set "
                "trainer.gradient_clip_val, or check the data for NaN/inf."
            )

    # --- evaluation -----------------------------------------------------------------------------

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics, self.val_confmat)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics, self.test_confmat)

    def _eval_step(self, batch, stage: str, metrics: MetricCollection, confmat: MulticlassConfusionMatrix) -> None:
        x, y = batch
        logits = self(self._input(x))
        self.log(f"{stage}/loss", self.criterion(logits, y), on_epoch=True, sync_dist=True, batch_size=len(y))
        metrics.update(logits, y)
        if self.hparams.log_confusion_matrix:
            confmat.update(logits, y)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.log_dict(values, prog_bar=True, sync_dist=True)
        self.log(SELECTION_METRIC, values["val/top1"] + self.network_changes, logger=False, sync_dist=True)
        self.val_metrics.reset()
        best = False
        if not self.trainer.sanity_checking:
            # the best so far (ties too: the best checkpoint is the latest of equals): its confusion image is logged,
            # so the image TensorBoard shows last is the best checkpoint's, not the last epoch's
            best = (not self.val_best_top1.update_count
                    or float(values["val/top1"]) >= float(self.val_best_top1.compute()))
            self.val_best_top1.update(values["val/top1"])
            self.log("val/best_top1", self.val_best_top1.compute(), sync_dist=True)
        self._log_confusion_matrix(self.val_confmat, "val", log=best)

    def network_changed(self) -> None:
        """Whatever replaces the network mid-fit (pruning) says so here: from the next validation on, the best
        checkpoint and early stopping rank the new network above every earlier one (SELECTION_METRIC), and the best
        val top-1 shown restarts with it."""
        self.network_changes += 1
        self.val_best_top1.reset()

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute(), sync_dist=True)
        self.test_metrics.reset()
        self._log_confusion_matrix(self.test_confmat, "test")

    def _log_confusion_matrix(self, confmat: MulticlassConfusionMatrix, stage: str, log: bool = True) -> None:
        if not self.hparams.log_confusion_matrix:
            return
        matrix = confmat.compute().cpu()  # computed on every rank: it syncs across processes
        confmat.reset()
        # a logger that takes figures (training.run_logger.RunLogger.log_figure); the module knows no logger class
        log_figure = getattr(self.logger, "log_figure", None)
        if not log or self.trainer.sanity_checking or log_figure is None or self.global_rank != 0:
            return
        names = getattr(self.trainer.datamodule, "class_names", None)
        figure = confusion_matrix_figure(matrix, names)
        if stage == "val":
            # the epoch as the console counts it (1-based) and the checkpoint file it was saved as (0-based)
            figure.axes[0].set_title(f"epoch {self.current_epoch + 1}/{self.trainer.max_epochs} (checkpoint "
                                     f"epoch{self.current_epoch:03d}): best val top-1 so far", fontsize=11)
            figure.tight_layout()
        log_figure(f"{stage}/confusion_matrix", figure, self.global_step)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(self._input(x)).softmax(dim=1)

    # --- set-up ---------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> "ImageClassifier":
        super().train(mode)
        # BatchNorm layers whose parameters are frozen (freeze_features) keep their pretrained statistics.
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.requires_grad:
                m.eval()
        return self

    def on_validation_start(self) -> None:
        self._set_memory_format()  # `validate` on its own; within a fit, already so

    def on_test_start(self) -> None:
        self._set_memory_format()

    def on_predict_start(self) -> None:
        self._set_memory_format()

    def on_fit_start(self) -> None:
        self._set_memory_format()
        n_train = sum(p.numel() for p in self.parameters() if p.requires_grad)
        rank_zero_info(f"{self.hparams.backbone}: {sum(p.numel() for p in self.parameters()):,} parameters ({n_train:,} trainable)")

    def on_train_start(self) -> None:
        # From the first step, so the chart reads 0 instead of missing until something goes wrong.
        if self.trainer.is_global_zero and self.global_step == 0:
            for logger in self.loggers:
                logger.log_metrics({"train/skipped_steps": float(self.skipped_steps)}, step=0)

    def on_fit_end(self) -> None:
        self.net.to(memory_format=torch.contiguous_format)  # what export, pruning and a plain user expect
        self._format = torch.contiguous_format

    @property
    def stopped_by_bad_steps(self) -> bool:
        """The fit was stopped by persistent non-finite steps (training.leaderboard lists it as failed)."""
        return self.bad_steps_in_a_row >= self.hparams.max_bad_steps

    def leaderboard_settings(self) -> dict[str, Any]:
        """The settings as flat values (optimizer and schedule by name, lr, weight_decay), for the leaderboard."""
        return {**self.hparams, **self.optimization_settings()}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["layer_shapes"] = layer_shapes(self.net)
        checkpoint["network_changes"] = self.network_changes
        # torchmetrics states are not in the state_dict: without this a resumed run's best restarts from its
        # first resumed epoch.
        if self.val_best_top1.update_count:
            checkpoint["val_best_top1"] = float(self.val_best_top1.compute())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A channel-pruned checkpoint carries its own layer shapes: rebuild those layers before the weights load.
        self.network_changes = int(checkpoint.get("network_changes", 0))
        if "val_best_top1" in checkpoint:
            self.val_best_top1.update(torch.tensor(checkpoint["val_best_top1"], device=self.device))
        if "layer_shapes" in checkpoint and apply_layer_shapes(self.net, checkpoint["layer_shapes"]):
            rank_zero_info(f"rebuilt the pruned architecture from the checkpoint: {sum(p.numel() for p in self.parameters()):,} parameters")

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             strict: Optional[bool] = None, weights_only: Optional[bool] = None,
                             **kwargs: Any) -> "ImageClassifier":
        """The module a checkpoint holds, built from its hyperparameters read as plain data (keyword arguments
        override them). Lightning's own would import and call whatever `_instantiator` the file names; here nothing
        a checkpoint names is imported: its optimizer and schedule class paths resolve only in modules already
        imported (torch.optim, lightning_modules.schedules) and must be torch's kinds, and a backbone of a module
        not yet imported (`my_backbones.tiny_cnn`) is refused unless given here (backbone=...)."""
        import sys

        from lightning_modules.backbones import module_to_import
        from training.checkpoint_io import read_checkpoint

        if hparams_file is not None:
            raise ValueError("hparams_file is not read: pass the settings that differ from the checkpoint's as keyword arguments")
        checkpoint = read_checkpoint(checkpoint_path, "pass a .ckpt written by this project")
        hparams = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not str(k).startswith("_")}
        for what in ("optimizer", "lr_scheduler"):
            if what not in kwargs and isinstance(hparams.get(what), dict):
                hparams[what] = schedules.from_config(hparams[what], what, import_modules=False)
        module = module_to_import(str(hparams.get("backbone", ""))) if "backbone" not in kwargs else None
        if module is not None and module not in sys.modules:
            raise ValueError(f"{checkpoint_path} names the backbone {hparams['backbone']!r}, whose module {module!r} a "
                             "checkpoint is never allowed to import; import it yourself first, or pass backbone=...")
        model = cls(**{**hparams, **kwargs})
        model.on_load_checkpoint(checkpoint)  # a pruned network's layer shapes first
        model.load_state_dict(checkpoint["state_dict"], strict=True if strict is None else strict)
        return model.to(map_location) if map_location is not None and not callable(map_location) else model

    def _check_optimization(self) -> None:
        """Settings the optimizer or the schedule refuse, refused now, before a run folder is written; a callable
        that is not a torch optimizer or scheduler class before it is called."""
        schedules.check_class(self.optimizer, "optimizer")
        if self.lr_scheduler is not None:
            schedules.check_class(self.lr_scheduler, "lr_scheduler")
        probe = schedules.build(self.optimizer, [nn.Parameter(torch.zeros(1))], {}, "optimizer")
        if self.lr_scheduler is not None:
            fill = {k: 1 for k, v in schedules.fit_lengths(self.lr_scheduler).items() if v is None}
            schedules.build(self.lr_scheduler, probe, fill, "lr_scheduler")

    def optimization_settings(self) -> dict[str, Any]:
        """What the HPARAMS tab shows of the optimization: the optimizer's and the schedule's class names, lr and
        weight decay (as given, or the optimizer's defaults)."""
        opt = schedules.describe(self.optimizer)
        return {"optimizer": opt["name"], "lr": opt.get("lr"), "weight_decay": opt.get("weight_decay"),
                "scheduler": schedules.describe(self.lr_scheduler)["name"]}

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = schedules.build(self.optimizer, params, {}, "optimizer")
        if self.lr_scheduler is None:
            return optimizer
        # Lengths of the fit the YAML left unset, counted from where the fit is: rebuilt mid-fit (after structured
        # pruning), the schedule covers what is left.
        lengths = schedules.fit_lengths(self.lr_scheduler)
        fill: dict[str, Any] = {}
        if "T_max" in lengths:
            period = lengths["T_max"] or self.trainer.max_epochs
            if not period or period < 1:
                raise ValueError(f"model.lr_scheduler {schedules.describe(self.lr_scheduler)['name']} needs T_max "
                                 "(model.lr_scheduler.init_args.T_max) or trainer.max_epochs to be set")
            fill["T_max"] = max(1, period - self.trainer.current_epoch)
        if "total_steps" in lengths and lengths["total_steps"] is None:
            fill["total_steps"] = max(1, int(self.trainer.estimated_stepping_batches) - self.trainer.global_step)
        sched = schedules.build(self.lr_scheduler, optimizer, fill, "lr_scheduler")
        interval = getattr(sched, "interval", "step" if "total_steps" in lengths else "epoch")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": interval}}


def check_settings(**values: Any) -> None:
    """Each numeric model setting in its valid range, or one sentence naming it (model.<name>) and the range."""
    rules = {
        "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
        "log_grad_norm_every": (lambda v: v >= 0, ">= 0 (0: never)"),
        "max_bad_steps": (lambda v: v >= 1, ">= 1"),
    }
    for name, value in values.items():
        ok, wanted = rules[name]
        if not ok(value):
            raise ValueError(f"model.{name} must be {wanted}, got {value!r}")
