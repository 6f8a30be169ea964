"""`python main.py predict`: class probabilities over the test split, written to predictions.csv in the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from deploy.atomic import atomic_write_text


class PredictionsCSV(BasePredictionWriter):
    """Lightning's prediction writer: one row per image (index, predicted class name, its probability), written
    atomically once the epoch's predictions are all in."""

    def __init__(self, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Sequence[Any],
                           batch_indices: Sequence[Any]) -> None:
        batches = [b for b in predictions if b is not None]
        if not batches or not trainer.is_global_zero:
            return
        probs = torch.cat(batches).float()
        names = list(getattr(trainer.datamodule, "class_names", None) or range(probs.shape[1]))
        out = Path(trainer.log_dir or ".") / self.filename
        out.parent.mkdir(parents=True, exist_ok=True)
        top, index = probs.max(dim=1)
        rows = [f"{i},{names[k]},{p:.6f}" for i, (p, k) in enumerate(zip(top.tolist(), index.tolist()))]
        atomic_write_text(out, "index,predicted,probability\n" + "".join(row + "\n" for row in rows))
        print(f"predictions for {len(probs)} images: {out}", flush=True)
