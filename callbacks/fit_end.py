"""What every fit-end step shares: its paths, its place in the callback order, and the model it works on.

At `on_fit_end` the strategy has already torn down (the model is back on the CPU, DDP unwrapped), and
`trainer.log_dir` broadcasts across ranks, so paths are computed in `setup` on every rank and the work itself
happens on rank zero only.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning import Callback

STAGING = ".bundle-staging"  # artifacts collect here; DeployBundle renames it to bundle/ when all is written
BUNDLE = "bundle"


class FitEndStep(Callback):
    """Base class of the fit-end callbacks: `requires` lists the steps that must be listed before this one."""

    requires: tuple[type["FitEndStep"], ...] = ()

    def __init__(self) -> None:
        self.run_dir: Optional[Path] = None
        self.staging: Optional[Path] = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_order(trainer, self)
        self.run_dir = Path(trainer.log_dir or trainer.default_root_dir)  # every rank: log_dir broadcasts
        self.staging = self.run_dir / STAGING
        if trainer.is_global_zero and self.requires == ():
            # A staging folder left by a killed fit is stale: the first step starts it afresh.
            shutil.rmtree(self.staging, ignore_errors=True)

    def should_run(self, trainer: pl.Trainer) -> bool:
        return trainer.is_global_zero and not trainer.interrupted and not trainer.fast_dev_run and trainer.state.fn == "fit"


def check_order(trainer: pl.Trainer, step: FitEndStep) -> None:
    """A missing or misplaced prerequisite is one sentence at fit start, not a failure at fit end."""
    callbacks = trainer.callbacks
    mine = callbacks.index(step)
    for needed in step.requires:
        where = [i for i, c in enumerate(callbacks) if isinstance(c, needed)]
        if not where:
            raise ValueError(
                f"{type(step).__name__} needs {needed.__name__} in trainer.callbacks; add "
                f"'- class_path: callbacks.{needed.__name__}' before it in the experiment YAML"
            )
        if where[0] > mine:
            raise ValueError(
                f"{type(step).__name__} is listed before {needed.__name__} in trainer.callbacks, but runs on its "
                f"output; list {needed.__name__} first"
            )


def find_step(trainer: pl.Trainer, kind: type) -> Optional[Callback]:
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


def best_model(trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[pl.LightningModule, str]:
    """A CPU, eval-mode copy of the module holding the best checkpoint's weights (the final ones where
    there is no checkpoint); the trained module's own state and mode stay as they are."""
    model = copy.deepcopy(pl_module).cpu()
    path = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
    source = "final weights"
    if path and os.path.isfile(path):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        model.on_load_checkpoint(checkpoint)  # rebuilds a pruned architecture where the checkpoint has one
        model.load_state_dict(checkpoint["state_dict"])
        source = path
    return model.eval(), source


def loader_arrays(loader, limit: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Collect (x float32 NCHW, y int64) from a DataLoader as numpy, up to `limit` samples."""
    xs, ys, n = [], [], 0
    for x, y in loader:
        xs.append(x.numpy().astype(np.float32, copy=False))
        ys.append(y.numpy())
        n += len(y)
        if limit is not None and n >= limit:
            break
    x, y = np.concatenate(xs), np.concatenate(ys)
    return (x[:limit], y[:limit]) if limit is not None else (x, y)


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def input_size(pl_module: pl.LightningModule) -> tuple[int, int]:
    example = getattr(pl_module, "example_input_array", None)
    if isinstance(example, torch.Tensor) and example.ndim == 4:
        return int(example.shape[2]), int(example.shape[3])
    raise ValueError(f"{type(pl_module).__name__} has no example_input_array of shape [1, 3, H, W] to size the export")
