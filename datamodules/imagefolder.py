"""A user's folder of images: one sub-folder per class, optionally already split into train/ val/ [test/].

Indexing decodes every file once (through ``deploy.images.read_image``, the device's decoder) so that broken files
(truncated, empty, not an image, unreadable) are excluded up front with their reasons instead of killing a worker
mid-epoch. Verdicts are cached per file (size, mtime, mode), so a second fit decodes nothing; the first fit computes
the train split's mean/std in the same decode pass.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
from pytorch_lightning.utilities import rank_zero_info

from datamodules.datasets import FileImages, StoredImages
from datamodules.decoded import DecodedStore
from datamodules.rundir import read_json_checked, write_json_checked
from datamodules.sources.base import SPLITS, SourceData, SplitData
from datamodules.split import stratified_split
from datamodules.stats import PixelSums, file_signature, fingerprint
from deploy.images import ImageDecodeError, is_image_file, read_image, shown_name


@dataclass
class StatsRequest:
    """How the caller wants mean/std: its cache key for an identity, the resize, and its cache lookup."""

    key: Callable[[list[Any]], str]
    resize: Callable[[np.ndarray], np.ndarray]
    load: Callable[[str], Optional[tuple[list[float], list[float]]]]


# A folder whose name starts with "." is not a class: such folders are what tools leave (.ipynb_checkpoints,
# .thumbnails, .git, .Trash-1000, macOS's .fseventsd), and torchvision's ImageFolder, which takes every folder, makes
# Jupyter's .ipynb_checkpoints a class of its own. So they are skipped, and named in one line where they hold images.
def _visible_dirs(folder: str) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _hidden_dirs_with_images(folder: str) -> list[str]:
    """Hidden sub-folders of ``folder`` that hold image files at their top level (what a user may have meant as a
    class); looking no deeper keeps a large .git cheap."""
    out = []
    for entry in os.scandir(folder):
        if entry.is_dir() and entry.name.startswith("."):
            try:
                if any(f.is_file() and is_image_file(f.name) for f in os.scandir(entry.path)):
                    out.append(entry.name)
            except OSError:
                continue
    return sorted(out)


def _check_text_names(base: str, names: list[str]) -> None:
    """Class names become the bundle's labels (text on the device): a folder name that is not UTF-8 cannot be one."""
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"class folder {shown_name(os.path.join(base, name))} has a name that is not UTF-8 "
                             "text, and class names become the bundle's labels; rename it (convmv -f latin1 -t "
                             "utf8 renames such folders)") from None


def check_root(root: Optional[str]) -> str:
    if not root:
        raise ValueError("ImageFolderSource needs root: a folder with one sub-folder of images per class "
                         "(data.source.root)")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder; check data.source.root")
    return root


def presplit_folders(root: str) -> Optional[dict[str, str]]:
    """{split: folder} when root holds train/ and val/ (and maybe test/), else None (split here)."""
    names = set(_visible_dirs(root))
    if {"train", "val"} <= names:
        return {s: os.path.join(root, s) for s in SPLITS if s in names}
    return None


def class_names(root: Optional[str]) -> list[str]:
    """Sorted class folder names (cheap: directory listing only); the index order of the labels."""
    root = check_root(root)
    folders = presplit_folders(root)
    base = folders["train"] if folders else root
    names = _visible_dirs(base)
    _check_text_names(base, names)
    if len(names) < 2:
        raise ValueError(f"{base} has {len(names)} class folder(s) {names}; a classifier needs at least 2, one "
                         "sub-folder of images per class")
    return names


def list_images(folder: str, classes: Sequence[str]) -> tuple[list[str], list[int]]:
    """Image files under each class folder (recursive, sorted, hidden files/folders and non-images skipped)."""
    paths, labels = [], []
    for label, name in enumerate(classes):
        class_dir = os.path.join(folder, name)
        if not os.path.isdir(class_dir):
            continue
        found = []
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [os.path.join(dirpath, f) for f in filenames if is_image_file(f)]
        paths += sorted(found)
        labels += [label] * len(found)
    return paths, labels


def _verdict_cache_path(cache_dir: Optional[str], root: str) -> Optional[str]:
    if not cache_dir:
        return None
    tag = hashlib.sha256(os.fsencode(os.path.abspath(root))).hexdigest()[:16]
    return os.path.join(cache_dir, f"image-checks-{tag}.json")


def _load_verdicts(path: Optional[str]) -> dict[str, list]:
    """{absolute path: [size, mtime_ns, mode, reason or None]} as written; a cache that is not is said and ignored."""
    if path is None:
        return {}
    data, problem = read_json_checked(path)
    verdicts = data.get("verdicts") if data is not None else None
    if data is not None and not isinstance(verdicts, dict):
        problem = "holds no verdicts"
    if problem is not None:
        rank_zero_info(f"image check cache {path} {problem}: checking every file again")
    return verdicts if problem is None and verdicts is not None else {}


def _stat_key(path: str) -> Optional[list[int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_mode]


def check_images(paths: Sequence[str], root: str, cache_dir: Optional[str], threads: int,
                 sum_for: Optional[set[str]] = None,
                 resize: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                 store: Optional[DecodedStore] = None) -> tuple[dict[str, str], PixelSums]:
    """{path: reason} for the files that do not decode, and pixel sums (after ``resize``) over ``sum_for``.

    A file whose (size, mtime, mode) matches the cache is not decoded again unless its pixels are needed: for the
    sums, or for ``store``, which receives every file's resized image in row ``paths.index(file)``.
    """
    sum_for = sum_for or set()
    cache_path = _verdict_cache_path(cache_dir, root)
    cached = _load_verdicts(cache_path)

    def one(row: int) -> tuple[Optional[list[int]], Optional[str], Optional[PixelSums]]:
        path = paths[row]
        key = _stat_key(path)
        hit = cached.get(os.path.abspath(path))
        if store is None and path not in sum_for and key is not None and hit is not None and hit[:3] == key:
            return key, hit[3], None
        try:
            image = read_image(path)
        except ImageDecodeError as exc:
            return key, str(exc).removeprefix(f"{path}: "), None
        if store is None and path not in sum_for:
            return key, None, None
        small = resize(image) if resize else image
        if store is not None:
            store.put(row, small)
        sums = None
        if path in sum_for:
            sums = PixelSums()
            sums.add_images(small)
        return key, None, sums

    reasons: dict[str, str] = {}
    total = PixelSums()
    verdicts: dict[str, list] = {}
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for path, (key, reason, sums) in zip(paths, pool.map(one, range(len(paths)), chunksize=8)):
            if reason is not None:
                reasons[path] = reason
            if sums is not None:
                total.merge(sums)
            if key is not None:
                verdicts[os.path.abspath(path)] = [*key, reason]
    if cache_path and verdicts != {k: cached.get(k) for k in verdicts}:
        try:
            write_json_checked(cache_path, {"verdicts": {**cached, **verdicts}}, indent=None)
        except OSError:
            pass  # an unwritable cache only costs a re-check next time
    return reasons, total


@dataclass
class StoreRequest:
    """The decoded store wanted: the resize it holds (the eval transform's first step) and its name."""

    size: list[int]
    interpolation: str
    resize: Callable[[np.ndarray], np.ndarray]


def _say_kept(store: DecodedStore) -> None:
    if store.kept:
        rank_zero_info(f"decoded store: {len(store.kept)} older store(s) of {store.root} kept while another fit "
                       f"reads them ({', '.join(store.kept)}); a later fit removes them")


def _decode_pass(all_paths: list[str], train_paths: list[str], root: str, cache_dir: Optional[str], threads: int,
                 want_sums: bool, stats: Optional[StatsRequest], decoded: Optional[StoreRequest]):
    """Check every file (and sum the train pixels, and fill the decoded store, where wanted) in one decode pass;
    a complete store for exactly these files is reused and nothing is decoded."""
    store = None
    if decoded is not None and cache_dir:
        key = fingerprint(["decoded v1", file_signature(all_paths), decoded.size, decoded.interpolation])
        store = DecodedStore(cache_dir, root, key, all_paths, decoded.size, decoded.interpolation)
        if store.load():
            rank_zero_info(f"decoded store: {len(all_paths):,} images at {decoded.size[0]}x{decoded.size[1]} read "
                           f"from {store.dir} ({store.nbytes / 1e6:,.1f} MB, every row as written), no file decoded")
            _say_kept(store)
            rows = {p: i for i, p in enumerate(all_paths)}
            sums = store.sum_rows([rows[p] for p in train_paths if p not in store.reasons]) if want_sums else None
            return store.reasons, sums, store
        if store.mismatch:
            rank_zero_info(f"decoded store {store.dir} is not what was written ({store.mismatch}): decoding the "
                           "files again")
        store.begin()
    resize = decoded.resize if decoded is not None else (stats.resize if want_sums else None)
    try:
        reasons, sums = check_images(all_paths, root, cache_dir, threads,
                                     sum_for=set(train_paths) if want_sums else None, resize=resize, store=store)
    except BaseException:
        if store is not None:
            store.abandon()
        raise
    if store is not None:
        store.finish(reasons)
        rank_zero_info(f"decoded store: {len(all_paths):,} images decoded once at {decoded.size[0]}x"
                       f"{decoded.size[1]} into {store.dir} ({store.nbytes / 1e6:,.1f} MB); later epochs and fits "
                       "read it instead of the files (data.decoded_cache: false turns it off)")
        _say_kept(store)
    return reasons, (sums if want_sums else None), store


def load_imagefolder_source(root: Optional[str], ratios: Sequence[float], seed: int, cache_dir: Optional[str],
                            threads: int, stats: Optional[StatsRequest] = None,
                            decoded: Optional[StoreRequest] = None) -> SourceData:
    """Index the folder, split it (its own train/val/test folders, else stratified and seeded), drop broken files."""
    root = check_root(root)
    classes = class_names(root)
    folders = presplit_folders(root)
    for base in (folders or {"": root}).values():
        hidden = _hidden_dirs_with_images(base)
        if hidden:
            rank_zero_info(f"{shown_name(base)}: hidden folder(s) {[shown_name(h) for h in hidden]} hold images but "
                           "are not classes (a name starting with '.' is skipped); rename one to use it as a class")
    if folders:
        unknown = {s: sorted(set(_visible_dirs(f)) - set(classes)) for s, f in folders.items()}
        for s, extra in unknown.items():
            if extra:
                raise ValueError(f"{folders[s]} has class folder(s) {extra} that train/ does not have; "
                                 "every split must use the train classes")
        listed = {s: list_images(f, classes) for s, f in folders.items()}
        if "test" not in listed:
            listed["test"] = listed["val"]
            rank_zero_info(f"{root} has train/ and val/ but no test/: the test split is val/")
    else:
        paths, labels = list_images(root, classes)
        parts = stratified_split(labels, ratios, seed)
        listed = {s: ([paths[i] for i in idx], [labels[i] for i in idx]) for s, idx in zip(SPLITS, parts)}

    counts = np.bincount(np.concatenate([np.asarray(v[1], dtype=np.int64) for v in listed.values()]),
                         minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise ValueError(f"class folder(s) {empty} under {root} contain no image files "
                         f"(extensions: jpg, jpeg, png, bmp, ...); add images or remove the folder")

    identity = ["imagefolder", file_signature(listed["train"][0])]
    want_sums = stats is not None and stats.load(stats.key(identity)) is None
    all_paths = sorted({p for v in listed.values() for p in v[0]})  # the store's row order: the same for any split
    reasons, sums, store = _decode_pass(all_paths, listed["train"][0], root, cache_dir, threads, want_sums, stats,
                                        decoded)
    row = {p: i for i, p in enumerate(all_paths)}

    splits = {}
    for s in SPLITS:
        paths, labels = listed[s]
        keep = [paths[i] for i, p in enumerate(paths) if p not in reasons]
        images = (StoredImages(keep, root, store.file, [row[p] for p in keep], store.lease) if store is not None
                  else FileImages(keep, root))
        splits[s] = SplitData(images, np.asarray([labels[i] for i, p in enumerate(paths) if p not in reasons],
                                                 dtype=np.int64))
    good = np.bincount(np.concatenate([d.labels for d in splits.values()]), minlength=len(classes))
    broken = [classes[i] for i in np.flatnonzero(good == 0)]
    if broken:
        raise ValueError(f"class folder(s) {broken} under {root} have no image that can be decoded; see the "
                         "excluded images listed above")
    excluded = sorted((os.path.relpath(p, root), r) for p, r in reasons.items())
    return SourceData(classes, splits, identity, excluded, sums)
