"""Checkpoints written whole or not at all, and a full disk said in one sentence.

A checkpoint is serialized in memory first, so its size is known before a byte is written: a disk without room
for it is refused with a sentence naming the folder and the space needed, and the checkpoints already there stay
as they were. It is then written to a temporary file beside its final name and renamed over it, so a kill or a
disk that fills mid-write never leaves a truncated last.ckpt (measured before: 536,576 of 1,000,387 bytes).
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
    """Lightning's torch.save-based checkpoint IO, made atomic and explicit about a full disk."""

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
