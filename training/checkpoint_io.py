"""Checkpoints written whole or not at all, a full disk said in one sentence, and checkpoints read as data only.

A checkpoint is serialized in memory first, so its size is known before a byte is written: a disk without room
for it is refused with a sentence naming the folder and the space needed, and the checkpoints already there stay
as they were. It is then written to a temporary file beside its final name and renamed over it, so a kill or a
disk that fills mid-write never leaves a truncated last.ckpt (measured before: 536,576 of 1,000,387 bytes).

A checkpoint is read with `torch.load(weights_only=True)` only, by this project's code and by Lightning's (through
AtomicCheckpointIO): tensors, numbers, strings and containers come back, no other object is made and no code runs.
A file that is not one (random bytes, cut short, a pickle that names a function) is one sentence naming it.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
from typing import Any, Optional

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from deploy.atomic import atomic_write_bytes
from deploy.run_folder import UnreadableCheckpoint, read_checkpoint  # noqa: F401 (read here and by Lightning)


class DiskFull(OSError):
    """No room for a file the fit must write; the message names the folder and the space needed."""


def disk_full(folder: str, needed: int, writing: str) -> DiskFull:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = 0
    error = DiskFull(f"no space left on the disk holding {folder}: {writing} needs {_size(needed)} and {_size(free)} "
                     "is free; the checkpoints already written are kept: free space and resume with --ckpt_path last")
    error.errno = errno.ENOSPC
    return error


def _size(count: int) -> str:
    return f"{count / 1e6:,.1f} MB" if count >= 10**7 else f"{count / 1e3:,.0f} kB"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save-based checkpoint IO, made atomic and explicit about a full disk; it reads checkpoints
    as data only (read_checkpoint), whatever a caller or TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD asks."""

    def load_checkpoint(self, path: Any, map_location: Optional[Any] = None, weights_only: Optional[bool] = None) -> dict[str, Any]:
        state = read_checkpoint(path, mmap=False)
        if map_location is not None and not callable(map_location):
            from lightning_fabric.utilities.apply_func import move_data_to_device

            state = move_data_to_device(state, torch.device(map_location) if isinstance(map_location, str) else map_location)
        return state

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getbuffer()
        if shutil.disk_usage(folder).free < len(data):
            raise disk_full(folder, len(data), os.path.basename(path))
        try:
            atomic_write_bytes(path, data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full(folder, len(data), os.path.basename(path)) from None
            raise
