"""What a fit prints: a progress bar that stops before the fit-end steps print, or, where stdout is not a
terminal, one line per epoch."""

from __future__ import annotations

from typing import Optional

from pytorch_lightning import Callback
from pytorch_lightning.callbacks import RichProgressBar

from lightning_modules.classifier import SELECTION_METRIC
from training.run_logger import reading_order_tag


class FitEndSafeProgressBar(RichProgressBar):
    """The live bar, stopped when the fit ends: left running, it redraws over what the fit-end steps print and
    prints the last epoch's bar again after the bundle table."""

    def on_fit_end(self, trainer, pl_module) -> None:
        self._stop_progress()  # and marked stopped, so the test that follows starts a fresh bar


class EpochLines(Callback):
    """One line per epoch with its metrics, for logs that are not a terminal. Printed when the next epoch starts
    (or training ends): at this callback's on_train_epoch_end the module has not logged its train/top1 yet."""

    def __init__(self) -> None:
        self._pending: Optional[int] = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._pending = trainer.current_epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._print(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._print(trainer)

    def _print(self, trainer) -> None:
        epoch, self._pending = self._pending, None
        if epoch is None or not trainer.is_global_zero:
            return
        metrics = {reading_order_tag(k): float(v) for k, v in trainer.callback_metrics.items()
                   if not k.endswith("_step") and k != SELECTION_METRIC and v.numel() == 1}
        shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if f"{k}_epoch" not in metrics)
        print(f"epoch {epoch + 1}/{trainer.max_epochs} ({trainer.precision}): {shown}", flush=True)
