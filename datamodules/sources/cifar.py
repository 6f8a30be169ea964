"""CIFAR-10 and CIFAR-100 from torchvision's on-disk python pickles, read directly and safely.

Val is a stratified holdout of the official train set: val / (train + val) of ``data.split`` (0.25 with the default
0.6/0.2/0.2); the official test set is the test split. Files are read directly (torchvision's md5 check would re-hash
170 MB per fit).
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Optional, Sequence

import numpy as np

from datamodules.datasets import ArrayImages
from datamodules.sources.base import DataSource, LoadRequest, SourceData, SplitData
from datamodules.split import holdout_split
from datamodules.workers import SharedArray

class UnsafePickleError(pickle.UnpicklingError):
    """A pickle that asks for a global the CIFAR format never holds (it could run code); the message names the file."""


def _numpy_pickle_globals() -> dict[tuple[str, str], Any]:
    """The globals numpy arrays pickle through, under the module names of numpy 1.x and 2.x writers."""
    core = np._core if hasattr(np, "_core") else np.core  # resolved here: importing numpy.core warns on numpy 2
    found = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core", "numpy._core"):
        found[(f"{module}.multiarray", "_reconstruct")] = core.multiarray._reconstruct  # protocols 0-4
        found[(f"{module}.numeric", "_frombuffer")] = core.numeric._frombuffer  # protocol 5
    found[("_codecs", "encode")] = __import__("_codecs").encode  # bytes in protocol-2 pickles written by Python 3
    return found


class CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches hold: dicts, lists, str/bytes, ints and numpy arrays.

    A pickle can call any importable function while it loads, so a ``batches.meta`` dropped into ``data.root`` would
    run code the moment the DataModule is built. torchvision guards with an md5 per file, which means re-hashing
    170 MB every fit; refusing every global but numpy's array reconstruction costs nothing and admits any honest copy.
    """

    ALLOWED = _numpy_pickle_globals()

    def __init__(self, file, path: str):
        super().__init__(file, encoding="latin1")  # the original batches are Python 2 pickles
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"{self.path} is not a CIFAR file: it asks to load {module}.{name}, which could "
                                    "run code, so it was not read; delete it and re-extract the official archive"
                                    ) from None


def read_cifar_pickle(path: str) -> Any:
    """Load one CIFAR pickle through ``CifarUnpickler``."""
    with open(path, "rb") as f:
        return CifarUnpickler(f, path).load()


def _torchvision_cifar(name: str):
    from torchvision.datasets import CIFAR10, CIFAR100

    return {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]


def cifar_files(name: str, root: str) -> tuple[str, list[str], list[str], str]:
    """(folder, train files, test files, meta file) of torchvision's layout for ``cifar10``/``cifar100``."""
    tv = _torchvision_cifar(name)
    folder = os.path.join(root, tv.base_folder)
    return folder, [f for f, _ in tv.train_list], [f for f, _ in tv.test_list], tv.meta["filename"]


def cifar_class_names(name: str, root: Optional[str], repairable: bool = False) -> list[str]:
    """Class names from the meta file when present (cheap), else placeholders until the data is there.

    ``repairable``: the download that follows (torchvision's md5 check, re-extract) will replace a bad meta file,
    so placeholders stand in for now instead of an error.
    """
    count = 10 if name == "cifar10" else 100
    placeholders = [f"class_{i}" for i in range(count)]
    if not root:
        return placeholders
    folder, _, _, meta = cifar_files(name, root)
    path = os.path.join(folder, meta)
    if not os.path.exists(path):
        return placeholders  # not downloaded yet: prepare_data may fetch it
    try:
        names = read_cifar_pickle(path)[_torchvision_cifar(name).meta["key"]]
    except UnsafePickleError as exc:
        if repairable:
            return placeholders
        raise ValueError(str(exc)) from None
    except Exception:  # noqa: BLE001 (a damaged pickle raises anything; the message below covers every case)
        names = None
    if repairable and (not isinstance(names, list) or len(names) != count):
        return placeholders
    if not isinstance(names, list) or len(names) != count:
        raise ValueError(f"{path} is not a {name} meta file (no list of {count} class names in it); re-extract "
                         f"{_torchvision_cifar(name).filename} into {root}")
    return [str(n) for n in names]


def download_cifar(name: str, root: str) -> None:
    """torchvision's own download + md5 check (only where a network exists and the YAML says download: true)."""
    _torchvision_cifar(name)(root, train=True, download=True)


def _read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    entry = read_cifar_pickle(path)
    labels = entry["labels"] if "labels" in entry else entry["fine_labels"]
    raw = entry["data"]
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8 or raw.ndim != 2 or raw.shape[1] != 3072:
        raise ValueError("its data is not an [N, 3072] uint8 array")
    data = raw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(data),):
        raise ValueError(f"it has {labels.size} labels for {len(data)} images")
    return np.ascontiguousarray(data), labels


def load_cifar(name: str, root: str, ratios: Sequence[float], seed: int) -> SourceData:
    """CIFAR from torchvision's python pickles; val is a stratified holdout of the official train set.

    The holdout fraction is val / (train + val) of ``split`` (0.25 with the default 0.6/0.2/0.2); the official
    test set is the test split. Files are read directly (torchvision's md5 check would re-hash 170 MB per fit).
    """
    label = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[name]
    folder, train_files, test_files, meta = cifar_files(name, root)
    missing = [f for f in train_files + test_files + [meta] if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise FileNotFoundError(
            f"{label} is not complete under {folder} (missing: {', '.join(missing)}); extract torchvision's "
            f"{_torchvision_cifar(name).filename} into {root} or set data.source.download: true where a network exists")
    batches = {}
    for f in train_files + test_files:
        path = os.path.join(folder, f)
        try:
            batches[f] = _read_cifar_batch(path)
        except UnsafePickleError as exc:
            raise ValueError(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 (a damaged pickle raises anything: EOFError, KeyError, TypeError...)
            raise ValueError(f"{path} is not a readable {label} batch ({type(exc).__name__}: {exc}); re-extract "
                             f"{_torchvision_cifar(name).filename} into {root}") from None
    train = [batches[f] for f in train_files]
    test = [batches[f] for f in test_files]
    x_train, y_train = np.concatenate([a for a, _ in train]), np.concatenate([b for _, b in train])
    x_test, y_test = np.concatenate([a for a, _ in test]), np.concatenate([b for _, b in test])
    keep, held = holdout_split(y_train, ratios[1] / (ratios[0] + ratios[1]), seed)
    shared_train = SharedArray(x_train)  # one copy in shared memory for train, val and every loader worker
    del x_train
    splits = {
        "train": SplitData(ArrayImages(shared_train, keep, f"{name}:train:"), y_train[keep]),
        "val": SplitData(ArrayImages(shared_train, held, f"{name}:train:"), y_train[held]),
        "test": SplitData(ArrayImages(x_test, None, f"{name}:test:"), y_test),
    }
    signature = [(f, os.path.getsize(os.path.join(folder, f)), os.stat(os.path.join(folder, f)).st_mtime_ns)
                 for f in train_files]
    return SourceData(cifar_class_names(name, root), splits, [name, os.path.abspath(folder), signature, keep.tolist()])


class _Cifar(DataSource):
    """CIFAR under ``root`` (the folder that holds cifar-10-batches-py/ or cifar-100-python/); ``download``: fetch it
    there first with torchvision where a network exists."""

    name = ""

    def __init__(self, root: str = "data", download: bool = False) -> None:
        if not root:
            raise ValueError(f"{type(self).__name__} needs root: the folder that holds "
                             f"{cifar_files(self.name, '.')[0][2:]}/ (data.source.root)")
        self.root = os.path.expanduser(root)
        self.download = bool(download)
        if not download and not os.path.isdir(self.root):
            raise FileNotFoundError(f"CIFAR root {self.root} does not exist; set data.source.root to the folder that "
                                    f"holds {cifar_files(self.name, '.')[0][2:]}/, or data.source.download: true "
                                    "where a network exists")

    def class_names(self) -> list[str]:
        return cifar_class_names(self.name, self.root, repairable=self.download)

    def prepare(self) -> None:
        if self.download:
            download_cifar(self.name, self.root)

    def load(self, request: LoadRequest) -> SourceData:
        return load_cifar(self.name, self.root, request.split, request.seed)


class Cifar10Source(_Cifar):
    __doc__ = _Cifar.__doc__
    name = "cifar10"


class Cifar100Source(_Cifar):
    __doc__ = _Cifar.__doc__
    name = "cifar100"
