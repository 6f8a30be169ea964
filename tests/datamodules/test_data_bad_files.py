"""Bad files never crash the data layer: each is excluded with its reason, at indexing or when it goes bad mid-fit."""

import io
import os
import warnings

import numpy as np
import pytest
import torch
from data_factory import TinyClassifier, tiny_trainer
from PIL import Image
from pytorch_lightning import Callback
from sklearn.datasets import load_digits, load_sample_images

from datamodules import ImageClassificationDataModule
from datamodules.sources import ImageFolderSource
from datamodules.datasets import FileImages, ImageDataset
from deploy.images import ImageDecodeError, read_image


def _photo_crops(photo: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    h, w = photo.shape[:2]
    crops = []
    for _ in range(count):
        size = int(rng.integers(60, 160))
        y, x = int(rng.integers(0, h - size)), int(rng.integers(0, w - size))
        crops.append(photo[y:y + size, x:x + size])
    return crops


def real_image_folder(root: str, per_class: int = 8, seed: int = 0) -> dict[str, list[str]]:
    """train/ val/ test/ of three classes: crops of scikit-learn's two JPEG photos, and its scanned digits as PNGs.

    Pre-split, so the bad files added to train/ are certainly in the split whose mean/std is computed.
    """
    rng = np.random.default_rng(seed)
    china, flower = load_sample_images().images
    digits = np.rint(load_digits().images * (255 / 16)).astype(np.uint8)
    sources = {"china": _photo_crops(china, 3 * per_class, rng), "flower": _photo_crops(flower, 3 * per_class, rng),
               "digit": [np.asarray(Image.fromarray(d).resize((48, 48), Image.BILINEAR)) for d in digits[:3 * per_class]]}
    written: dict[str, list[str]] = {}
    for name, images in sources.items():
        for split_index, split in enumerate(("train", "val", "test")):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i, pixels in enumerate(images[split_index * per_class:(split_index + 1) * per_class]):
                ext = "jpg" if name != "digit" else "png"
                path = os.path.join(folder, f"{name}{i:02d}.{ext}")
                Image.fromarray(pixels).save(path)
                written.setdefault(split, []).append(path)
    return written


def bomb_png(path: str, width: int, height: int) -> None:
    """A 1-bit PNG: a few kilobytes on disk, ``width * height`` pixels once decoded."""
    Image.new("1", (width, height)).save(path, optimize=True)


def add_every_bad_file(folder: str) -> dict[str, str]:
    """{file name: words its exclusion reason must contain}, written into ``folder``."""
    buf = io.BytesIO()
    Image.fromarray(load_sample_images().images[0][:200, :200]).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    os.symlink(os.path.join(folder, "deleted_long_ago.jpg"), os.path.join(folder, "dangling.jpg"))
    with open(os.path.join(folder, "empty.png"), "wb"):
        pass
    with open(os.path.join(folder, "truncated.jpg"), "wb") as f:
        f.write(jpeg[: len(jpeg) // 3])
    with open(os.path.join(folder, "notes.png"), "w") as f:
        f.write("shopping list: milk, eggs\n" * 20)
    bomb_png(os.path.join(folder, "bomb.png"), 14000, 13000)  # 182 MP: over twice Pillow's limit
    bomb_png(os.path.join(folder, "huge.png"), 10000, 10000)  # 100 MP: where Pillow only warns
    return {"dangling.jpg": "symbolic link", "empty.png": "empty file", "truncated.jpg": "cannot be decoded",
            "notes.png": "not an image", "bomb.png": "decompression bomb", "huge.png": "decompression bomb"}


def test_pillow_refuses_the_test_bomb_and_only_warns_below_twice_its_limit(tmp_path):
    bomb_png(str(tmp_path / "bomb.png"), 14000, 13000)
    bomb_png(str(tmp_path / "huge.png"), 10000, 10000)
    assert os.path.getsize(tmp_path / "bomb.png") < 100_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "bomb.png")
    with pytest.warns(Image.DecompressionBombWarning):
        Image.open(tmp_path / "huge.png").close()


def test_folder_with_every_kind_of_bad_file_sets_up_trains_and_lists_each_with_its_reason(tmp_path):
    root = str(tmp_path / "photos")
    good = real_image_folder(root)
    bad = add_every_bad_file(os.path.join(root, "train", "china"))
    dm = ImageClassificationDataModule(source=ImageFolderSource(root), image_size=24, batch_size=8, augment="pad_crop_flip",
                                       cache_dir=str(tmp_path / "cache"))
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_val_batches=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # even as an error it is only a reason
        trainer.fit(TinyClassifier(), dm)

    listed = dict(line.split("\t") for line in open(os.path.join(trainer.log_dir, "excluded_images.txt")).read()
                  .splitlines())
    assert set(listed) == {f"train/china/{name}" for name in bad}
    for name, words in bad.items():
        assert words in listed[f"train/china/{name}"], (name, listed[f"train/china/{name}"])
        assert "\n" not in listed[f"train/china/{name}"] and "Traceback" not in listed[f"train/china/{name}"]
    assert len(dm._datasets["train"]) == len(good["train"]) == 24
    assert dm.stats_origin == "computed" and np.all(np.isfinite(dm.preprocessing.std))
    assert len(torch.cat(trainer.model.seen)) == 24  # one epoch of 3 full batches: no sample was dropped


def test_read_image_raises_only_image_decode_error_naming_the_file(tmp_path, monkeypatch):
    bad = add_every_bad_file(str(tmp_path))
    os.mkdir(tmp_path / "folder.png")
    os.mkfifo(tmp_path / "pipe.png")  # open() on a FIFO would block forever
    bad.update({"folder.png": "not a regular file", "pipe.png": "not a regular file", "missing.jpg": "no such file"})
    for name, words in bad.items():
        path = str(tmp_path / name)
        with pytest.raises(ImageDecodeError) as caught:
            read_image(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: ") and words in message and "\n" not in message, message

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "fine.png")

    def plugin_bug(self, *args, **kwargs):
        raise IndexError("tile extends beyond the image")

    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", plugin_bug)
    with pytest.raises(ImageDecodeError, match=r"fine\.png: cannot be decoded \(IndexError: tile extends"):
        read_image(str(tmp_path / "fine.png"))


def test_a_40_megapixel_photo_still_reads(tmp_path):
    photo = Image.fromarray(load_sample_images().images[1]).resize((7296, 5472), Image.BILINEAR)
    photo.save(tmp_path / "camera.jpg", quality=85)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even Pillow's decompression-bomb warning
        rgb = read_image(str(tmp_path / "camera.jpg"))
    assert rgb.shape == (5472, 7296, 3) and rgb.dtype == np.uint8 and 0 < rgb.mean() < 255


class BreakAFileAtEpoch(Callback):
    """Truncates one training image when the given epoch starts, as a sync tool rewriting the folder would."""

    def __init__(self, path: str, epoch: int):
        self.path, self.epoch = path, epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            with open(self.path, "r+b") as f:
                f.truncate(100)


def test_a_file_that_goes_bad_mid_fit_is_read_as_its_classmate_and_listed_once(tmp_path):
    root = str(tmp_path / "photos")
    real_image_folder(root)
    # decoded_cache off: the files are read every epoch (from the decoded store, a file that breaks is not read again)
    dm = ImageClassificationDataModule(source=ImageFolderSource(root), image_size=24, batch_size=8, augment="pad_crop_flip",
                                       cache_dir=str(tmp_path / "cache"), decoded_cache=False)
    dm.setup("fit")
    train = dm._datasets["train"]
    victim = next(i for i in range(len(train)) if train.images.name(i) == "train/flower/flower03.jpg")
    model = TinyClassifier()
    trainer = tiny_trainer(tmp_path, max_epochs=3, limit_val_batches=0, num_sanity_val_steps=0,
                           callbacks=[BreakAFileAtEpoch(train.images.paths[victim], epoch=1)])
    trainer.fit(model, dm)

    per_epoch = [torch.cat(model.seen[i * 3:(i + 1) * 3]) for i in range(3)]
    assert all(len(labels) == 24 for labels in per_epoch)  # no sample dropped, no batch boundary moved
    assert all(torch.equal(torch.bincount(labels, minlength=3), torch.tensor([8, 8, 8])) for labels in per_epoch)
    lines = open(os.path.join(trainer.log_dir, "excluded_images.txt")).read().splitlines()
    assert len(lines) == 1, lines  # met in epochs 1 and 2, listed once
    name, reason = lines[0].split("\t")
    assert name == "train/flower/flower03.jpg" and "went bad during the fit" in reason and "cannot be decoded" in reason

    # the stand-in is deterministic: the next flower image in index order, with that image's own augmentation
    stand_in = next(j for j in range(victim + 1, len(train)) if train.labels[j] == train.labels[victim])
    x, y = train[(victim, 2)]
    x2, y2 = train[(stand_in, 2)]
    assert torch.equal(x, x2) and y == y2 == train.labels[victim]


def test_workers_that_meet_the_same_bad_file_list_it_once(tmp_path):
    root = str(tmp_path / "photos")
    paths = real_image_folder(root, per_class=4)["train"]
    labels = np.repeat(np.arange(3), 4)
    run = str(tmp_path / "run")
    identity = lambda image: torch.from_numpy(np.ascontiguousarray(image[:8, :8]))  # noqa: E731
    workers = [ImageDataset(FileImages(paths, root), labels, lambda image: {"image": identity(image)},
                            report_dir=run) for _ in range(2)]  # two workers' copies: no shared memory
    os.remove(paths[5])
    for dataset in workers:
        for epoch in range(2):
            assert dataset[(5, epoch)][1] == 1
    assert open(os.path.join(run, "excluded_images.txt")).read().splitlines() == [
        "train/flower/flower01.jpg\twent bad during the fit, read as another image of its class from then on: "
        "no such file"]
