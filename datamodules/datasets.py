"""Image stores (where pixels come from), the torch Dataset over them, and the epoch-seeded train sampler.

Train randomness is a function of (seed, epoch, sample index) only: the sampler yields ``(index, epoch)`` and the
dataset seeds albumentations from those numbers. So the same seed gives the same augmented batches whatever the
number of workers, with persistent workers, after a resume from a checkpoint, and under Lightning's DDP sampler
wrapper (which forwards ``set_epoch`` and yields what this sampler yields).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from datamodules.rundir import append_excluded_once
from datamodules.workers import SharedArray, SharedStrings
from deploy.images import ImageDecodeError, read_image

log = logging.getLogger(__name__)


class IndexedRows:
    """A store over some rows of its source, kept in shared memory (``self._indices``, a ``SharedArray``)."""

    @property
    def indices(self) -> np.ndarray:
        return self._indices.array

    def __len__(self) -> int:
        return len(self.indices)


class ArrayImages(IndexedRows):
    """Images already decoded in memory: an [N, H, W, 3] uint8 RGB array (optionally a subset of its rows).

    The array lives in shared memory (``SharedArray``; pass one to share it between splits): loader workers map it
    instead of each receiving a copy. ``names``: one name per row of the array, or a prefix that names row r
    ``<prefix><r>`` (``digits:17``)."""

    def __init__(self, array: Union[np.ndarray, SharedArray], indices: Optional[Sequence[int]] = None,
                 names: Union[str, Sequence[str], None] = None):
        self._array = array if isinstance(array, SharedArray) else SharedArray(array)
        rows = np.arange(len(self._array.array)) if indices is None else np.asarray(indices, dtype=np.int64)
        self._indices = SharedArray(rows)
        self._names = names if names is None or isinstance(names, str) else SharedStrings(names)

    @property
    def array(self) -> np.ndarray:
        return self._array.array

    def read(self, i: int) -> np.ndarray:
        return self.array[self.indices[i]]

    def name(self, i: int) -> str:
        row = int(self.indices[i])
        if self._names is None or isinstance(self._names, str):
            return f"{self._names or ''}{row}"
        return self._names[row]


class FileImages:
    """Image files decoded on access through ``deploy.images.read_image`` (the same decoder as the device)."""

    def __init__(self, paths: Sequence[str], root: Optional[str] = None):
        self.paths = paths if isinstance(paths, SharedStrings) else SharedStrings(paths)
        self.root = root  # names are relative to it: split lists stay valid when the folder moves

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> np.ndarray:
        return read_image(self.paths[i])

    def name(self, i: int) -> str:
        path = self.paths[i]
        return os.path.relpath(path, self.root) if self.root else path


class StoredImages(FileImages):
    """Image files read from the folder's decoded store (``datamodules.decoded``): rows of a memory-mapped
    [N, H, W, 3] uint8 array, each image decoded once and resized to the data's image_size. Names stay the files'."""

    def __init__(self, paths: Sequence[str], root: Optional[str], store_file: str, rows: Sequence[int],
                 lease: object = None):
        super().__init__(paths, root)
        self.store_file = store_file
        self.lease = lease  # the store's shared lock (datamodules.decoded.StoreLease): no other fit removes it meanwhile
        self._rows = SharedArray(np.asarray(rows, dtype=np.int64))
        self._map: Optional[np.ndarray] = None

    def read(self, i: int) -> np.ndarray:
        if self._map is None:  # opened on first use in each process: a memory map does not travel to a worker
            self._map = np.load(self.store_file, mmap_mode="r")
        return np.array(self._map[self._rows.array[i]])  # a writable copy: transforms may work in place

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_map": None, "lease": None}  # a worker reads while its parent holds the lease


class SyntheticImages(IndexedRows):
    """Random images generated on access from (seed, index): no memory held, same pixels every time.

    Each class gets its own tint so a fit on them is not pure noise (a smoke test can see the loss drop).
    """

    def __init__(self, all_labels: np.ndarray, indices: Sequence[int], size: Sequence[int], num_classes: int,
                 seed: int):
        self._all_labels = SharedArray(np.asarray(all_labels, dtype=np.int64))
        self._indices = SharedArray(np.asarray(indices, dtype=np.int64))
        self.size = (int(size[0]), int(size[1]))
        self.seed = seed
        self.tints = np.random.default_rng([seed, 7]).integers(0, 128, size=(num_classes, 3)).astype(np.uint8)

    def read(self, i: int) -> np.ndarray:
        row = int(self.indices[i])
        noise = np.random.default_rng([self.seed, row]).integers(0, 128, size=(*self.size, 3), dtype=np.uint8)
        return noise + self.tints[self._all_labels.array[row]]

    def name(self, i: int) -> str:
        return f"synthetic:{int(self.indices[i])}"


ImageStore = Union[ArrayImages, FileImages, StoredImages, SyntheticImages]


def seed_transform(transform, seed: int, epoch: int, index: int) -> None:
    """Point every random step of an albumentations Compose at generators derived from (seed, epoch, index)."""
    seq = np.random.SeedSequence([seed, epoch, index])
    transform.set_random_state(np.random.default_rng(seq), random.Random(int(seq.generate_state(1)[0])))


class ImageDataset(Dataset):
    """(image, label) pairs from an image store through an albumentations transform.

    Indexed by an int, or by ``(index, epoch)`` from ``EpochSampler`` when the transform is random.

    A file that stops decoding after indexing (deleted, truncated, replaced while the fit runs) must not kill a
    worker, and dropping the sample would change the epoch's length and batch boundaries mid-fit. So it is stood in
    for by the next decodable image of the same class (cyclically, in index order): the label stays true to the
    pixels, the class balance stays, and the choice depends only on which files are bad, so a resume sees the
    same batches. The file is listed once in the run's ``excluded_images.txt`` (``report_dir``) with a warning.
    """

    def __init__(self, images: ImageStore, labels: np.ndarray, transform: Callable, seed: int = 0,
                 random_transform: bool = False, report_dir: Optional[str] = None):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self._labels = SharedArray(np.asarray(labels, dtype=np.int64))
        self.transform = transform
        self.seed = seed
        self.random_transform = random_transform
        self.report_dir = report_dir  # the run directory; None: warn once per process instead
        self._bad: set[int] = set()  # per process: a known-bad file is not retried on every read

    @property
    def labels(self) -> np.ndarray:
        return self._labels.array

    def __len__(self) -> int:
        return len(self.labels)

    def _stand_ins(self, index: int) -> Iterator[int]:
        """Same class first, then any class (only when the whole class went bad), both cyclic from ``index``."""
        n = len(self)
        order = (index + 1 + np.arange(n - 1)) % n
        same = self.labels[order] == self.labels[index]
        yield from (int(i) for i in order[same])
        yield from (int(i) for i in order[~same])

    def _went_bad(self, i: int, exc: ImageDecodeError) -> None:
        self._bad.add(i)
        name = self.images.name(i)
        message = str(exc)
        path = self.images.paths[i] if isinstance(self.images, FileImages) else name
        reason = message[len(path) + 2:] if message.startswith(f"{path}: ") else message
        if self.report_dir is not None:
            try:
                first = append_excluded_once(self.report_dir, name, f"went bad during the fit, read as another "
                                                                    f"image of its class from then on: {reason}")
            except OSError:
                first = True  # an unwritable run directory must not stop the fit either
            if not first:
                return
        log.warning("%s went bad during the fit (%s); another image of its class is read in its place", name, reason)

    def _read(self, index: int) -> tuple[np.ndarray, int]:
        for i in itertools.chain([index], self._stand_ins(index)):  # lazy: stand-ins cost only when needed
            if i in self._bad:
                continue
            try:
                return self.images.read(i), i
            except ImageDecodeError as exc:
                self._went_bad(i, exc)
        raise RuntimeError(f"no image of this split decodes any more (last: {self.images.name(index)}); the image "
                           "folder changed during the fit: restore it and resume with --ckpt_path last")

    def __getitem__(self, item: Union[int, tuple[int, int]]) -> tuple[torch.Tensor, int]:
        index, epoch = (int(item[0]), int(item[1])) if isinstance(item, (tuple, list)) else (int(item), 0)
        image, index = self._read(index)
        if self.random_transform:
            seed_transform(self.transform, self.seed, epoch, index)
        return self.transform(image=image)["image"], int(self.labels[index])


class EpochSampler(Sampler):
    """A shuffled order that depends only on (seed, epoch); yields ``(index, epoch)`` for the dataset's seeding."""

    def __init__(self, length: int, seed: int, shuffle: bool = True):
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.length)
        else:
            order = np.arange(self.length)
        return iter([(int(i), self.epoch) for i in order])
