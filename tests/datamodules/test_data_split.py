"""Split: deterministic, disjoint, stratified; written to the run directory as file lists."""

import os

import numpy as np
import pytest

from datamodules import ImageClassificationDataModule
from datamodules.sources import ImageFolderSource
from datamodules.split import stratified_split


def test_stratified_split_is_deterministic_disjoint_and_keeps_class_ratios():
    labels = np.repeat(np.arange(5), [50, 30, 20, 11, 1])
    a = stratified_split(labels, [0.6, 0.2, 0.2], seed=3)
    b = stratified_split(labels, [0.6, 0.2, 0.2], seed=3)
    c = stratified_split(labels, [0.6, 0.2, 0.2], seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    train, val, test = a
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    assert sorted(np.concatenate(a).tolist()) == list(range(len(labels)))
    for cls, n in enumerate([50, 30, 20, 11, 1]):
        counts = [int((labels[p] == cls).sum()) for p in a]
        assert counts[0] >= 1  # even a one-image class trains
        if n >= 10:
            assert abs(counts[0] / n - 0.6) <= 1 / n + 1e-9 and abs(counts[2] / n - 0.2) <= 1 / n + 1e-9


@pytest.mark.parametrize("ratios", [[0.5, 0.5], [0.7, 0.2, 0.2], [0.0, 0.5, 0.5], [-0.1, 0.6, 0.5]])
def test_bad_split_ratios_are_one_clear_error(ratios):
    with pytest.raises(ValueError, match="split"):
        ImageClassificationDataModule(split=ratios)


def test_imagefolder_split_files_are_disjoint_stratified_and_reproducible(image_folder, tmp_path):
    lists = []
    for run in range(2):
        dm = ImageClassificationDataModule(source=ImageFolderSource(image_folder), image_size=16,
                                           cache_dir=str(tmp_path / "cache"))
        dm.setup("fit")
        lists.append({s: [dm._datasets[s].images.name(i) for i in range(len(dm._datasets[s]))]
                      for s in ("train", "val", "test")})
    assert lists[0] == lists[1]
    files = lists[0]
    assert not (set(files["train"]) & set(files["val"]) or set(files["train"]) & set(files["test"])
                or set(files["val"]) & set(files["test"]))
    assert sum(len(v) for v in files.values()) == 30
    for split, n in (("train", 6), ("val", 2), ("test", 2)):  # 10 per class at 6:2:2
        for cls in ("bird", "cat", "dog"):
            assert sum(f.startswith(cls + os.sep) for f in files[split]) == n


def test_presplit_folders_are_used_as_given(tmp_path):
    from data_factory import make_folder

    root = tmp_path / "pre"
    make_folder(str(root / "train"), per_class=4, seed=1)
    make_folder(str(root / "val"), per_class=2, seed=2)
    dm = ImageClassificationDataModule(source=ImageFolderSource(str(root)), image_size=16, cache_dir=str(tmp_path / "c"))
    assert dm.class_names == ["bird", "cat", "dog"]
    dm.setup("fit")
    assert len(dm._datasets["train"]) == 12 and len(dm._datasets["val"]) == 6
    assert all(dm._datasets["train"].images.name(i).startswith("train") for i in range(12))
