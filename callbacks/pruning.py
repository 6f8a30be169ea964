"""StructuredPruning: channels removed inside the fit (torch-pruning, DepGraph), so the epochs after it fine-tune
a network that is really smaller and faster; and AtEpochs, a YAML-writable schedule for Lightning's own
(mask-only, no dense speedup) `ModelPruning`."""

from __future__ import annotations

import logging
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning import Callback
from pytorch_lightning.callbacks import ModelPruning
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from callbacks.fit_end import fit_end_record
from lightning_modules import classifier_layer

log = logging.getLogger(__name__)

# A MACs target is approached in steps of MACS_STEP of the channels (cumulative, from the original widths),
# never past MAX_RATIO; the first step whose MACs reach the target is kept.
MAX_RATIO = 0.9
MACS_STEP = 0.02


def macs_schedule(macs_reduction: float) -> list[float]:
    """Channel ratios to try, in torch-pruning's iterative-scheduler form (first entry 0). A conv's MACs scale
    with in x out channels, so 1 - 1/sqrt(reduction) is about where the target lies: start a little below it
    (each MACs count is a forward pass at new shapes, slow on the CPU) and walk up in small steps."""
    start = max(MACS_STEP, 1.0 - macs_reduction ** -0.5 - 0.1)
    steps = max(1, int(round((MAX_RATIO - start) / MACS_STEP)) + 1)
    return [0.0] + [min(start + i * MACS_STEP, MAX_RATIO) for i in range(steps)]


def count_macs_params(net: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass of `example` (torch-pruning's counter, on a copy in eval mode)."""
    import torch_pruning as tp  # here, not at the top: only recipes that prune pay for its import

    macs, params = tp.utils.count_ops_and_params(net, example)
    return int(macs), int(params)


def check_target(ratio: Optional[float], macs_reduction: Optional[float]) -> None:
    if (ratio is None) == (macs_reduction is None):
        raise ValueError("give StructuredPruning exactly one of ratio (fraction of channels) or macs_reduction (e.g. 2.0 = half the MACs)")
    if ratio is not None and not 0.0 < ratio < 1.0:
        raise ValueError(f"StructuredPruning ratio must be between 0 and 1 (the fraction of channels removed), got {ratio}")
    if macs_reduction is not None and not macs_reduction > 1.0:
        raise ValueError(f"StructuredPruning macs_reduction must be above 1 (2.0 = half the MACs), got {macs_reduction}")


# Networks torch-pruning's dependency graph cannot follow, by class name, with the reason a user is told.
CANNOT_PRUNE = {
    "ShuffleNetV2": "its channel shuffle (a view and transpose that interleaves the two branches' channels) ties "
                    "channels together in a pattern torch-pruning's dependency graph does not track",
}


def pruning_refusal(net: nn.Module) -> Optional[str]:
    """One sentence saying why `net` cannot be channel-pruned, or None where it can."""
    for m in net.modules():
        reason = CANNOT_PRUNE.get(type(m).__name__)
        if reason:
            return (f"StructuredPruning cannot prune {type(m).__name__}: {reason}; remove StructuredPruning from "
                    "trainer.callbacks for this backbone or pick another one (e.g. mobilenet_v3_small, resnet18)")
    return None


def prune_channels(net: nn.Module, example: torch.Tensor, ratio: Optional[float] = None,
                   macs_reduction: Optional[float] = None, round_to: Optional[int] = 8,
                   global_pruning: bool = False) -> dict[str, Any]:
    """Remove channels from `net` in place by L1 magnitude, keeping the classifier's outputs.

    ratio: the fraction of each layer group's channels to remove; macs_reduction: remove channels step by
    step until MACs are at most 1/macs_reduction of the original. round_to keeps every pruned width a multiple
    of it (rounded down: TensorRT and CPU kernels like multiples of 8). Returns params and MACs before/after.
    """
    check_target(ratio, macs_reduction)
    refusal = pruning_refusal(net)
    if refusal:
        raise ValueError(refusal)
    example = example.to(next(net.parameters()).device)
    macs_before, params_before = count_macs_params(net, example)
    was_training = net.training
    # Eval mode: tracing the dependency graph runs a forward pass, which in train mode would move the
    # BatchNorm running statistics towards those of the all-zeros example.
    net.eval()
    try:
        import torch_pruning as tp

        with torch.enable_grad():  # DepGraph traces through autograd
            schedule = [0.0, ratio] if ratio is not None else macs_schedule(macs_reduction)
            pruner = tp.pruner.MetaPruner(
                net, example, importance=tp.importance.MagnitudeImportance(p=1),
                pruning_ratio=schedule[-1], iterative_steps=len(schedule) - 1,
                iterative_pruning_ratio_scheduler=lambda _ratio, _steps: schedule,
                round_to=round_to, global_pruning=global_pruning,
                ignored_layers=[classifier_layer(net)],
            )
            for _ in range(pruner.iterative_steps):
                pruner.step()
                macs_after, params_after = count_macs_params(net, example)
                if ratio is not None or macs_after * macs_reduction <= macs_before:
                    break
    finally:
        net.train(was_training)
    if macs_reduction is not None and macs_after * macs_reduction > macs_before:
        log.warning(f"structured pruning reached only {macs_before / macs_after:.2f}x fewer MACs (asked {macs_reduction}x) "
                    f"at {MAX_RATIO:.0%} of the channels removed")
    return {"params_before": params_before, "params_after": params_after,
            "macs_before": macs_before, "macs_after": macs_after}


def network_changed(pl_module: pl.LightningModule) -> None:
    """Tell the module its network was replaced: the best checkpoint and early stopping, which monitor its
    SELECTION_METRIC, then rank the new network above every checkpoint of the old one (the fit-end export and test
    load a pruned network, and the accuracy dip right after pruning does not count towards patience)."""
    if hasattr(pl_module, "network_changed"):
        pl_module.network_changed()


class StructuredPruning(Callback):
    """Remove channels at the start of epoch `at_epoch`; the remaining epochs fine-tune the pruned network.

    L1-magnitude importance over torch-pruning's dependency groups (residual additions pruned together), the
    classifier's outputs kept. The optimizer and LR scheduler are rebuilt for the epochs that are left, and the
    module is told its network changed, so "best" (a ModelCheckpoint or EarlyStopping monitoring
    lightning_modules.SELECTION_METRIC, as main.py's does) is a pruned checkpoint. Checkpoints record the pruned layer
    shapes, so `load_from_checkpoint` and `--ckpt_path` resume rebuild the pruned network (and do not prune again).

    Args:
        at_epoch: the epoch (0-based) at whose start channels are removed; must be below trainer.max_epochs.
        ratio: fraction of channels removed in every layer group (e.g. 0.3).
        macs_reduction: instead of ratio, prune until MACs fall by this factor (2.0 = half the MACs).
        round_to: keep pruned widths multiples of this (8 suits TensorRT and CPU kernels; null: exact ratio).
        global_pruning: rank channels across all layers instead of layer by layer (uneven widths).
    """

    def __init__(self, at_epoch: int = 5, ratio: Optional[float] = None, macs_reduction: Optional[float] = None,
                 round_to: Optional[int] = 8, global_pruning: bool = False) -> None:
        check_target(ratio, macs_reduction)
        if at_epoch < 0:
            raise ValueError(f"StructuredPruning at_epoch must be 0 or more, got {at_epoch}")
        if round_to is not None and round_to < 1:
            raise ValueError(f"StructuredPruning round_to must be a positive channel multiple or null, got {round_to}")
        self.at_epoch, self.ratio, self.macs_reduction = at_epoch, ratio, macs_reduction
        self.round_to, self.global_pruning = round_to, global_pruning
        self.pruned = False
        self.stats: dict[str, Any] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # Before the first epoch, not at at_epoch: a refusal after epochs of training wastes them.
        refusal = pruning_refusal(getattr(pl_module, "net", pl_module))
        if refusal:
            raise ValueError(refusal)
        if trainer.fast_dev_run:
            return
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0 and self.at_epoch >= max_epochs:
            raise ValueError(
                f"StructuredPruning at_epoch {self.at_epoch} is not below trainer.max_epochs {max_epochs}: there would be "
                "no epoch left to fine-tune; lower at_epoch or raise max_epochs"
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here, not in setup: a --ckpt_path resume has restored self.pruned by now, and a network pruned
        # before the resume needs no re-wrapping.
        if trainer.world_size > 1 and not self.pruned:
            raise ValueError(
                "StructuredPruning runs in single-process fits only (DDP would have to re-wrap the network after its "
                "channels change); set trainer.devices: 1, or prune in one process and fine-tune the pruned checkpoint with DDP"
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # fast_dev_run runs one epoch: prune in it, so the dry run goes through this path too.
        due = trainer.current_epoch >= self.at_epoch or bool(trainer.fast_dev_run)
        if self.pruned or not due:
            return
        example = getattr(pl_module, "example_input_array", None)
        if not isinstance(example, torch.Tensor):
            raise ValueError(f"StructuredPruning needs {type(pl_module).__name__}.example_input_array to trace the network")
        net = getattr(pl_module, "net", pl_module)
        stats = prune_channels(net, example, self.ratio, self.macs_reduction, self.round_to, self.global_pruning)
        self.pruned = True
        self.stats = {"epoch": trainer.current_epoch, "input_size": list(example.shape[2:]), **stats}

        # The pruned layers hold new Parameter objects: the old optimizer (and the scheduler bound to it)
        # would update tensors the network no longer uses.
        trainer.strategy.setup_optimizers(trainer)
        network_changed(pl_module)

        for logger in trainer.loggers:
            logger.log_metrics({f"pruning/{k}": float(v) for k, v in stats.items()}, step=trainer.global_step)
        rank_zero_info(
            f"structured pruning at epoch {trainer.current_epoch}: params {stats['params_before']:,} -> "
            f"{stats['params_after']:,} ({stats['params_before'] / stats['params_after']:.2f}x fewer), MACs at "
            f"{'x'.join(map(str, self.stats['input_size']))} {stats['macs_before'] / 1e6:.1f}M -> {stats['macs_after'] / 1e6:.1f}M "
            f"({stats['macs_before'] / stats['macs_after']:.2f}x fewer); optimizer and LR schedule rebuilt for "
            f"{trainer.max_epochs - trainer.current_epoch} epoch(s) of fine-tuning; the best checkpoint will be a pruned one"
        )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Published as a note of the run's fit-end record, which the bundle report reads (no step reads this class).
        if not self.stats or not trainer.is_global_zero:
            return
        s = self.stats
        fit_end_record(trainer).note(
            "StructuredPruning", "Structured pruning",
            f"at epoch {s['epoch']}: params {s['params_before']:,} -> {s['params_after']:,}, MACs at "
            f"{'x'.join(map(str, s['input_size']))} {s['macs_before']:,} -> {s['macs_after']:,} "
            f"({s['macs_before'] / max(s['macs_after'], 1):.2f}x fewer)", facts=dict(s))

    def state_dict(self) -> dict[str, Any]:
        return {"pruned": self.pruned, "stats": dict(self.stats)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pruned = bool(state_dict.get("pruned", False))
        self.stats = dict(state_dict.get("stats", {}))


class MaskPruning(ModelPruning):
    """Lightning's `ModelPruning` (same arguments), with "best" chosen among masked networks once masks apply.

    ModelPruning applies its masks at the end of a training epoch, after that epoch's validation: the best
    checkpoint so far holds the unmasked network, and the fit-end export and test would load it (or, saved at
    train-epoch end, the freshly masked weights under the unmasked score). Like StructuredPruning, this tells the
    module its network changed, so checkpoints of the masked network rank above the unmasked ones.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        before = sparsity(getattr(pl_module, "net", pl_module))
        super().on_train_epoch_end(trainer, pl_module)
        if sparsity(getattr(pl_module, "net", pl_module)) != before:
            network_changed(pl_module)
            rank_zero_info("pruning masks applied: the best checkpoint is now chosen among masked networks")


class AtEpochs:
    """A schedule for Lightning's `ModelPruning(apply_pruning=...)` that YAML can express: prune at these epochs.

    ModelPruning applies `amount` at every epoch by default, each time to what is left (0.5 for ten epochs is
    99.9 % zeros). In YAML: `apply_pruning: {class_path: callbacks.AtEpochs, init_args: {epochs: [5]}}`.
    """

    def __init__(self, epochs: list[int]) -> None:
        self.epochs = [int(e) for e in epochs]

    def __call__(self, epoch: int) -> bool:
        return epoch in self.epochs


def sparsity(net: nn.Module) -> float:
    """Fraction of exactly-zero weights over all conv and linear layers (what masks leave behind)."""
    zeros = total = 0
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            zeros += int((m.weight == 0).sum())
            total += m.weight.numel()
    return zeros / max(total, 1)
