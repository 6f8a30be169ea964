"""The decoded store: real photos decoded once into a memory-mapped uint8 array, read back bit-exact, reused by a
later fit, rebuilt when a file changes or when the store is not what was written, kept while another fit reads it,
refused in one sentence when the disk lacks room, off on request."""

import gc
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from data_factory import LightningLines
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
    assert _stores(tmp_path / "cache") == []  # not even an empty folder


def _eval_batches(dm):
    return torch.cat([x for x, _ in dm.test_dataloader()]), torch.cat([x for x, _ in dm.val_dataloader()])


def test_a_store_overwritten_in_place_is_caught_rebuilt_and_said_in_one_line(photos, tmp_path, caplog):
    cache = tmp_path / "cache"
    expected = _eval_batches(_dm(photos, cache))
    (store,) = _stores(cache)
    file = cache / store / "images.npy"
    size = file.stat().st_size
    images = np.load(file, mmap_mode="r+")
    images[3:37] = 0  # most rows zeroed in place: same size, same header, a valid .npy
    images.flush()
    del images
    assert file.stat().st_size == size
    with LightningLines(caplog) as said:
        dm = _dm(photos, cache)
    (line,) = said.matching("is not what was written")
    assert "34 of 40 rows differ" in line and "decoding the files again" in line and "\n" not in line
    got = _eval_batches(dm)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])  # the files' pixels, not zeros
    assert _stores(cache) == [store]
    with LightningLines(caplog) as said:
        _dm(photos, cache)  # rebuilt: the next fit reads it again without a word about it
    assert said.matching("is not what was written") == [] and said.matching("every row as written")


def test_a_fit_over_a_changed_folder_leaves_the_store_another_fit_reads(photos, tmp_path, caplog):
    root = tmp_path / "copy"
    shutil.copytree(photos, root)
    cache = tmp_path / "cache"
    first = _dm(str(root), cache)  # still running: it reads its store in its final test
    (old,) = _stores(cache)
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(root / "coffee" / "3.jpg")
    with LightningLines(caplog) as said:
        second = _dm(str(root), cache)
    assert len(_stores(cache)) == 2 and old in _stores(cache)
    (line,) = said.matching("kept while another fit reads")
    assert old in line
    x, y = next(iter(first.test_dataloader()))  # the first fit's final test still reads its own store
    assert len(x) == len(y) > 0
    assert next(iter(second.test_dataloader()))[0].shape[1:] == x.shape[1:]
    del first, x, y
    gc.collect()  # the first fit has ended: the next fit over the folder removes its store
    _dm(str(root), cache)
    assert old not in _stores(cache) and len(_stores(cache)) == 1


def test_the_temporary_file_of_a_killed_build_is_removed_by_the_next_build(photos, tmp_path):
    cache = tmp_path / "cache"
    script = textwrap.dedent(f"""
        import sys, time
        from datamodules import ImageClassificationDataModule, imagefolder
        from datamodules.sources import ImageFolderSource
        real = imagefolder.read_image
        def stuck(path):
            print("building", flush=True)
            time.sleep(600)
        imagefolder.read_image = stuck
        ImageClassificationDataModule(source=ImageFolderSource({photos!r}), image_size=[40, 48], crop_size=[36, 44],
                                      interpolation="area", cache_dir={str(cache)!r}, index_threads=1).setup("fit")
    """)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=repo,
                            env={**os.environ, "PYTHONPATH": repo})
    try:
        assert proc.stdout.readline() == "building\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (store,) = _stores(cache)
    assert f".images-{proc.pid}.npy" in os.listdir(cache / store)  # what a killed build leaves
    dm = _dm(photos, cache)
    left = os.listdir(cache / store)
    assert [f for f in left if f.startswith(".images-")] == [] and {"images.npy", "index.json"} <= set(left)
    assert len(dm._datasets["test"]) > 0


def test_num_workers_auto_is_one_per_usable_core_but_one(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert ImageClassificationDataModule(num_workers="auto", cache_dir=str(tmp_path)).num_workers == 15
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert ImageClassificationDataModule(num_workers="auto", cache_dir=str(tmp_path)).num_workers == 0
