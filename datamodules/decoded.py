"""The decoded store: every image of a folder decoded once, resized to the data's image_size, kept as uint8.

A JPEG costs about 5 ms to decode and 1-3 ms to resize at 224 px; a row of this store costs a memory copy. The first
fit over a folder builds it in the pass that already decodes every file (to check it and to compute mean/std); later
epochs and later fits read rows of one memory-mapped [N, H, W, 3] array, which every loader worker shares through
the page cache. It is fingerprinted like the mean/std cache (each file's path, size and mtime, the size, the
interpolation): any change builds a new one, and the older store of the same folder is removed.

The stored image is exactly what the eval transform's first step (the resize) makes of the file, so evaluation
from the store is bit-identical to evaluation from the file; train augmentation starts from it too (a
RandomResizedCrop crops the stored image_size picture, not the camera original).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from typing import Optional, Sequence

import numpy as np

from datamodules.rundir import write_text_atomic
from datamodules.stats import PixelSums

VERSION = 1


def store_prefix(cache_dir: str, root: str, size: Sequence[int], interpolation: str) -> str:
    """What a folder's stores at one size share: a new store replaces the one before it (the files changed)."""
    tag = hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:12]
    return os.path.join(cache_dir, f"decoded-{tag}-{int(size[0])}x{int(size[1])}-{interpolation}")


class DecodedStore:
    """One folder's store at one size: ``images.npy`` (rows in ``paths`` order) and ``index.json`` (written last)."""

    def __init__(self, cache_dir: str, root: str, key: str, paths: Sequence[str], size: Sequence[int],
                 interpolation: str):
        self.prefix = store_prefix(cache_dir, root, size, interpolation)
        self.dir = f"{self.prefix}-{key}"
        self.root = root
        self.file = os.path.join(self.dir, "images.npy")
        self.index_file = os.path.join(self.dir, "index.json")
        self.paths = list(paths)
        self.size = [int(size[0]), int(size[1])]
        self.reasons: dict[str, str] = {}
        self._writing: Optional[np.memmap] = None
        self._tmp: Optional[str] = None

    @property
    def nbytes(self) -> int:
        return len(self.paths) * self.size[0] * self.size[1] * 3

    # --- reading ---------------------------------------------------------------------------------------------------
    def load(self) -> bool:
        """True when a complete store for exactly these files is there (its reasons then say which files are bad)."""
        try:
            with open(self.index_file) as f:
                index = json.load(f)
            shape = np.load(self.file, mmap_mode="r").shape
        except (OSError, ValueError):
            return False
        if index.get("version") != VERSION or index.get("count") != len(self.paths) or \
                tuple(shape) != (len(self.paths), *self.size, 3):
            return False
        self.reasons = {self.paths[int(row)]: reason for row, (_, reason) in index.get("excluded", {}).items()}
        return True

    def sum_rows(self, rows: Sequence[int], chunk: int = 1024) -> PixelSums:
        """Pixel sums over the given rows (mean/std of a split), read in chunks."""
        images = np.load(self.file, mmap_mode="r")
        sums = PixelSums()
        rows = np.asarray(rows, dtype=np.int64)
        for start in range(0, len(rows), chunk):
            sums.add_images(np.asarray(images[np.sort(rows[start:start + chunk])]))
        return sums

    # --- writing ---------------------------------------------------------------------------------------------------
    def begin(self) -> None:
        """Reserve the whole file up front: a disk that fills is one sentence now, never a crash mid-write."""
        os.makedirs(self.dir, exist_ok=True)
        free = shutil.disk_usage(self.dir).free
        margin = 64 * 2**20
        if self.nbytes + margin > free:
            raise ValueError(
                f"the decoded image store for {self.root} needs {self.nbytes / 1e9:.2f} GB in {self.dir} and only "
                f"{free / 1e9:.2f} GB is free there; free space, set data.cache_dir to a larger disk, or set "
                "data.decoded_cache: false to decode the files every epoch instead")
        self._tmp = os.path.join(self.dir, f".images-{os.getpid()}.npy")
        shape = (len(self.paths), *self.size, 3)
        self._writing = np.lib.format.open_memmap(self._tmp, mode="w+", dtype=np.uint8, shape=shape)
        try:
            with open(self._tmp, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.path.getsize(self._tmp))
        except OSError as exc:
            self.abandon()
            raise ValueError(f"the decoded image store for {self.root} ({self.nbytes / 1e9:.2f} GB) cannot be "
                             f"written in {self.dir} ({exc.strerror}); free space there, set data.cache_dir to "
                             "another disk, or set data.decoded_cache: false") from None
        except AttributeError:  # no posix_fallocate (macOS): the free-space check above has to do
            pass

    def put(self, row: int, image: np.ndarray) -> None:
        """Store one image already resized to ``size`` (called from the decode threads, one row each)."""
        self._writing[row] = image

    def finish(self, reasons: dict[str, str]) -> None:
        """Make the store visible: the array under its final name, then the index that marks it complete."""
        self._writing.flush()
        self._writing = None
        os.replace(self._tmp, self.file)
        self.reasons = dict(reasons)
        row = {p: i for i, p in enumerate(self.paths)}
        excluded = {row[p]: [os.path.relpath(p, self.root), r] for p, r in reasons.items()}
        write_text_atomic(self.index_file, json.dumps({"version": VERSION, "count": len(self.paths),
                                                       "size": self.size, "bytes": self.nbytes,
                                                       "excluded": excluded}))
        for other in glob.glob(glob.escape(self.prefix) + "-*"):
            if other != self.dir:  # the same folder's store at this size, for files that changed since
                shutil.rmtree(other, ignore_errors=True)

    def abandon(self) -> None:
        self._writing = None
        if self._tmp and os.path.exists(self._tmp):
            os.unlink(self._tmp)
