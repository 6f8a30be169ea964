"""A user's folder with every image mode and every kind of broken file trains through fit."""

import os

import numpy as np
import pytest
import torch
from PIL import Image
from data_factory import CLASSES, TinyClassifier, chmod_blocks_reads, make_folder, tiny_trainer

from datamodules import ImageClassificationDataModule
from datamodules.sources import ImageFolderSource


def _all_names(dm):
    return {dm._datasets[s].images.name(i) for s in ("train", "val", "test") for i in range(len(dm._datasets[s]))}


def test_dirty_folder_trains_through_fit_and_lists_each_bad_file(dirty_folder, tmp_path):
    root, bad = dirty_folder
    dm = ImageClassificationDataModule(source=ImageFolderSource(root), image_size=16, batch_size=4, augment="rrc_affine_dropout",
                                       cache_dir=str(tmp_path / "cache"))
    assert dm.num_classes == 3 and dm.class_names == CLASSES
    trainer = tiny_trainer(tmp_path, fast_dev_run=True)
    trainer.fit(TinyClassifier(), dm)
    trainer.test(TinyClassifier(), datamodule=dm)

    excluded = dict(dm.excluded)
    if not chmod_blocks_reads(os.path.join(root, "dog/unreadable.jpg")):
        bad.pop("dog/unreadable.jpg")  # running as root: chmod 000 does not stop reads, the file is a good image
    assert set(excluded) == set(bad)
    for rel, words in bad.items():
        assert words in excluded[rel], (rel, excluded[rel])
    names = _all_names(dm)
    assert len(names) == 30 + (0 if "dog/unreadable.jpg" in bad else 1)
    assert not any(os.path.basename(n).startswith(".") or n.endswith(".txt") for n in names)
    assert {"bird/bird07_i16.png", "cat/cat08_cmyk.jpg", "dog/dog04_la.png", "bird/bird01.PNG"} <= names


def test_run_directory_gets_split_lists_excluded_images_and_a_grid(dirty_folder, tmp_path):
    root, bad = dirty_folder
    dm = ImageClassificationDataModule(source=ImageFolderSource(root), image_size=16, batch_size=4, augment="pad_crop_flip",
                                       cache_dir=str(tmp_path / "cache"))
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(TinyClassifier(), dm)
    run = trainer.log_dir
    lines = open(os.path.join(run, "excluded_images.txt")).read().splitlines()
    listed = dict(line.split("\t") for line in lines)
    assert {"dog/truncated.jpg", "dog/empty.png", "dog/text.jpg"} <= set(listed)
    from datamodules.rundir import read_split_list

    splits = {s: read_split_list(run, s) for s in ("train", "val", "test")}
    files = {s: {f for f, _ in rows} for s, rows in splits.items()}
    assert len(files["train"]) == len(splits["train"]) == len(dm._datasets["train"])
    assert not (files["train"] & files["val"] or files["val"] & files["test"] or files["train"] & files["test"])
    assert all(c == f.split("/")[0] for f, c in splits["train"])  # class column
    assert not set(listed) & (files["train"] | files["val"] | files["test"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run, size_guidance={"images": 0})
    events.Reload()
    assert "data/train_augmented" in events.Tags()["images"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: chmod 000 does not stop reads, so an unreadable file cannot be made")
def test_unreadable_file_is_excluded(dirty_folder, tmp_path):
    root, _ = dirty_folder
    dm = ImageClassificationDataModule(source=ImageFolderSource(root), image_size=16, cache_dir=str(tmp_path))
    dm.setup("fit")
    assert "not readable" in dict(dm.excluded)["dog/unreadable.jpg"]


def test_every_mode_becomes_rgb(image_folder, tmp_path):
    dm = ImageClassificationDataModule(source=ImageFolderSource(image_folder), image_size=16, mean_std="imagenet",
                                       cache_dir=str(tmp_path))
    dm.setup("fit")
    ds = dm._datasets["train"]
    for i in range(len(ds)):
        image = ds.images.read(i)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (3, 16, 16) and y.dtype == torch.int64
    assert dm.normalize(x).dtype == torch.float32  # on the device, after the transfer


def test_empty_class_folder_and_single_class_are_errors(tmp_path):
    root = tmp_path / "f"
    make_folder(str(root), per_class=2)
    (root / "zebra").mkdir()
    (root / "zebra" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="zebra"):
        ImageClassificationDataModule(source=ImageFolderSource(str(root)), cache_dir=str(tmp_path)).setup("fit")

    one = tmp_path / "one"
    make_folder(str(one), per_class=2)
    for name in ("cat", "dog"):
        for f in (one / name).iterdir():
            f.unlink()
        (one / name).rmdir()
    with pytest.raises(ValueError, match="at least 2"):
        ImageClassificationDataModule(source=ImageFolderSource(str(one)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageClassificationDataModule(source=ImageFolderSource(str(tmp_path / "missing")))


def test_class_whose_files_are_all_broken_is_named(tmp_path):
    root = tmp_path / "f"
    make_folder(str(root), per_class=3)
    for f in (root / "dog").iterdir():
        f.write_bytes(b"")
    with pytest.raises(ValueError, match="dog"):
        ImageClassificationDataModule(source=ImageFolderSource(str(root)), cache_dir=str(tmp_path)).setup("fit")


def test_split_lists_keep_file_names_with_a_tab_or_a_newline_and_old_lists_still_read(tmp_path):
    from datamodules.rundir import read_split_list

    root = tmp_path / "odd"
    rng = np.random.default_rng(0)
    names = {"cat": ["tab\there.png", "new\nline.png", "plain.png", "ünï cödé.png", "a.png"],
             "dog": ["b.png", "c\td.png", "e.png", "f.png", "g.png"]}
    for cls, files in names.items():
        (root / cls).mkdir(parents=True)
        for f in files:
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / cls / f)
    dm = ImageClassificationDataModule(source=ImageFolderSource(str(root)), image_size=8, batch_size=2,
                                       cache_dir=str(tmp_path / "cache"))
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(TinyClassifier(num_classes=2), dm)
    rows = [row for s in ("train", "val", "test") for row in read_split_list(trainer.log_dir, s)]
    assert sorted(rows) == sorted((f"{c}/{f}", c) for c, files in names.items() for f in files)
    legacy = tmp_path / "old_run"
    (legacy / "split").mkdir(parents=True)
    (legacy / "split" / "val.txt").write_text("cat/a.png\tcat\ndog/b.png\tdog\n")
    assert read_split_list(str(legacy), "val") == [("cat/a.png", "cat"), ("dog/b.png", "dog")]


def _digit_pngs(folder, label: int, count: int, names) -> None:
    """scikit-learn's scanned digits of one class as real PNG files, under the given (bytes) names."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = digits.images[digits.target == label][:count]
    os.makedirs(folder, exist_ok=True)
    for gray, name in zip(pixels, names):
        Image.fromarray(np.rint(gray * 255 / 16).astype(np.uint8)).resize((16, 16)).save(
            os.path.join(os.fsencode(folder), name), format="PNG")


def test_file_names_that_are_not_utf8_survive_the_fit_the_split_lists_and_excluded_images(tmp_path, caplog):
    from data_factory import LightningLines

    from datamodules.rundir import read_split_list

    root = str(tmp_path / os.fsdecode(b"odd \xe9"))  # the folder itself, too
    odd = [b"\xff\xfe.png", b"caf\xe9 latin-1.png", b"ok.png", b"\x80\x81.png", b"fine.png", b"more.png"]
    _digit_pngs(os.path.join(root, "zero"), 0, 6, odd)
    _digit_pngs(os.path.join(root, "one"), 1, 6, [b"%d.png" % i for i in range(6)])
    with open(os.path.join(os.fsencode(root), b"one", b"br\xf6ken.png"), "wb") as f:
        f.write(b"not a png")
    _digit_pngs(os.path.join(root, ".two"), 2, 3, [b"%d.png" % i for i in range(3)])  # a hidden class folder
    with LightningLines(caplog) as said:
        dm = ImageClassificationDataModule(source=ImageFolderSource(root), image_size=8, batch_size=2,
                                           cache_dir=str(tmp_path / "cache"))
        trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
        trainer.fit(TinyClassifier(num_classes=2), dm)
    assert dm.class_names == ["one", "zero"]
    (line,) = said.matching("hidden folder")
    assert "['.two']" in line and "not classes" in line
    rows = [row for s in ("train", "val", "test") for row in read_split_list(trainer.log_dir, s)]
    expected = {(os.fsdecode(b"zero/" + n), "zero") for n in odd} | {(f"one/{i}.png", "one") for i in range(6)}
    assert set(rows) == expected and len(rows) == len(expected)
    for name, _ in rows:  # the names read back open the very files
        assert os.path.isfile(os.path.join(root, name))
    raw = (tmp_path / "runs" / "lightning_logs" / "version_0" / "split").glob("*.jsonl")
    assert b"file_bytes" in b"".join(p.read_bytes() for p in raw)
    listed = (tmp_path / "runs" / "lightning_logs" / "version_0" / "excluded_images.txt").read_bytes()
    assert listed.startswith(b"one/br\xf6ken.png\t")  # the name as the file system has it, byte for byte
