"""The HPARAMS tab as the experiment's leaderboard: the settings a person varies, the metrics that rank runs."""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

# The HPARAMS tab as the experiment's leaderboard. TensorBoard's hparams plugin shows, without a click, the first
# five hparam columns flagged `differs` (sorted by name) and the first five metrics in the order the experiment
# lists them; everything else is one click away under "Hyperparameters"/"Metrics" in its left pane.
HEADLINE_HPARAMS = ("backbone", "lr", "weight_decay", "batch_size", "max_epochs")
# (scalar tag, column title): the plugin shows each run's last value of the tag; a run that never logged it shows
# an empty cell, never a placeholder. The bundle/ tags are logged by callbacks.DeployBundle at fit end.
# The most wanted first: beside the five headline settings, test top-1 and the INT8 Δ start on screen at 1600 px.
LEADERBOARD_METRICS = (
    ("test/top1", "test top-1"),
    ("bundle/int8_delta_top1_pt", "INT8 Δtop-1 pt"),
    ("bundle/cpu_latency_ms", "best CPU ms"),
    ("bundle/size_mb", "bundle MB"),
    ("val/best_top1", "best val top-1"),
    ("bundle/params", "params"),
)



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
    if isinstance(value, int) and not isinstance(value, bool):
        # the plugin prints every number with three decimals (64.000): a count reads as itself only as text
        return str(value)
    if isinstance(value, (bool, float, str)):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)  # a list, or an augment pipeline, as one cell


def write_leaderboard_session(logger: TensorBoardLogger, params: dict[str, Any]) -> None:
    """The hparams plugin's experiment and session-start summaries, as Lightning's `log_hyperparams(params,
    metrics)` writes them, but without logging a placeholder value for each metric (a run that never finished an
    epoch would show best top-1 0.0), with column titles, the headline columns, and a trial name that fits its
    10em column."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    infos = []
    for name, value in params.items():
        kind = api_pb2.DATA_TYPE_BOOL if isinstance(value, bool) else (
            api_pb2.DATA_TYPE_FLOAT64 if isinstance(value, (int, float)) else api_pb2.DATA_TYPE_STRING)
        infos.append(api_pb2.HParamInfo(name=name, type=kind, differs=name in HEADLINE_HPARAMS))
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=title) for tag, title in LEADERBOARD_METRICS]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics, time_created_secs=time.time())
    start = plugin_data_pb2.SessionStartInfo(group_name=trial_name(logger), start_time_secs=time.time())
    for name, value in params.items():
        field = "bool_value" if isinstance(value, bool) else "number_value" if isinstance(value, (int, float)) else "string_value"
        setattr(start.hparams[name], field, value)
    _write_hparams_summary(logger, "experiment", plugin_data_pb2.HParamsPluginData(experiment=experiment))
    _write_hparams_summary(logger, "session_start_info", plugin_data_pb2.HParamsPluginData(session_start_info=start))


def write_leaderboard_end(logger: TensorBoardLogger, failed: bool) -> None:
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    status = api_pb2.STATUS_FAILURE if failed else api_pb2.STATUS_SUCCESS
    end = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    _write_hparams_summary(logger, "session_end_info", plugin_data_pb2.HParamsPluginData(session_end_info=end))


def trial_name(logger: TensorBoardLogger) -> str:
    """`v3 quickstart` for runs/quickstart/version_3: the version first, where a cut-off name still tells runs apart."""
    version = logger.version
    version = f"v{version}" if isinstance(version, int) else str(version).replace("version_", "v")
    return f"{version} {logger.name}"


def _write_hparams_summary(logger: TensorBoardLogger, kind: str, data: Any) -> None:
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import metadata

    summary = Summary(value=[Summary.Value(tag=f"_hparams_/{kind}", metadata=metadata.create_summary_metadata(data))])
    logger.experiment._get_file_writer().add_summary(summary)  # the writer Lightning's log_hyperparams uses
