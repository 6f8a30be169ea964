"""What a run folder is: the one place that knows its layout, and how far its fit got.

    runs/<experiment>/version_N/       a run (N counts up from 0 per experiment; Lightning's TensorBoard logger picks it)
        config.yaml                    the resolved config of its fit (LightningCLI's SaveConfigCallback)
        checkpoints/last.ckpt          written every epoch: what `fit --ckpt_path last` resumes and `bundle --run` restores
        checkpoints/epochNNN.ckpt      the best by val/top1
        bundle/                        the fit-end chain's verified deploy bundle
        <command>/                     validate / test / predict with the run's checkpoint: their files

The CLI (resume, `bundle --run`, where a command's logs go, the config migration's wording) and `python -m
deploy.publish` ask this module instead of parsing paths or checkpoints themselves. It imports nothing beyond the
standard library (torch only inside `read_checkpoint`), so deploy/ stays importable on a device without torch.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
from pathlib import Path
from typing import Any, Optional

RUN_NAME = re.compile(r"version_(\d+)")
CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
BUNDLE = "bundle"


def run_number(run: Path) -> Optional[int]:
    """N of a folder named version_N, else None."""
    match = RUN_NAME.fullmatch(Path(run).name)
    return int(match.group(1)) if match else None


def runs_of(experiment_dir: Path) -> list[Path]:
    """The run folders of one experiment (runs/<experiment>), oldest (lowest N) first."""
    experiment_dir = Path(experiment_dir)
    found = [p for p in experiment_dir.iterdir() if run_number(p) is not None] if experiment_dir.is_dir() else []
    return sorted(found, key=run_number)


def newest_run(experiment_dir: Path) -> Optional[Path]:
    """The highest version_N of an experiment, whatever it holds; None where it has none."""
    runs = runs_of(experiment_dir)
    return runs[-1] if runs else None


def config_file(run: Path) -> Path:
    return Path(run) / CONFIG


def last_checkpoint(run: Path) -> Path:
    return Path(run) / CHECKPOINTS / LAST


def bundle_dir(run: Path) -> Path:
    return Path(run) / BUNDLE


def checkpoints(run: Path) -> list[Path]:
    """Every checkpoint file of a run, by name."""
    return sorted((Path(run) / CHECKPOINTS).glob("*.ckpt"))


def newest_resumable_run(experiment_dir: Path) -> Optional[Path]:
    """`fit --ckpt_path last` continues the newest run of this experiment that has a last.ckpt, in place."""
    resumable = [run for run in runs_of(experiment_dir) if last_checkpoint(run).is_file()]
    return resumable[-1] if resumable else None


def run_of_checkpoint(ckpt: Path) -> Optional[Path]:
    """The run folder (…/version_N) a checkpoint under …/version_N/checkpoints/ belongs to, else None."""
    ckpt = Path(ckpt)
    if ckpt.parent.name == CHECKPOINTS and run_number(ckpt.parent.parent) is not None:
        return ckpt.parent.parent
    return None


def is_run_config(path: Path) -> bool:
    """A run's own config.yaml (…/version_N/config.yaml)."""
    path = Path(path)
    return path.name == CONFIG and run_number(path.parent) is not None


class UnreadableCheckpoint(ValueError):
    """A checkpoint file that cannot be read as one (not torch.save's format, cut short, or holding objects other
    than tensors and plain values); the message names the file."""


def read_checkpoint(path: Any, hint: str = "pass a .ckpt written by this project (--ckpt_path)",
                    mmap: bool = True) -> dict[str, Any]:
    """A checkpoint's content as plain data, or UnreadableCheckpoint: one sentence naming the file, why, and `hint`.

    weights_only: a pickle that names any function or class (a `__reduce__` calling os.system) is refused by torch's
    unpickler before anything of it runs. mmap: reading the hyperparameters of a large checkpoint costs no copy (off
    for weights that training goes on to update in place)."""
    import torch

    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"  # torch.save's format since torch 1.6: a zip archive
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipped)
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL ([\w.]+)", str(exc))
        why = (f"it holds Python code ({named.group(1)}), not only tensors and plain values, and is never loaded "
               "(it could run that code)" if named else "it is not a PyTorch checkpoint")
        raise UnreadableCheckpoint(f"cannot read checkpoint {path}: {why}; {hint}") from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.EACCES, errno.EISDIR):
            why = exc.strerror.lower()
        else:
            why = "it is cut short or damaged (an interrupted copy?)" if zipped else "it is not a PyTorch checkpoint"
        raise UnreadableCheckpoint(f"cannot read checkpoint {path}: {why}; {hint}") from None
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise UnreadableCheckpoint(f"cannot read checkpoint {path}: it is a PyTorch file but not a Lightning "
                                   f"checkpoint (no state_dict); {hint}")
    return state


def epochs_done(state: dict[str, Any]) -> int:
    """How many epochs a checkpoint's fit finished: Lightning's loops.fit_loop.epoch_progress.current.processed,
    or `epoch` + 1 for a checkpoint without loop state."""
    progress = ((state.get("loops") or {}).get("fit_loop") or {}).get("epoch_progress") or {}
    return (progress.get("current") or {}).get("processed", state.get("epoch", -1) + 1)
