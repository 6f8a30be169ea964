"""edgecls entry point: `python main.py fit --config experiments/quickstart.yaml` (or the `edgecls` command).

LightningCLI with fit / validate / test / predict. Defaults a YAML does not have to repeat: a TensorBoard run
under runs/<experiment>/version_N, checkpoints (best val/top1 and last), learning-rate logging, a rich progress
bar; `fit` ends by testing the best checkpoint on the test split.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Optional

from pytorch_lightning import Callback, Trainer
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar, RichProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info

from datamodules import ImageClassificationDataModule
from lightning_modules import ImageClassifier

RUNS_DIR = "runs"

# Lightning 2.6 internals call a torch pytree API that torch 2.14 deprecates; nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


class EdgeCLI(LightningCLI):
    """LightningCLI with edgecls's links and defaults."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--experiment", type=Optional[str], default=None,
            help="Run name: runs are written to runs/<experiment>/version_N (default: the config file's name).",
        )
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_size", "model.input_size", apply_on="instantiate")

    def experiment_name(self) -> str:
        config = self.config.get(str(self.subcommand), self.config)
        if config.get("experiment"):
            return str(config["experiment"])
        files = config.get("config") or []
        return Path(str(files[-1])).stem if files else "default"

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = TensorBoardLogger(
                save_dir=RUNS_DIR, name=self.experiment_name(), version=self._resumed_version(), default_hp_metric=False
            )
        has_logger = kwargs.get("logger", trainer_config.get("logger")) not in (False, None)
        callbacks: list[Callback] = list(trainer_config.get("callbacks") or [])
        if trainer_config.get("enable_checkpointing", True) is not False and not _has(callbacks, ModelCheckpoint):
            # Best first: trainer.checkpoint_callback (and ckpt_path="best") is the first ModelCheckpoint.
            callbacks.append(ModelCheckpoint(monitor="val/top1", mode="max", filename="epoch{epoch:03d}", auto_insert_metric_name=False))
            # Lightning 2.6 refreshes save_last only when a top-k checkpoint was saved; a resumable
            # last.ckpt needs a checkpoint written every epoch.
            callbacks.append(ModelCheckpoint(filename="last", monitor=None, save_top_k=1, enable_version_counter=False))
        if has_logger and not _has(callbacks, LearningRateMonitor):
            callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        if trainer_config.get("enable_progress_bar", True) is not False and not _has(callbacks, ProgressBar):
            callbacks.append(RichProgressBar(leave=True))
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def _resumed_version(self) -> Optional[int]:
        """`fit --ckpt_path last` continues the newest run of this experiment that has a last.ckpt, in place."""
        if self.subcommand != "fit" or self.config["fit"].get("ckpt_path") != "last":
            return None
        runs = Path(RUNS_DIR) / self.experiment_name()
        suffixes = (ckpt.parents[1].name.removeprefix("version_") for ckpt in runs.glob("version_*/checkpoints/last.ckpt"))
        versions = [int(s) for s in suffixes if s.isdigit()]
        return max(versions, default=None)

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.interrupted:
            return
        checkpoint = trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "") if checkpoint else ""
        results = trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=False)
        if trainer.is_global_zero and results:
            shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(results[0].items()))
            source = os.path.relpath(best) if best else "final weights"
            rank_zero_info(f"test ({source}): {shown}")
            print(f"test/top1 = {results[0].get('test/top1', float('nan')):.4f}  ({source})", flush=True)


    def after_predict(self) -> None:
        """Write what `predict` returned (class probabilities over the test split) to predictions.csv in the run."""
        batches = self.trainer.predict_loop.predictions
        if not batches or not self.trainer.is_global_zero:
            return
        import torch

        probs = torch.cat([b for b in batches if b is not None]).float()
        names = list(getattr(self.datamodule, "class_names", None) or range(probs.shape[1]))
        out = Path(self.trainer.log_dir or ".") / "predictions.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        with open(tmp, "w") as handle:
            handle.write("index,predicted,probability\n")
            top, index = probs.max(dim=1)
            for i, (p, k) in enumerate(zip(top.tolist(), index.tolist())):
                handle.write(f"{i},{names[k]},{p:.6f}\n")
        os.replace(tmp, out)
        print(f"predictions for {len(probs)} images: {out}", flush=True)


def _has(callbacks: list[Callback], kind: type) -> bool:
    return any(isinstance(c, kind) for c in callbacks)


def cli_main(args: Optional[list[str]] = None, run: bool = True) -> EdgeCLI:
    """The `edgecls` console command (run=False: parse and instantiate only, as benchmarks and notebooks need)."""
    return EdgeCLI(
        ImageClassifier,
        ImageClassificationDataModule,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    cli_main()
