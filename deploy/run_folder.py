"""What a run folder is: the one place that knows its layout, and how far its fit got.

    runs/<experiment>/version_N/       a run (N counts up from 0 per experiment; Lightning's TensorBoard logger picks it)
        config.yaml                    the resolved config of its fit (LightningCLI's SaveConfigCallback)
        checkpoints/last.ckpt          written every epoch: what `fit --ckpt_path last` resumes and `bundle --run` restores
        checkpoints/epochNNN.ckpt      the best by val/top1
        bundle/                        the fit-end chain's verified deploy bundle
        <command>/                     validate / test / predict with the run's checkpoint: their files

The CLI (resume, `bundle --run`, where a command's logs go, the config migration's wording) and `python -m
deploy.publish` ask this module instead of parsing paths or checkpoints themselves. It imports nothing beyond the
standard library, so deploy/ stays importable on a device without torch; reading a checkpoint (torch) is
training.checkpoint_io's.
"""

from __future__ import annotations

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


def epochs_done(state: dict[str, Any]) -> int:
    """How many epochs a checkpoint's fit finished: Lightning's loops.fit_loop.epoch_progress.current.processed,
    or `epoch` + 1 for a checkpoint without loop state."""
    progress = ((state.get("loops") or {}).get("fit_loop") or {}).get("epoch_progress") or {}
    return (progress.get("current") or {}).get("processed", state.get("epoch", -1) + 1)
