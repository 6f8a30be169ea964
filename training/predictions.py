"""`python main.py predict`: class probabilities over the test split, written to predictions.csv in the run."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from deploy.atomic import atomic_write_text


class PredictionsCSV(BasePredictionWriter):
    """Lightning's prediction writer: one row per image (index in the split, file name, true class where the split
    has labels, predicted class name, its probability), written atomically once the epoch's predictions are all in.
    A file name with a comma, a quote or a newline is quoted as CSV quotes it (any CSV reader gets it back)."""

    HEADER = ("index", "file", "true_class", "predicted", "probability")

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
        dataset = _predicted_dataset(trainer)
        order = _dataset_indices(batch_indices, len(probs))
        out = Path(trainer.log_dir or ".") / self.filename
        out.parent.mkdir(parents=True, exist_ok=True)
        top, index = probs.max(dim=1)
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(self.HEADER)
        for i, p, k in zip(order, top.tolist(), index.tolist()):
            file, true_class = _file_and_class(dataset, i, names)
            writer.writerow((i, file, true_class, names[k], f"{p:.6f}"))
        atomic_write_text(out, text.getvalue())
        print(f"predictions for {len(probs)} images (file, true class, predicted class, probability): {out}", flush=True)


def _predicted_dataset(trainer: pl.Trainer) -> Any:
    loaders = trainer.predict_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    return getattr(loader, "dataset", None)


def _dataset_indices(batch_indices: Sequence[Any], count: int) -> list[int]:
    """The split index of each prediction, in the order Lightning returned them; the loader's own order (it does not
    shuffle) where Lightning tracked none."""
    flat = [int(i) for per_loader in (batch_indices or []) for batch in (per_loader or []) for i in (batch or [])]
    return flat if len(flat) == count else list(range(count))


def _file_and_class(dataset: Any, i: int, names: list) -> tuple[str, str]:
    images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    file = images.name(i) if images is not None and hasattr(images, "name") else ""
    true_class = names[int(labels[i])] if labels is not None and len(labels) > i else ""
    return file, true_class
