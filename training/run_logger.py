"""The TensorBoard logger every run gets: Lightning's, with its sections in reading order. TensorBoard's TIME SERIES
and SCALARS tabs list sections (a tag's part before its first `/`) sorted by name, digits first, and TIME SERIES
opens only the first two; by name the splits read test, train, val. So the three splits carry their place in the
reading order (`1 val`, `2 test`, `3 train`) and the sections read once per fit follow by name: `bundle`, `data`,
`pruning`, `weights`. Lightning's own names (progress bar, checkpoint monitor, console) stay `val/top1` and so on."""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Optional

from lightning_fabric.loggers.logger import rank_zero_experiment

from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

# LearningRateMonitor names its tags "lr-<Optimizer>" (and "lr-<Optimizer>/pg<N>" per parameter group) unless a
# scheduler is named; the logger connector adds "epoch" to every logged step. As top-level sections both would
# sort before the metrics and open the tabs.
_LR = re.compile(r"^lr-[^/-]+")
SECTIONS = {"val": "1 val", "test": "2 test", "train": "3 train"}
# Within a section TIME SERIES sorts its cards by name, images among scalars: these two follow top1, so a split's
# first row is f1, loss, top1 instead of best_top1 and the confusion matrix.
AFTER_TOP1 = {"best_top1": "top1_best", "confusion_matrix": "top1_confusion"}


def reading_order_tag(tag: str) -> str:
    """`epoch` -> `train/epoch`, `lr-AdamW` -> `train/lr`, `lr-SGD/pg1` -> `train/lr/pg1`; other tags unchanged."""
    if tag == "epoch":
        return "train/epoch"
    return _LR.sub("train/lr", tag, count=1)


def board_tag(tag: str) -> str:
    """The tag as TensorBoard shows it: `val/top1` -> `1 val/top1`, `val/best_top1` -> `1 val/top1_best`,
    `lr-AdamW` -> `3 train/lr`; `bundle/...`, `data/...`, `weights/...` unchanged."""
    tag = reading_order_tag(tag)
    section, slash, rest = tag.partition("/")
    return f"{SECTIONS[section]}/{AFTER_TOP1.get(rest, rest)}" if slash and section in SECTIONS else tag


class RunLogger(TensorBoardLogger):
    """A command given a run's checkpoint (test, validate, predict) logs with sub_dir=<command>: its files (config.yaml,
    hparams.yaml, predictions.csv) go to version_N/<command>/, beside the fit's, but its events into version_N itself,
    so that TensorBoard shows its metrics in the run they belong to instead of a run of their own."""

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        # TensorBoardLogger keeps its writer and the writer's arguments in _experiment and _kwargs, and its experiment
        # property (overridden here to write into the run, not the sub_dir) has no public hook for the writer's folder
        if self._experiment is None and self.sub_dir:
            from torch.utils.tensorboard import SummaryWriter

            self._experiment = SummaryWriter(log_dir=os.path.dirname(self.log_dir), **self._kwargs)
        return super().experiment

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        super().log_metrics({board_tag(k): v for k, v in metrics.items()}, step)

    @rank_zero_only
    def log_figure(self, tag: str, figure: Any, step: int) -> None:
        """A matplotlib figure under the tag as TensorBoard shows it (board_tag)."""
        self.experiment.add_figure(board_tag(tag), figure, step)

    @rank_zero_only
    def log_hparams_plugin(self, data) -> None:
        """One of the hparams plugin's summaries (tensorboard.plugins.hparams.plugin_data_pb2.HParamsPluginData with
        its experiment, session_start_info or session_end_info set), written as Lightning's log_hyperparams writes
        its own: training.leaderboard says why the project writes these itself."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams import metadata

        kind = data.WhichOneof("data")
        summary = Summary(value=[Summary.Value(tag=f"_hparams_/{kind}", metadata=metadata.create_summary_metadata(data))])
        # SummaryWriter has no public call for a prebuilt Summary proto; its file writer's add_summary is the one way
        self.experiment._get_file_writer().add_summary(summary)
