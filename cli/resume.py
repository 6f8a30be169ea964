"""Resuming a run in place (`fit --ckpt_path last` or a run's checkpoint): which run, and the checks that refuse,
before anything is written, a resume that would corrupt it; and `bundle --run`, the fit-end chain of a finished run
again."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional


from cli.errors import UserError
from cli.old_configs import migrate, migrate_model, model_is_old, yaml_load
from deploy.run_folder import checkpoints, config_file, epochs_done, last_checkpoint, run_of_checkpoint
from training.checkpoint_io import UnreadableCheckpoint, read_checkpoint

# Trainer settings that size a one-cycle schedule (Lightning's estimated_stepping_batches): the schedule is built
# once, for the whole fit, and a resume that changes any of them steps past its end.
ONECYCLE_LENGTH_KEYS = ("max_epochs", "max_steps", "limit_train_batches", "accumulate_grad_batches", "devices", "num_nodes")


def check_resume(run: Path, ckpt: Path, now: dict[str, Any]) -> None:
    """Refuse, before anything is written, a resume that would corrupt `run`: one that has nothing left to train,
    one with other model/data settings than the run's, or one that would stretch a one-cycle schedule."""
    where = os.path.relpath(run)
    saved = migrate(yaml_load(config_file(run).read_text()), f"config.yaml of {where}")
    state = read_checkpoint(ckpt, "resume from another checkpoint of the run (--ckpt_path <file>)")
    trainer_saved, trainer_now = saved.get("trainer") or {}, now.get("trainer") or {}

    # A run is finished by its own config's max_epochs. A step cap (max_steps) is how a run is trained in pieces,
    # so a run stopped by max_steps resumes, unless max_steps was its only limit; a one-cycle schedule, whose
    # length depends on max_steps, is refused below.
    max_epochs, max_steps = trainer_saved.get("max_epochs"), trainer_saved.get("max_steps")
    if max_epochs is None and max_steps in (None, -1):
        max_epochs = 1000  # Lightning's default when neither is set
    # How far the run got is its last.ckpt's to say, whichever of its checkpoints is given: resuming a finished
    # run from its best checkpoint is refused as resuming it from last is.
    newest = last_checkpoint(run)
    if newest.is_file() and newest.resolve() != Path(ckpt).resolve():
        try:
            state = {**state, **read_checkpoint(newest)}
        except UnreadableCheckpoint:  # the given checkpoint's own progress decides
            pass
    if max_epochs not in (None, -1) and epochs_done(state) >= max_epochs:
        raise UserError(
            f"{where} already finished its {max_epochs} epochs (trainer.max_epochs in its config.yaml), so there "
            "is nothing to resume; to train longer, start a new run: drop --ckpt_path and set --trainer.max_epochs")
    if max_epochs is None and max_steps not in (None, -1) and state.get("global_step", 0) >= max_steps:
        raise UserError(
            f"{where} already finished its {max_steps} steps (trainer.max_steps in its config.yaml), so there is "
            "nothing to resume; to train longer, start a new run: drop --ckpt_path and set --trainer.max_steps")

    differ = [k for section in ("model", "data") for k in differing_keys(saved.get(section), now.get(section), section)]
    if differ:
        shown = ", ".join(f"{k} ({_value(saved, k)} in the run, {_value(now, k)} now)" for k in differ[:5])
        raise UserError(f"cannot resume {where}: {shown} differ from its config.yaml; resume with the run's own "
                        "values, or start a new run without --ckpt_path")

    schedule = (saved.get("model") or {}).get("lr_scheduler") or {}
    if str(schedule.get("class_path", "") if isinstance(schedule, dict) else schedule).endswith("OneCycleLR"):
        changed = [k for k in ONECYCLE_LENGTH_KEYS if trainer_saved.get(k) != trainer_now.get(k)]
        if changed:
            flags = " ".join(f"--trainer.{k} {trainer_saved.get(k)}" for k in changed)
            shown = ", ".join(f"trainer.{k} {trainer_saved.get(k)} (now {trainer_now.get(k)})" for k in changed)
            raise UserError(f"cannot resume {where}: its one-cycle learning-rate schedule was sized for {shown} and "
                            f"cannot be stretched or cut; resume with {flags}, or start a new run without --ckpt_path")


def differing_keys(saved: Any, now: Any, prefix: str) -> list[str]:
    """Dotted keys whose values differ. A key on one side only is a parameter added to or removed from the code
    since the run, and carries its default: not a difference."""
    if isinstance(saved, dict) and isinstance(now, dict):
        return [k for key in saved if key in now for k in differing_keys(saved[key], now[key], f"{prefix}.{key}")]
    return [] if saved == now else [prefix]


def _value(config: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


# What a checkpoint must share with the config it is loaded under: its network (backbone and its arguments, the
# number of classes) and the data settings that shape the input the network learned from; in a fit, which restores
# the optimizer's and the schedule's states, their classes too.
CHECKPOINT_MODEL_KEYS = ("backbone", "backbone_args", "num_classes")
CHECKPOINT_DATA_KEYS = ("source", "image_size", "crop_size", "interpolation", "mean_std")
CHECKPOINT_CLASS_KEYS = ("optimizer", "lr_scheduler")


def check_checkpoint_matches(ckpt: Path, model: dict[str, Any], data: Any) -> None:
    """Refuse, before anything is written, a checkpoint whose network, classes or input differ from this config
    (`model`: the command's model settings, with optimizer and lr_scheduler where their classes must match too;
    `data`: the DataModule's DataFacts): one sentence naming what differs. What the checkpoint says is only
    compared: the model is built from the config, and a class path or module a checkpoint names is never imported."""
    state = read_checkpoint(ckpt)
    saved_model = state.get("hyper_parameters") or {}
    if model_is_old(saved_model):
        saved_model = migrate_model(dict(saved_model), str(ckpt))
    saved_data = state.get("datamodule_hyper_parameters") or {}
    differ = [(f"model.{k}", saved_model[k], model.get(k)) for k in CHECKPOINT_MODEL_KEYS
              if k in saved_model and k in model and _normal(saved_model[k]) != _normal(model[k])]
    differ += [(f"model.{k}.class_path", _class_path(saved_model.get(k)), _class_path(model[k]))
               for k in CHECKPOINT_CLASS_KEYS
               if k in model and k in saved_model and _class_path(saved_model[k]) != _class_path(model[k])]
    # The checkpoint records the data settings as they were given (an int size, a list); DataFacts holds pairs.
    saved_data = {k: _size_pair(v) if k in ("image_size", "crop_size") else v for k, v in saved_data.items()}
    differ += [(f"data.{k}", saved_data[k], getattr(data, k)) for k in CHECKPOINT_DATA_KEYS
               if k in saved_data and _normal(saved_data[k]) != _normal(getattr(data, k))]
    if differ:
        run = run_of_checkpoint(ckpt)
        config = f"{os.path.relpath(run)}/config.yaml" if run is not None else "<its run>/config.yaml"
        shown = ", ".join(f"{k} ({was} in the checkpoint, {now} here)" for k, was, now in differ[:4])
        raise UserError(f"{ckpt} was trained with other settings than this config: {shown}; use the config it was "
                        f"trained with (--config {config}), or drop --ckpt_path")


def _class_path(value: Any) -> Any:
    """The class a `class_path`/`init_args` setting names (its arguments are plain data, compared elsewhere)."""
    return value.get("class_path") if isinstance(value, dict) else value


def _size_pair(value: Any) -> Any:
    return [value, value] if isinstance(value, int) and not isinstance(value, bool) else value


def _normal(value: Any) -> Any:
    """YAML lists and tuples compared as the same value; an empty or unset dict (backbone_args) as unset."""
    if value is None or value == {}:
        return None
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items() if v is not None}
    return value


def check_finished_training(run: Path) -> Path:
    """`bundle --run`: the run's last.ckpt, which must show the run's max_epochs done (the fit-end chain runs on a
    trained network); an unfinished run is resumed instead, and bundles at its end."""
    last = last_checkpoint(run)
    if not config_file(run).is_file() or not last.is_file():
        raise UserError(f"{run} is not a run folder with config.yaml and checkpoints/last.ckpt; give --run "
                        "runs/<experiment>/version_N of a fit")
    state = read_checkpoint(last, "resume the run with --ckpt_path <another of its checkpoints>, or bundle one of "
                                  "them with --checkpoint")
    max_epochs = (yaml_load(config_file(run).read_text()).get("trainer") or {}).get("max_epochs")
    done = epochs_done(state)
    if max_epochs not in (None, -1) and done < max_epochs:
        raise UserError(f"{run} has trained {done} of its {max_epochs} epochs, so there is nothing to bundle yet; "
                        "finish it with `python main.py fit --config <its YAML> --ckpt_path last`, which bundles at "
                        "its end")
    return last


def bundle_arguments(argv: list[str]) -> tuple[Path, Optional[Path], list[str]]:
    """`bundle --run runs/<experiment>/version_N [fit settings]`: the fit-end chain (ONNX, INT8, TensorRT, the bundle)
    again, from the run's best checkpoint and its config.yaml, into its bundle/: after an interrupt during the
    fit-end steps, or to re-bundle with other fit-end settings (e.g. --trainer.callbacks). Nothing is trained: the
    fit is restored from its last.ckpt with its epochs done. Returns the run, the checkpoint named with --checkpoint (None: its best) and the `fit`
    arguments that do this."""
    import argparse

    parser = argparse.ArgumentParser(prog="main.py bundle", description=bundle_arguments.__doc__.split(":", 1)[0])
    parser.add_argument("--run", required=True, help="the run folder: runs/<experiment>/version_N")
    parser.add_argument("--checkpoint", default=None,
                        help="bundle this checkpoint of the run instead of its best (e.g. checkpoints/last.ckpt)")
    known, rest = parser.parse_known_args(argv[argv.index("bundle") + 1:])
    run = Path(known.run)
    last = check_finished_training(run)
    named = None
    if known.checkpoint is not None:
        named = Path(known.checkpoint)
        named = named if named.is_file() else run / named
        if not named.is_file() or run_of_checkpoint(named) is None or run_of_checkpoint(named).resolve() != run.resolve():
            raise UserError(f"--checkpoint {known.checkpoint} is not a checkpoint of {run}; give one of "
                            f"{', '.join(p.name for p in checkpoints(run))}")
        read_checkpoint(named, "give another checkpoint of the run (--checkpoint)")
    return run, named, ["fit", "--config", str(config_file(run)), *rest, "--ckpt_path", str(last),
                 "--experiment", run.parent.name]
