"""A config written by an older edgecls (a run's config.yaml, its checkpoints' hyperparameters) read with today's
keys: data sources by name with data.root/download/synthetic/source_args beside them became DataSource classes with
their own init_args; model.optimizer/lr/weight_decay/betas/momentum and model.scheduler/T_max/eta_min/pct_start
became the optimizer and schedule callables model.optimizer and model.lr_scheduler (class_path + init_args); the
augment presets light, s1 and s2 were renamed.

Each old setting is rewritten to the one that trains the same way (the old defaults filled in where the new classes
default otherwise, e.g. AdamW's weight_decay); a setting with no counterpart is refused in one sentence saying what
to write instead."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from cli.errors import UserError
from deploy.run_folder import is_run_config

def yaml_load(text: str) -> dict[str, Any]:
    """A YAML document as a dict ({} for an empty one)."""
    import yaml

    return yaml.safe_load(text) or {}


# The model settings of the optimizer and schedule before they were callables, with their defaults then.
OLD_MODEL_DEFAULTS = {"lr": 1e-3, "weight_decay": 1e-4, "betas": [0.9, 0.999], "momentum": 0.9,
                      "scheduler": "cosine", "T_max": None, "eta_min": 0.0, "pct_start": 0.3}
OLD_OPTIMIZERS = ("adamw", "sgd")
OLD_SCHEDULES = {"cosine": "lightning_modules.schedules.CosineAnnealingLR",
                 "onecycle": "lightning_modules.schedules.OneCycleLR", "none": None}
# The data settings that belonged to one source or another before sources were classes.
OLD_DATA_KEYS = ("root", "download", "synthetic", "source_args")
# Where each old key went (what migrate() writes it as), as today's command line writes it.
OLD_OPTIONS = {
    **{f"model.{k}": f"--model.optimizer.{k}" for k in ("lr", "weight_decay", "betas", "momentum")},
    "model.scheduler": "--model.lr_scheduler (a class_path, e.g. " + ", ".join(filter(None, OLD_SCHEDULES.values())) + ")",
    **{f"model.{k}": f"--model.lr_scheduler.{k}" for k in ("T_max", "eta_min", "pct_start")},
    "data.root": "--data.source.root (of ImageFolderSource, Cifar10Source, Cifar100Source)",
    "data.download": "--data.source.download (of Cifar10Source, Cifar100Source)",
    "data.synthetic": "--data.source SyntheticSource and its settings (--data.source.classes, --data.source.count, ...)",
    "data.source_args": "--data.source.<setting> (the data.source class's own settings)",
}


def _builtin_sources() -> dict[str, type]:
    """Old source name (each class's `name`) -> its class, for the classes datamodules.sources ships."""
    from datamodules import sources

    classes = (getattr(sources, n) for n in sources.__all__)
    return {cls.name: cls for cls in classes if isinstance(cls, type) and issubclass(cls, sources.DataSource)
            and cls.name}


def todays_option(option: str) -> Optional[str]:
    """`--model.lr` (a key of an older edgecls) -> `--model.optimizer.lr`, what to write today; None for another."""
    return OLD_OPTIONS.get(option.split("=", 1)[0].removeprefix("--"))


def todays_value(key: str, value: Any) -> Optional[str]:
    """An older edgecls's name for a value (`data.source digits`, `model.optimizer adamw`) -> today's; else None."""
    if not isinstance(value, str):
        return None
    if key == "data.source" and value in _builtin_sources():
        return _builtin_sources()[value].__name__
    if key == "model.optimizer" and value in OLD_OPTIMIZERS:
        return migrate_model({"optimizer": value}, "")["optimizer"]["class_path"]
    if key == "model.lr_scheduler" and OLD_SCHEDULES.get(value):
        return OLD_SCHEDULES[value]
    return None


def model_is_old(model: Any) -> bool:
    return isinstance(model, dict) and (model.get("optimizer") in OLD_OPTIMIZERS
                                        or any(k in model for k in OLD_MODEL_DEFAULTS))


def data_is_old(data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    source = data.get("source")
    return any(k in data for k in OLD_DATA_KEYS) or (isinstance(source, str) and source in _builtin_sources())


def is_old(config: Any) -> bool:
    return isinstance(config, dict) and (model_is_old(config.get("model")) or data_is_old(config.get("data")))


def _call(class_path: Optional[str], init_args: dict[str, Any]) -> Optional[dict[str, Any]]:
    return None if class_path is None else {"class_path": class_path, "init_args": init_args}


def migrate_model(model: dict[str, Any], where: str) -> dict[str, Any]:
    """The model section (or a checkpoint's model hyperparameters) with the optimizer and schedule as callables."""
    new = {k: v for k, v in model.items() if k not in OLD_MODEL_DEFAULTS and k != "optimizer"}
    old = {**OLD_MODEL_DEFAULTS, **{k: v for k, v in model.items() if k in OLD_MODEL_DEFAULTS}}
    name = model.get("optimizer", "adamw")
    if name == "adamw":
        new["optimizer"] = _call("torch.optim.AdamW", {"lr": old["lr"], "weight_decay": old["weight_decay"],
                                                       "betas": list(old["betas"])})
    elif name == "sgd":
        new["optimizer"] = _call("torch.optim.SGD", {"lr": old["lr"], "weight_decay": old["weight_decay"],
                                                     "momentum": old["momentum"], "nesterov": old["momentum"] > 0})
    else:
        new["optimizer"] = name  # already a callable's config: only the schedule keys were old
    schedule = old["scheduler"]
    if schedule not in OLD_SCHEDULES:
        raise UserError(f"{where}: model.scheduler {schedule!r} has no counterpart; write model.lr_scheduler with a "
                        "class_path (e.g. lightning_modules.schedules.CosineAnnealingLR) instead")
    args: dict[str, Any] = {}
    if schedule == "cosine":
        args = {"eta_min": old["eta_min"], **({"T_max": old["T_max"]} if old["T_max"] is not None else {})}
    elif schedule == "onecycle":
        args = {"pct_start": old["pct_start"]}
    new["lr_scheduler"] = _call(OLD_SCHEDULES[schedule], args)
    return new


def migrate_data(data: dict[str, Any], where: str) -> dict[str, Any]:
    """The data section with the source as a class and its own settings as its init_args."""
    from datamodules.presets import PRESET_ALIASES

    new = {k: v for k, v in data.items() if k not in OLD_DATA_KEYS}
    source = data.get("source", "digits")
    builtins = _builtin_sources()
    if isinstance(source, str) and source not in builtins:
        raise UserError(
            f"{where}: data.source {source!r} was a source registered with register_source, which edgecls no longer "
            "has; write data.source as {class_path: <your module>.<YourSource>, init_args: <what data.source_args "
            "held>} with a DataSource subclass (see datamodules/sources/) and remove data.source_args")
    if isinstance(source, str) and source in builtins:
        init_args: dict[str, Any] = {}
        if source in ("imagefolder", "cifar10", "cifar100") and data.get("root") is not None:
            init_args["root"] = data["root"]
        if source in ("cifar10", "cifar100"):
            init_args["download"] = bool(data.get("download") or False)
        if source == "synthetic":
            init_args.update(data.get("synthetic") or {})
        new["source"] = _call(f"datamodules.sources.{builtins[source].__name__}", init_args)
    augment = data.get("augment")
    if isinstance(augment, str) and augment in PRESET_ALIASES:
        new["augment"] = PRESET_ALIASES[augment]
    return new


def migrate(config: dict[str, Any], where: str) -> dict[str, Any]:
    """A whole config (the `fit` section's keys at the top) in today's keys; unchanged when it has no old key."""
    new = dict(config)
    if model_is_old(config.get("model")):
        new["model"] = migrate_model(config["model"], where)
    if data_is_old(config.get("data")):
        new["data"] = migrate_data(config["data"], where)  # with its preset's name; alone, an old one only warns
    return new


def _shown(call: Any) -> str:
    if not isinstance(call, dict):
        return str(call)
    args = ", ".join(f"{k}={v}" for k, v in (call.get("init_args") or {}).items())
    return f"{str(call['class_path']).rsplit('.', 1)[-1]}({args})"


def read_as(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The new keys an old config was read as, for the one line that says so."""
    shown = []
    for section, keys in (("data", ("source", "augment")), ("model", ("optimizer", "lr_scheduler"))):
        before, after = old.get(section) or {}, new.get(section) or {}
        for key in keys:
            if key in after and after.get(key) != before.get(key):
                value = after[key]
                shown.append(f"{section}.{key}: {_shown(value) if isinstance(value, dict) else value}")
    return ", ".join(shown)


def _describe(path: Path) -> str:
    if is_run_config(path):
        return f"config.yaml of {path.parent}"
    return str(path)


def migrate_config_arguments(argv: list[str]) -> Optional[list[str]]:
    """`--config <file>` arguments whose file uses old keys, replaced by the file's content in today's keys (a YAML
    string, which --config also takes), each announced in one line on stderr. A run's config.yaml carries its
    experiment name in the run's folder name, so it is set from there where the file left it unset. None: no file
    had old keys."""
    import yaml

    changed = False
    out = [part for a in argv for part in (a.split("=", 1) if a.startswith("--config=") else [a])]
    for i, arg in enumerate(list(out[:-1])):
        if arg not in ("--config", "-c") or not Path(out[i + 1]).is_file():
            continue
        path = Path(out[i + 1])
        try:
            config = yaml_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue  # jsonargparse says what is wrong with the file
        if not is_old(config):
            continue
        where = _describe(path)
        new = migrate(config, where)
        if not new.get("experiment"):
            new["experiment"] = path.parent.parent.name if where.startswith("config.yaml of") else path.stem
        print(f"{where} uses the keys of an older edgecls; read as {read_as(config, new)}", file=sys.stderr, flush=True)
        out[i + 1] = yaml.safe_dump(new, sort_keys=False)
        changed = True
    return out if changed else None

