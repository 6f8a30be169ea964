"""How the CLI tells a user's mistake from a bug (the sentences themselves: cli/sentences.py); what one command did
so far, which that depends on."""

from __future__ import annotations

import errno
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pytorch_lightning import Callback
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from datamodules.workers import LoaderStalled
from training.checkpoint_io import DiskFull, UnreadableCheckpoint

# How a user's mistake is told from a bug. Our data, model and callback code reports bad YAML values, missing
# folders and unusable images as ValueError / OSError / RuntimeError with one good sentence, from many places,
# and Lightning reports bad trainer settings as MisconfigurationException. Raised while the command is being
# parsed, built and set up (before the first sanity-check, train, val, test or predict batch), these are the
# user's to fix; raised later, in the loops, they are bugs and keep their traceback. TypeError, KeyError,
# AttributeError and friends are bugs wherever they come from.
SETUP_ERRORS = (ValueError, OSError, RuntimeError, MisconfigurationException)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # wherever raised: the disk, not the code, is what to fix


class UserError(Exception):
    """A mistake the user can fix (a refused resume, a missing checkpoint): one sentence, exit status 2."""


@dataclass
class Invocation:
    """What one command did so far, as its error handling needs it: it outlives a failed EdgeCLI.__init__."""

    loops_started: bool = False  # a sanity-check / train / val / test / predict loop began
    stepped: bool = False  # a first train (or test, val, predict) batch began
    new_run_dir: Optional[Path] = None  # the run folder this command creates (None: it already existed)
    new_parents: list[Path] = field(default_factory=list)  # runs/ and runs/<experiment>/ where created now
    fit_end_failures: list[str] = field(default_factory=list)
    parsers: list[Any] = field(default_factory=list)  # every parser the CLI made, to name a misspelt option's match

    def discard_new_run(self) -> None:
        """Remove the run folder this command created before training anything: it holds nothing of value
        (the resolved config, split lists, an empty event file). A folder that existed before is never touched."""
        run = self.new_run_dir
        if run is None or self.stepped or not run.is_dir() or any(run.rglob("*.ckpt")):
            return
        shutil.rmtree(run, ignore_errors=True)
        for parent in self.new_parents:
            try:
                parent.rmdir()  # only when empty: another command may have started a run there meanwhile
            except OSError:
                pass


class LoopStarted(Callback):
    """Marks the end of set-up (see SETUP_ERRORS) and the first batch (a run that never got there is discarded)."""

    def __init__(self, invocation: Invocation) -> None:
        self.invocation = invocation

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self.invocation.loops_started = True

    def _started(self, trainer, *args) -> None:
        self.invocation.loops_started = True

    on_train_start = on_validation_start = on_test_start = on_predict_start = _started

    def _stepped(self, trainer, *args) -> None:
        if not trainer.sanity_checking:
            self.invocation.stepped = True

    on_train_batch_start = on_validation_batch_start = on_test_batch_start = on_predict_batch_start = _stepped


def is_user_error(exc: BaseException, invocation: Any) -> bool:
    from argparse import ArgumentError

    if isinstance(exc, (UserError, ArgumentError, LoaderStalled, DiskFull, UnreadableCheckpoint)):  # said in a sentence
        return True
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return True
    if allocation_failed(exc) is not None:  # the settings' size, not the code, is what to change
        return True
    return isinstance(exc, SETUP_ERRORS) and not invocation.loops_started


# How the allocators say they failed: numpy (a MemoryError), torch's CPU and CUDA allocators, OpenCV.
ALLOCATION_FAILED = re.compile(r"Unable to allocate ([\d.]+ \w+)|can't allocate memory: you tried to allocate (\d+) bytes"
                               r"|CUDA out of memory\. Tried to allocate ([\d.]+ \w+)|Insufficient memory\) Failed to "
                               r"allocate (\d+) bytes")


def allocation_failed(exc: BaseException) -> Optional[str]:
    """The size an allocation that failed asked for ("11.3 GiB"; "" where the message has none), or None when `exc`
    is not an allocation failure."""
    match = ALLOCATION_FAILED.search(str(exc))
    if match is None:
        return "" if isinstance(exc, MemoryError) else None
    size = next(g for g in match.groups() if g is not None)
    return f"{int(size) / 1e9:,.1f} GB" if size.isdigit() else size
