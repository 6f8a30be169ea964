"""Small real image folders (written with PIL) and a tiny LightningModule for the data-layer tests."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

CLASSES = ["bird", "cat", "dog"]


def _pixels(rng: np.random.Generator, label: int, h: int, w: int) -> np.ndarray:
    base = np.zeros((h, w, 3), np.int64)
    base[..., label] = 150  # one dominant channel per class: learnable and visible in a grid
    return np.clip(base + rng.integers(0, 100, (h, w, 3)), 0, 255).astype(np.uint8)


def save_image(path: str, rgb: np.ndarray, mode: str = "RGB") -> None:
    img = Image.fromarray(rgb)
    if mode == "I;16":
        gray = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        img = Image.fromarray(gray)  # uint16 -> mode I;16
        assert img.mode == "I;16", img.mode
    elif mode != "RGB":
        img = img.convert(mode)
    img.save(path)


# (file name pattern, mode): every mode the loader must turn into RGB, JPEG and PNG, upper-case extensions
VARIANTS = [("{}.jpg", "RGB"), ("{}.PNG", "RGB"), ("{}.JPEG", "RGB"), ("{}_l.png", "L"), ("{}_la.png", "LA"),
            ("{}_p.png", "P"), ("{}_rgba.png", "RGBA"), ("{}_i16.png", "I;16"), ("{}_cmyk.jpg", "CMYK"),
            ("{}.bmp", "RGB")]


def make_folder(root: str, per_class: int = 10, seed: int = 0, size_range=(20, 40)) -> list[str]:
    """root/<class>/*.{jpg,png,...} of varied sizes and modes; returns the written image paths."""
    rng = np.random.default_rng(seed)
    written = []
    for label, name in enumerate(CLASSES):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            pattern, mode = VARIANTS[i % len(VARIANTS)]
            h, w = rng.integers(*size_range, size=2)
            path = os.path.join(root, name, pattern.format(f"{name}{i:02d}"))
            save_image(path, _pixels(rng, label, int(h), int(w)), mode)
            written.append(path)
    return written


def add_ignored_files(root: str) -> list[str]:
    """Files the index must not even look at: hidden files, hidden folders, non-image extensions."""
    cat = os.path.join(root, "cat")
    paths = [os.path.join(cat, ".hidden.jpg"), os.path.join(cat, "notes.txt"), os.path.join(cat, ".cache", "x.jpg")]
    os.makedirs(os.path.dirname(paths[2]), exist_ok=True)
    for p in paths:
        with open(p, "wb") as f:
            f.write(b"not an image")
    os.makedirs(os.path.join(root, ".thumbnails"), exist_ok=True)  # a hidden folder is not a class
    return paths


def add_bad_files(root: str) -> dict[str, str]:
    """One of each kind of broken file in 'dog'; returns {relative path: expected words in the reason}."""
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(buf, format="JPEG")
    data = buf.getvalue()
    bad = {
        "dog/truncated.jpg": (data[: len(data) // 2], "cannot be decoded"),
        "dog/empty.png": (b"", "empty file"),
        "dog/text.jpg": (b"hello, I am text, not a JPEG\n" * 5, "not an image"),
        "dog/unreadable.jpg": (data, "not readable"),
    }
    for rel, (content, _) in bad.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(content)
    os.chmod(os.path.join(root, "dog/unreadable.jpg"), 0)
    return {rel: words for rel, (_, words) in bad.items()}


def chmod_blocks_reads(path: str) -> bool:
    """False as root, where chmod 000 does not stop reads."""
    try:
        with open(path, "rb"):
            return False
    except PermissionError:
        return True


@pytest.fixture
def image_folder(tmp_path) -> str:
    root = str(tmp_path / "images")
    make_folder(root)
    return root


@pytest.fixture
def dirty_folder(tmp_path) -> tuple[str, dict[str, str]]:
    root = str(tmp_path / "dirty")
    make_folder(root)
    add_ignored_files(root)
    bad = add_bad_files(root)
    yield root, bad
    os.chmod(os.path.join(root, "dog/unreadable.jpg"), 0o644)


def write_cifar(root: str, name: str = "cifar10", per_file: int = 20, seed: int = 0, protocol: int = 4,
                numpy1_names: bool = False) -> None:
    """A tiny CIFAR in its own pickle format (same file names, keys and byte layout as the real archives).

    ``numpy1_names`` writes the globals as numpy 1.x did (``numpy.core.multiarray``), as in the official archives.
    """
    rng = np.random.default_rng(seed)
    classes = 10 if name == "cifar10" else 100
    folder = os.path.join(root, "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if name == "cifar10" else ["train", "test"]
    for f in files:
        n = per_file if name == "cifar10" else (1000 if f == "train" else 500)  # 10 / 5 per class
        labels = (np.arange(n) % classes).tolist()
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "filenames": [f"{i}.png" for i in range(n)]}
        entry["labels" if name == "cifar10" else "fine_labels"] = labels
        data = pickle.dumps(entry, protocol=protocol)
        if numpy1_names:
            assert protocol <= 2  # GLOBAL opcodes are newline-terminated text, so a rename keeps the pickle valid
            data = data.replace(b"numpy._core.", b"numpy.core.")
        with open(os.path.join(folder, f), "wb") as fh:
            fh.write(data)
    meta_name, key = ("batches.meta", "label_names") if name == "cifar10" else ("meta", "fine_label_names")
    with open(os.path.join(folder, meta_name), "wb") as fh:
        pickle.dump({key: [f"name{i}" for i in range(classes)]}, fh, protocol=protocol)


class TinyClassifier(pl.LightningModule):
    """A conv + linear: enough to run fit/test through the DataModule without depending on lightning_modules."""

    def __init__(self, num_classes: int = 3, batch_size: int = 4):
        super().__init__()
        self.batch_size = batch_size  # only read by BatchSizeFinder tests
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, 2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                       torch.nn.Flatten(), torch.nn.Linear(4, num_classes))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1] == 3
        self.seen.append(y.clone())
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", torch.nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def tiny_trainer(tmp_path, **kwargs) -> pl.Trainer:
    from pytorch_lightning.loggers import TensorBoardLogger

    defaults = dict(accelerator="cpu", devices=1, logger=TensorBoardLogger(str(tmp_path / "runs")),
                    enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


class LightningLines:
    """The lines Lightning's rank-zero logger says while the ``with`` block runs (its logger does not propagate, so
    caplog alone misses them)."""

    def __init__(self, caplog):
        import logging

        self.caplog = caplog
        self.logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
        self.lines: list[str] = []

    def __enter__(self) -> "LightningLines":
        import logging

        self.caplog.clear()
        self.logger.addHandler(self.caplog.handler)
        self._level = self.caplog.at_level(logging.INFO, logger=self.logger.name)
        self._level.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._level.__exit__(*exc)
        self.logger.removeHandler(self.caplog.handler)
        self.lines = list(dict.fromkeys(r.getMessage() for r in self.caplog.records))  # once, in order

    def matching(self, words: str) -> list[str]:
        return [line for line in self.lines if words in line]
