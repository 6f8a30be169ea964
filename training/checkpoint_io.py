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
import pickle
import re
import shutil
from typing import Any, Optional

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from deploy.atomic import atomic_write_bytes


class DiskFull(OSError):
    """No room for a file the fit must write; the message names the folder and the space needed."""


class UnreadableCheckpoint(ValueError):
    """A checkpoint file that cannot be read as one (not torch.save's format, cut short, or holding objects other
    than tensors and plain values); the message names the file."""


def read_checkpoint(path: Any, hint: str = "pass a .ckpt written by this project (--ckpt_path)",
                    mmap: bool = True) -> dict[str, Any]:
    """A checkpoint's content as plain data, or UnreadableCheckpoint: one sentence naming the file, why, and `hint`.

    weights_only: a pickle that names any function or class (a `__reduce__` calling os.system) is refused by torch's
    unpickler before anything of it runs. mmap: reading the hyperparameters of a large checkpoint costs no copy (off
    for weights that training goes on to update in place)."""
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
