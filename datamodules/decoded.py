"""The decoded store: every image of a folder decoded once, resized to the data's image_size, kept as uint8.

A JPEG costs about 5 ms to decode and 1-3 ms to resize at 224 px; a row of this store costs a memory copy. The first
fit over a folder builds it in the pass that already decodes every file (to check it and to compute mean/std); later
epochs and later fits read rows of one memory-mapped [N, H, W, 3] array, which every loader worker shares through
the page cache. It is fingerprinted like the mean/std cache (each file's path, size and mtime, the size, the
interpolation): any change builds a new one beside it.

What is read is what was written: each row's xxh3 hash is recorded at build time in the index, and every opening
hashes every row again (one sequential read of the file, which also warms the page cache the first epoch reads
from); a store whose rows differ (a disk error, a copy gone wrong, a file overwritten in place) is said in one line
and built again.

A store in use is never removed or replaced: every process that opens or builds one holds a shared ``flock`` on its
``lock`` file until it exits, and a build removes the older stores of the same folder only where it gets the
exclusive lock (nobody reads them). A build holds an exclusive lock on its ``.images-<pid>.npy`` while it writes, so
the temporary file of a build that was killed is recognised (its lock is free) and removed by the next build.

The stored image is exactly what the eval transform's first step (the resize) makes of the file, so evaluation
from the store is bit-identical to evaluation from the file; train augmentation starts from it too (a
RandomResizedCrop crops the stored image_size picture, not the camera original).
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import mmap
import os
import shutil
from typing import Optional, Sequence

import numpy as np
import xxhash

from datamodules.rundir import write_text_atomic
from datamodules.stats import PixelSums

VERSION = 2  # 2: rows hashed (xxh3_64) in the index
ROW_HASH = "xxh3_64"
LOCK_NAME = "lock"
TMP_PREFIX = ".images-"


class StoreLease:
    """A shared lock on one store, held as long as something that reads the store lives in this process (the
    DataModule's datasets keep it; loader workers open the store while their parent holds it)."""

    def __init__(self, fd: int):
        self._fd: Optional[int] = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()


def _open_locked(folder: str, mode: int) -> Optional[int]:
    """A descriptor of ``folder/lock`` holding ``mode`` (fcntl.LOCK_SH/LOCK_EX, maybe | LOCK_NB), or None where the
    folder is gone or the lock is taken. A lock won on a lock file that was removed meanwhile guards nothing, so the
    file's identity is checked after locking."""
    path = os.path.join(folder, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, mode)
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise FileNotFoundError(path)
    except OSError:  # BlockingIOError: taken; FileNotFoundError: removed while we waited
        os.close(fd)
        return None
    return fd


def _remove_if_unused(folder: str) -> bool:
    """Remove a store folder that no process holds (True), or leave it to its readers (False)."""
    fd = _open_locked(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    if fd is None:
        return not os.path.isdir(folder)
    try:
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        os.close(fd)
    return True


def remove_dead_temporaries(folder: str) -> list[str]:
    """Remove the ``.images-<pid>.npy`` of builds that died (nobody holds its lock); returns the files removed."""
    removed = []
    for tmp in glob.glob(os.path.join(glob.escape(folder), TMP_PREFIX + "*.npy")):
        pid = os.path.basename(tmp)[len(TMP_PREFIX):-len(".npy")]
        if pid.isdigit() and _alive(int(pid)):
            continue  # its lock may not be taken yet (it is created, then locked)
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live build
        else:
            try:
                os.unlink(tmp)
                removed.append(tmp)
            except OSError:
                pass
        finally:
            os.close(fd)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def row_hashes(file: str) -> np.ndarray:
    """xxh3_64 of every row of an [N, ...] .npy, read through a memory map in order (no copy out of the page cache;
    measured as fast as large sequential reads, and it leaves the pages the first epoch reads in the cache)."""
    rows = np.load(file, mmap_mode="r")
    try:
        rows._mmap.madvise(mmap.MADV_SEQUENTIAL)
    except (AttributeError, OSError, ValueError):
        pass  # an advice only
    out = np.empty(len(rows), dtype=np.uint64)
    for i in range(len(rows)):
        out[i] = xxhash.xxh3_64_intdigest(rows[i])
    return out


def store_prefix(cache_dir: str, root: str, size: Sequence[int], interpolation: str) -> str:
    """What a folder's stores at one size share: a new store replaces the one before it (the files changed)."""
    tag = hashlib.sha256(os.fsencode(os.path.abspath(root))).hexdigest()[:12]
    return os.path.join(cache_dir, f"decoded-{tag}-{int(size[0])}x{int(size[1])}-{interpolation}")


class DecodedStore:
    """One folder's store at one size: ``images.npy`` (rows in ``paths`` order), ``index.json`` (written last: the
    store is complete; it holds each row's hash) and ``lock`` (held shared by every process using the store)."""

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
        self.mismatch: Optional[str] = None  # why an existing store was not used: its rows are not what was written
        self.kept: list[str] = []  # older stores of the folder left in place for the fits still reading them
        self.lease: Optional[StoreLease] = None
        self._writing: Optional[np.memmap] = None
        self._hashes: Optional[np.ndarray] = None
        self._tmp: Optional[str] = None
        self._tmp_lock: Optional[int] = None

    @property
    def nbytes(self) -> int:
        return len(self.paths) * self.size[0] * self.size[1] * 3

    def _hold(self) -> bool:
        """Take the shared lock that keeps other fits from removing this store (``lease``: pass it to the readers)."""
        if self.lease is None:
            fd = _open_locked(self.dir, fcntl.LOCK_SH)
            if fd is None:
                return False
            self.lease = StoreLease(fd)
        return True

    def _remove_older(self) -> None:
        """Remove this folder's other stores at this size that no fit reads; ``kept`` lists those still read."""
        self.kept = [other for other in sorted(glob.glob(glob.escape(self.prefix) + "-*"))
                     if other != self.dir and not _remove_if_unused(other)]

    # --- reading ---------------------------------------------------------------------------------------------------
    def load(self) -> bool:
        """True when a complete store for exactly these files is there and every row hashes as it was written
        (its reasons then say which files are bad); ``mismatch`` says why a store that is there was not used."""
        if not os.path.isdir(self.dir) or not self._hold():
            return False
        try:
            with open(self.index_file) as f:
                index = json.load(f)
            shape = np.load(self.file, mmap_mode="r").shape
        except (OSError, ValueError):
            return False
        if index.get("version") != VERSION or index.get("count") != len(self.paths) or \
                tuple(shape) != (len(self.paths), *self.size, 3):
            return False
        try:
            written = np.frombuffer(bytes.fromhex(index["rows"]), dtype="<u8")
            read = row_hashes(self.file)
        except (KeyError, TypeError, ValueError, OSError) as exc:
            self.mismatch = f"cannot be verified ({exc})"
            return False
        bad = int(np.count_nonzero(written != read)) if len(written) == len(read) else len(read)
        if bad:
            self.mismatch = f"{bad:,} of {len(read):,} rows differ from what was written"
            return False
        self.reasons = {self.paths[int(row)]: reason for row, (_, reason) in index.get("excluded", {}).items()}
        self._remove_older()
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
        if not self._hold():
            raise OSError(f"cannot lock the decoded image store {self.dir}")
        remove_dead_temporaries(self.dir)
        free = shutil.disk_usage(self.dir).free
        margin = 64 * 2**20
        if self.nbytes + margin > free:
            self.abandon()
            raise ValueError(
                f"the decoded image store for {self.root} needs {self.nbytes / 1e9:.2f} GB in {self.dir} and only "
                f"{free / 1e9:.2f} GB is free there; free space, set data.cache_dir to a larger disk, or set "
                "data.decoded_cache: false to decode the files every epoch instead")
        self._tmp = os.path.join(self.dir, f"{TMP_PREFIX}{os.getpid()}.npy")
        self._tmp_lock = os.open(self._tmp, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._tmp_lock, fcntl.LOCK_EX)  # held while this process lives: see remove_dead_temporaries
        shape = (len(self.paths), *self.size, 3)
        self._writing = np.lib.format.open_memmap(self._tmp, mode="w+", dtype=np.uint8, shape=shape)
        self._hashes = np.zeros(len(self.paths), dtype=np.uint64)
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
        self._hashes[row] = xxhash.xxh3_64_intdigest(np.ascontiguousarray(self._writing[row]))

    def finish(self, reasons: dict[str, str]) -> None:
        """Make the store visible: the array under its final name, then the index that marks it complete; then
        remove the older stores of the folder that no fit reads any more."""
        self._writing.flush()
        self._writing = None
        os.replace(self._tmp, self.file)
        os.close(self._tmp_lock)
        self._tmp_lock = None
        self.reasons = dict(reasons)
        self.mismatch = None
        row = {p: i for i, p in enumerate(self.paths)}
        excluded = {row[p]: [os.path.relpath(p, self.root), r] for p, r in reasons.items()}
        write_text_atomic(self.index_file, json.dumps({"version": VERSION, "count": len(self.paths),
                                                       "size": self.size, "bytes": self.nbytes,
                                                       "excluded": excluded, "row_hash": ROW_HASH,
                                                       "rows": self._hashes.astype("<u8").tobytes().hex()}))
        self._hashes = None
        self._remove_older()

    def abandon(self) -> None:
        """Undo ``begin``: the temporary file, and the folder itself where it holds no complete store."""
        self._writing = None
        if self._tmp and os.path.exists(self._tmp):
            os.unlink(self._tmp)
        if self._tmp_lock is not None:
            os.close(self._tmp_lock)
            self._tmp_lock = None
        if not os.path.exists(self.index_file):
            if self.lease is not None:
                self.lease.release()
                self.lease = None
            _remove_if_unused(self.dir)
