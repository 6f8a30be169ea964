"""How loader workers start: from a forkserver that has already imported the application, with small start-up messages.

Measured on a 16-core GPU machine (../shared/gpu/README.md in the project's notes) and reproduced on 2 cores:
- Workers must not be forked from the training process once its OpenMP/OpenCV thread pools run (a forked
  child can inherit a held lock and deadlock), so they start from a forkserver: a clean single-threaded process.
- Python <= 3.13.7's forkserver never preloads ``__main__`` (CPython gh-126631), so every worker re-imported the
  application (torch, Lightning, albumentations: seconds of CPU each). The forkserver here imports the heavy
  modules the application already uses once; each worker is then a fork of it and re-running the main script
  finds everything imported.
- A worker's start-up message (the pickled dataset) larger than a pipe (64 KiB) blocks the parent until that
  worker has read it, so workers started one after another. The datasets here pickle their arrays as shared
  memory handles (``SharedArray``), which keeps the message small whatever the number of files.
- Offline, albumentations' import-time version check waits on DNS in every process: it is switched off here
  before albumentations is imported (set NO_ALBUMENTATIONS_UPDATE=0 to have it back).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

# The heavy modules a worker needs or re-imports with the main script; only those the parent already loaded are
# preloaded, so a small script does not pay for Lightning.
PRELOAD = ("numpy", "cv2", "PIL.Image", "torch", "torchvision", "albumentations", "albumentations.pytorch",
           "pytorch_lightning", "pytorch_lightning.cli", "torchmetrics", "timm", "jsonargparse", "datamodules",
           "datamodules.datasets", "lightning_modules")
DEFAULT_TIMEOUT_S = 600.0


class LoaderStalled(RuntimeError):
    """Loader workers delivered no batch within the loader's timeout; the message names the likely causes."""


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


def auto_workers() -> int:
    """``num_workers: auto``: one loader process per usable core but the one the training loop runs on."""
    return max(0, usable_cores() - 1)


def cap_workers(requested: int) -> int:
    """At most one loader process per usable core: more only adds memory and context switches, and YAMLs written on
    a workstation still run on a 2-core laptop or CI runner (said in one logged line)."""
    from pytorch_lightning.utilities import rank_zero_info

    cores = usable_cores()
    if requested <= cores:
        return requested
    rank_zero_info(f"data.num_workers {requested} is more than the {cores} CPU core(s) this process may use; "
                   f"using {cores} loader workers")
    return cores


_context: Optional[Any] = None


def worker_context():
    """The forkserver context every loader of this process shares, its server preloading the loaded heavy modules.

    The preload list is fixed when the server starts (the first loader with workers); it lives until the process
    ends, so later loaders (val each epoch, test, calibration) get their workers in milliseconds."""
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([m for m in PRELOAD if m in sys.modules])
        _context = ctx
    return _context


def init_loader_worker(worker_id: int) -> None:
    """One OpenCV and one torch thread per worker: the workers are the parallelism, nested pools only oversubscribe."""
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


class WatchedLoader(DataLoader):
    """A DataLoader whose workers' silence ends in one sentence (``LoaderStalled``) instead of a silent hang."""

    def __iter__(self):
        iterator = super().__iter__()
        if self.num_workers == 0 or not self.timeout:
            return iterator
        return _Watched(iterator, self)


class _Watched:
    def __init__(self, iterator, loader: DataLoader) -> None:
        self._iterator = iterator
        self._loader = loader

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return len(self._iterator)

    def __next__(self):
        try:
            return next(self._iterator)
        except RuntimeError as exc:
            if "timed out" not in str(exc):
                raise
            raise LoaderStalled(stalled_sentence(self._loader.num_workers, self._loader.timeout)) from None

    def __getattr__(self, name: str):
        return getattr(self._iterator, name)


def stalled_sentence(workers: int, seconds: float) -> str:
    return (f"the data loader's {workers} worker process(es) delivered no batch in {seconds:.0f} s "
            "(data.loader_timeout): most likely a worker is stuck starting (an import waiting on a network that is "
            "not there, a full /dev/shm) or reading (a slow network drive, images far larger than image_size); "
            "data.num_workers 0 shows the same step in the main process, where any error is printed")


def make_loader(dataset, batch_size: int, *, num_workers: int, collate_fn: Callable, sampler=None,
                drop_last: bool = False, persistent_workers: bool = False, pin_memory: bool = False, seed: int = 0,
                timeout: float = DEFAULT_TIMEOUT_S) -> DataLoader:
    """A DataLoader set up as this module's docstring says (shared forkserver, one thread per worker, a watchdog)."""
    workers = num_workers > 0
    return WatchedLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
        num_workers=num_workers, persistent_workers=persistent_workers and workers, pin_memory=pin_memory,
        collate_fn=collate_fn, generator=torch.Generator().manual_seed(seed),
        worker_init_fn=init_loader_worker if workers else None,
        multiprocessing_context=worker_context() if workers else None,
        timeout=float(timeout) if workers and timeout else 0,
        prefetch_factor=4 if workers else None,
    )


class Uint8Batches:
    """collate_fn of every loader here: uint8 NCHW images and int64 labels. ``normalize`` makes the network's float
    input of such a batch wherever it is (the DataModule's on_after_batch_transfer; fit-end steps reading a loader)."""

    def __init__(self, normalize: Callable) -> None:
        self.normalize = normalize

    def __call__(self, samples):
        return default_collate(samples)


class SharedArray:
    """A numpy array that pickles to loader workers as a shared-memory handle (a file descriptor), not its bytes.

    It moves into shared memory the first time it is pickled (a loader starting its workers), once; without workers
    it stays ordinary memory, so a small /dev/shm (Docker's 64 MB) only matters to a fit that starts workers. Plain
    ``pickle`` (a copy, ``torch.save``) still writes the data; only multiprocessing's pickler passes handles."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = np.ascontiguousarray(array)
        self.tensor: Optional[torch.Tensor] = None

    def _share(self) -> torch.Tensor:
        if self.tensor is None:
            source = torch.from_numpy(self.array) if self.array.flags.writeable else torch.from_numpy(self.array.copy())
            try:
                tensor = torch.empty(source.shape, dtype=source.dtype).share_memory_()
            except RuntimeError as exc:
                raise RuntimeError(
                    f"loader workers share the {self.array.nbytes / 1e6:,.0f} MB image array through /dev/shm, which "
                    f"is too small for it ({exc}); give the container more (docker run --shm-size=2g) or set "
                    "data.num_workers 0") from None
            tensor.copy_(source)
            self.tensor, self.array = tensor, tensor.numpy()
        return self.tensor

    def __getstate__(self) -> dict:
        return {"tensor": self._share()}

    def __setstate__(self, state: dict) -> None:
        self.tensor = state["tensor"]
        self.array = self.tensor.numpy()


class SharedStrings:
    """A list of str kept as one shared uint8 buffer plus offsets (file names of a large folder cost one handle)."""

    def __init__(self, items) -> None:
        encoded = [s.encode("utf-8", "surrogateescape") for s in items]
        ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
        self._data = SharedArray(np.frombuffer(b"".join(encoded), dtype=np.uint8))
        self._ends = SharedArray(ends)
        self._cache: Optional[list[str]] = None

    def __len__(self) -> int:
        return len(self._ends.array)

    def __getitem__(self, i: int) -> str:
        ends = self._ends.array
        start = int(ends[i - 1]) if i > 0 else 0
        return bytes(self._data.array[start:int(ends[i])]).decode("utf-8", "surrogateescape")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getstate__(self) -> dict:
        return {"_data": self._data, "_ends": self._ends}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _cache=None)
