"""The HPARAMS tab as the experiment's leaderboard (the settings a person varies, the metrics that rank runs) and the
CUSTOM SCALARS tab in reading order: a callback of the trainer's (cli.app adds one to every run with a TensorBoard
logger), so the LightningModule knows no logger."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from types import SimpleNamespace

import pytorch_lightning as pl
from pytorch_lightning import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import AttributeDict

from deploy.run_folder import run_number
from lightning_modules.classifier import GRAD_NORM
from training.run_logger import RunLogger, board_tag

# The HPARAMS tab as the experiment's leaderboard. TensorBoard's hparams plugin gives every column 10em (160 px),
# shows the first five hparams the experiment declares and then its first five metrics, and leaves about 6 columns
# beside the trial name at 1600 px. So the experiment declares the two settings runs are compared by (those `dvc exp
# run -S` varies); the other settings stay in each run's hparams.yaml and config.yaml.
HEADLINE_HPARAMS = ("lr", "max_epochs")
# (scalar tag as TensorBoard shows it, column title with its unit): the plugin shows each run's last value of the tag,
# every number to 5 significant digits (0.98050: top-1 is a fraction here, Δ in points of %); a run that never logged
# it shows an empty cell, never a placeholder. The bundle/ tags are logged by callbacks.DeployBundle at
# fit end. The most wanted first: test top-1, the INT8 loss, CPU latency and size are on screen at 1600 px.
LEADERBOARD_METRICS = (
    (board_tag("test/top1"), "test top-1 (0-1)"),
    ("bundle/int8_delta_top1_pt", "INT8 Δtop-1 pt"),
    ("bundle/cpu_latency_ms", "CPU ms"),
    ("bundle/size_mb", "bundle MB"),
    (board_tag("val/best_top1"), "best val top-1 (0-1)"),
    ("bundle/params", "params"),
)


# TensorBoard's CUSTOM SCALARS tab, in reading order: train and val side by side, one chart a split, then the
# optimization. Its multiline charts colour a line by its run, so train and val on one chart drew one run's two
# curves in one colour; one split a chart keeps a run's colour the same on every chart and the title says the split.
# Tags are regular expressions, of the names TensorBoard shows (board_tag). The per-parameter norms stay out of it
# (with a dozen runs they drew hundreds of lines on one chart); TIME SERIES and SCALARS keep one chart per parameter
# under weights/.
READING_ORDER = {
    "loss": {
        "train loss": ["Multiline", [board_tag("train/loss_epoch") + "$"]],
        "val loss": ["Multiline", [board_tag("val/loss") + "$"]],
    },
    "top-1": {
        "train top-1": ["Multiline", [board_tag("train/top1") + "$"]],
        "val top-1": ["Multiline", [board_tag("val/top1") + "$"]],
        "best val top-1 so far": ["Multiline", [board_tag("val/best_top1") + "$"]],
        "val f1": ["Multiline", [board_tag("val/f1") + "$"]],
        "val top-5": ["Multiline", [board_tag("val/top5") + "$"]],
    },
    "optimization": {
        "learning rate": ["Multiline", [board_tag("train/lr") + ".*"]],
        "gradient norm (all parameters)": ["Multiline", [f"{GRAD_NORM}$"]],
        "skipped non-finite steps": ["Multiline", [board_tag("train/skipped_steps")]],
    },
}


class Leaderboard(Callback):
    """At fit start: the run's settings into hparams.yaml and the HPARAMS tab, and the CUSTOM SCALARS layout; at fit
    end: the run's status (failed where the module says persistent non-finite steps stopped it)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = trainer.logger
        if not isinstance(logger, TensorBoardLogger) or not trainer.is_global_zero:
            return
        settings = getattr(pl_module, "leaderboard_settings", None)
        flat = SimpleNamespace(hparams=AttributeDict(settings() if settings is not None else pl_module.hparams))
        params = leaderboard_hparams(flat, trainer)
        logger.log_hyperparams(params)  # hparams.yaml; with no metrics Lightning writes no events
        if isinstance(logger, RunLogger):
            write_leaderboard_session(logger, params)
        logger.experiment.add_custom_scalars(READING_ORDER)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if isinstance(trainer.logger, RunLogger) and trainer.is_global_zero:
            # A fit stopped by persistent non-finite steps is listed as failed (the plugin filters on status).
            write_leaderboard_end(trainer.logger, failed=bool(getattr(pl_module, "stopped_by_bad_steps", False)))


def leaderboard_hparams(module: pl.LightningModule, trainer: pl.Trainer) -> dict[str, Any]:
    """The settings a person varies between runs, under short names (`backbone.width`, `lr`, `max_epochs`):
    no class paths, no linked or derived values."""
    hp = module.hparams
    params: dict[str, Any] = {"backbone": hp.backbone}
    params.update({f"backbone.{k}": v for k, v in (hp.backbone_args or {}).items()})
    params.update(optimizer=hp.optimizer, lr=hp.lr, weight_decay=hp.weight_decay, scheduler=hp.scheduler,
                  label_smoothing=hp.label_smoothing)
    facts = getattr(trainer.datamodule, "facts", None)  # the DataModule's DataFacts
    if facts is not None:
        h, w = facts.image_size
        params.update(data=facts.source, augment=facts.augment, image_size=h if h == w else [h, w],
                      batch_size=facts.batch_size)
    params.update(max_epochs=trainer.max_epochs, precision=str(trainer.precision),
                  devices=trainer.num_devices * trainer.num_nodes, strategy=strategy_name(trainer.strategy))
    seed = os.environ.get("PL_GLOBAL_SEED")  # set by seed_everything
    if seed is not None:
        params["seed"] = int(seed)
    return {k: _hparam_value(v) for k, v in params.items() if v is not None}


def strategy_name(strategy: Any) -> str:
    """DDPStrategy -> ddp, SingleDeviceStrategy -> single_device: the names trainer.strategy takes."""
    name = type(strategy).__name__.removesuffix("Strategy")
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    return f"{name}_spawn" if getattr(strategy, "_start_method", None) == "spawn" else name


def _hparam_value(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # the plugin prints every number to 5 significant digits (64.000, lr 0.0030000): as text, a count reads as
        # itself and a rate as the YAML writes it (0.003)
        return str(value)
    if isinstance(value, (bool, str)):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)  # a list, or an augment pipeline, as one cell


def write_leaderboard_session(logger: RunLogger, params: dict[str, Any]) -> None:
    """The hparams plugin's experiment and session-start summaries. Not Lightning's `log_hyperparams(params,
    metrics)`: it declares every setting a column (the plugin shows five, pushing the metrics off screen), logs a
    placeholder value for each metric (a run that never finished an epoch would show best top-1 0.0), and has no
    column titles, trial name or end status."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    infos = []
    for name in HEADLINE_HPARAMS:
        if name in params:
            value = params[name]
            kind = api_pb2.DATA_TYPE_BOOL if isinstance(value, bool) else (
                api_pb2.DATA_TYPE_FLOAT64 if isinstance(value, (int, float)) else api_pb2.DATA_TYPE_STRING)
            infos.append(api_pb2.HParamInfo(name=name, type=kind, differs=True))
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=title) for tag, title in LEADERBOARD_METRICS]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics, time_created_secs=time.time())
    # every setting, though only the declared ones are columns: a reader of the events finds them all
    start = plugin_data_pb2.SessionStartInfo(group_name=trial_name(logger), start_time_secs=time.time())
    for name, value in params.items():
        field = "bool_value" if isinstance(value, bool) else "number_value" if isinstance(value, (int, float)) else "string_value"
        setattr(start.hparams[name], field, value)
    logger.log_hparams_plugin(plugin_data_pb2.HParamsPluginData(experiment=experiment))
    logger.log_hparams_plugin(plugin_data_pb2.HParamsPluginData(session_start_info=start))


def write_leaderboard_end(logger: RunLogger, failed: bool) -> None:
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    status = api_pb2.STATUS_FAILURE if failed else api_pb2.STATUS_SUCCESS
    end = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    logger.log_hparams_plugin(plugin_data_pb2.HParamsPluginData(session_end_info=end))


TRIAL_NAME_CHARS = 15  # what HPARAMS' 10em trial column shows before it cuts the name with "..."


def trial_name(logger: TensorBoardLogger) -> str:
    """`quickstart v3` for runs/quickstart/version_3: the experiment first, so the table's runs of one experiment sort
    together, and short enough for the trial column: a longer experiment name keeps its head and tail around an
    ellipsis (`imagef…ratch v0` for imagefolder_scratch), so the version and what tells experiments apart stay."""
    version = logger.version
    number = version if isinstance(version, int) else run_number(Path(str(version)))
    version = f"v{number}" if number is not None else str(version)
    name, room = str(logger.name), TRIAL_NAME_CHARS - len(" v10")  # room for 2 digits: one cut for every version
    if len(name) > room:
        head = (room - 1) // 2 + (room - 1) % 2
        name = f"{name[:head]}…{name[len(name) - (room - 1 - head):]}"
    return f"{name} {version}"
