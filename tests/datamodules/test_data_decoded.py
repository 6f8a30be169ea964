"""The decoded store: real photos decoded once into a memory-mapped uint8 array, read back bit-exact, reused by a
later fit, rebuilt when a file changes, refused in one sentence when the disk lacks room, off on request."""

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import ImageClassificationDataModule
from datamodules.sources import ImageFolderSource
from deploy.preprocess import preprocess

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """JPEG crops of scikit-image's and scikit-learn's bundled photos (astronaut, coffee, chelsea; china, flower) at
    camera-like sizes, one class per photo, plus one PNG: pictures nobody here prepared."""
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("photos")
    sources = {"astronaut": skimage_data.astronaut(), "coffee": skimage_data.coffee(), "chelsea": skimage_data.chelsea()}
    china, flower = load_sample_images().images
    sources.update(china=china, flower=flower)
    rng = np.random.default_rng(3)
    for name, array in sources.items():
        (root / name).mkdir()
        h, w = array.shape[:2]
        for i in range(8):
            ch, cw = int(h * rng.uniform(0.5, 0.9)), int(w * rng.uniform(0.5, 0.9))
            y, x = rng.integers(0, h - ch), rng.integers(0, w - cw)
            crop = Image.fromarray(np.ascontiguousarray(array[y:y + ch, x:x + cw, :3]))
            crop = crop.resize((int(rng.integers(300, 500)), int(rng.integers(250, 400))))
            if i == 7:
                crop.save(root / name / f"{i}.png")
            else:
                crop.save(root / name / f"{i}.jpg", quality=int(rng.integers(80, 95)))
    return str(root)


def _dm(root, cache, **kwargs):
    args = dict(source=ImageFolderSource(root), image_size=[40, 48], crop_size=[36, 44], interpolation="area",
                batch_size=8, cache_dir=str(cache))
    args.update(kwargs)
    dm = ImageClassificationDataModule(**args)
    dm.setup("fit")
    return dm


def _stores(cache):
    return sorted(p for p in os.listdir(cache) if p.startswith("decoded-"))


def test_batches_from_the_store_are_bit_identical_to_the_bundles_preprocessing_of_the_files(photos, tmp_path):
    dm = _dm(photos, tmp_path / "cache")
    store = _stores(tmp_path / "cache")
    assert len(store) == 1 and "40x48-area" in store[0]
    array = np.load(tmp_path / "cache" / store[0] / "images.npy", mmap_mode="r")
    assert array.shape == (40, 40, 48, 3) and array.dtype == np.uint8
    for split in ("val", "test"):
        loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
        images = torch.cat([dm.normalize(x) for x, _ in loader]).numpy()
        ds = dm._datasets[split]
        files = [os.path.join(photos, ds.images.name(i)) for i in range(len(ds))]
        expected, kept, errors = preprocess(files, dm.preprocessing.to_dict())
        assert errors == [] and len(kept) == len(files)
        np.testing.assert_array_equal(images, expected)  # bit for bit: the device sees what training evaluated


def test_a_second_fit_reads_the_store_and_decodes_no_file_with_the_same_statistics(photos, tmp_path, monkeypatch):
    first = _dm(photos, tmp_path / "cache", mean_std="auto")
    from datamodules import imagefolder

    decoded = []
    real = imagefolder.read_image
    monkeypatch.setattr(imagefolder, "read_image", lambda path: decoded.append(path) or real(path))
    second = _dm(photos, tmp_path / "cache", mean_std="auto", seed=7)  # another split: new statistics
    assert decoded == []
    off = _dm(photos, tmp_path / "off", mean_std="auto", seed=7, decoded_cache=False)
    assert second.preprocessing.mean == pytest.approx(off.preprocessing.mean, abs=1e-12)
    assert second.preprocessing.std == pytest.approx(off.preprocessing.std, abs=1e-12)
    assert first.preprocessing.mean != second.preprocessing.mean
    assert _stores(tmp_path / "off") == []  # decoded_cache: false writes no store
    x_on, _ = next(iter(second.test_dataloader()))
    x_off, _ = next(iter(off.test_dataloader()))
    assert torch.equal(x_on, x_off)


def test_a_changed_file_builds_a_new_store_and_removes_the_old_one(photos, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(photos, root)
    _dm(str(root), tmp_path / "cache")
    before = _stores(tmp_path / "cache")
    victim = root / "coffee" / "3.jpg"
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(victim)
    dm = _dm(str(root), tmp_path / "cache")
    after = _stores(tmp_path / "cache")
    assert len(after) == 1 and after != before
    ds = dm._datasets["train"]
    black = [i for i in range(len(ds)) if ds.images.name(i) == "coffee/3.jpg"]
    if black:  # in the train split: the store holds the new, black picture
        assert ds.images.read(black[0]).max() == 0


def test_a_disk_without_room_for_the_store_is_one_sentence_and_leaves_nothing(photos, tmp_path, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(ValueError) as info:
        _dm(photos, tmp_path / "cache")
    message = str(info.value)
    assert "decoded image store" in message and "needs" in message and "only 0.00 GB is free" in message
    assert "data.decoded_cache: false" in message and "\n" not in message
    leftovers = [f for d in _stores(tmp_path / "cache") for f in os.listdir(tmp_path / "cache" / d)]
    assert leftovers == []


def test_num_workers_auto_is_one_per_usable_core_but_one(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert ImageClassificationDataModule(num_workers="auto", cache_dir=str(tmp_path)).num_workers == 15
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert ImageClassificationDataModule(num_workers="auto", cache_dir=str(tmp_path)).num_workers == 0
