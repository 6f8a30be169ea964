"""Images/s of the train pipeline: decode + the rrc_affine_dropout preset + normalize + collate, albumentations vs torchvision v2.

Both sides decode through ``deploy.images.read_image`` (what training and the device use), so the comparison is the
augmentation library. The albumentations side is the real DataModule loader (imagefolder source, epoch-seeded
sampler); the torchvision side applies the same operations with transforms.v2 on uint8 tensors:
RandomResizedCrop, transpose (p 0.5), horizontal and vertical flips, RandomAffine (p 0.5), hue/saturation
(p 0.5), brightness/contrast (p 0.5), RandomErasing as the coarse dropout (p 0.5), to float + Normalize.

    python benchmarks/data_throughput.py [--images 320] [--workers 1 2] [--batch-size 32] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datamodules import ImageClassificationDataModule  # noqa: E402
from datamodules.sources import ImageFolderSource  # noqa: E402
from datamodules.datamodule import init_loader_worker  # noqa: E402
from datamodules.presets import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from deploy.images import read_image  # noqa: E402


def write_jpegs(root: str, count: int, classes: int = 2, size=(375, 500), seed: int = 0) -> None:
    """Photo-like 500x375 JPEGs (smooth gradients, shapes, noise) at quality 90: ~40-70 kB each."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(count):
        folder = os.path.join(root, f"class_{i % classes}")
        os.makedirs(folder, exist_ok=True)
        base = np.stack([(xx * rng.uniform(0.2, 0.6) + yy * rng.uniform(0.1, 0.5) + rng.uniform(0, 255)) % 256
                         for _ in range(3)], axis=2)
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(30, 150)
        base[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
        image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


class TorchvisionS2(Dataset):
    """The same decode and the rrc_affine_dropout operations in torchvision.transforms.v2."""

    def __init__(self, paths: list[str], size: int = 224):
        from torchvision.transforms import v2

        self.paths = paths
        self.transform = v2.Compose([
            v2.ToImage(),
            v2.RandomResizedCrop(size, antialias=True),
            v2.RandomApply([v2.Lambda(lambda t: t.transpose(-1, -2))], p=0.5),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomVerticalFlip(0.5),
            v2.RandomApply([v2.RandomAffine(degrees=45, translate=(0.0625, 0.0625), scale=(0.9, 1.1),
                                            interpolation=v2.InterpolationMode.BILINEAR)], p=0.5),
            v2.RandomApply([v2.ColorJitter(saturation=0.12, hue=0.11)], p=0.5),
            v2.RandomApply([v2.ColorJitter(brightness=0.1, contrast=0.1)], p=0.5),
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomErasing(p=0.5, scale=(0.0025, 0.0225), ratio=(0.5, 2.0)),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(read_image(self.paths[i])), 0


def images_per_second(loader: DataLoader, passes: int = 2) -> float:
    """Throughput of the last pass; the first warms the (persistent) workers and the page cache."""
    rate = 0.0
    for _ in range(passes):
        start, seen = time.perf_counter(), 0
        for x, _ in loader:
            seen += x.shape[0]
        rate = seen / (time.perf_counter() - start)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320, help="JPEGs to generate (about 90%% form the train split)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="a smoke run: --images 48 --workers 1 2 --batch-size 16")
    parser.add_argument("--dir", default=None, help="reuse/keep the JPEGs here instead of a temp folder")
    args = parser.parse_args()
    if args.quick:
        args.images, args.workers, args.batch_size = 48, [1, 2], 16
    # read_image returns PIL's read-only buffer; v2.ToImage warns about it once per worker (harmless here)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

    tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="edgecls-bench-")
    root = args.dir or tmp.name
    if not os.path.isdir(os.path.join(root, "class_0")):
        write_jpegs(root, args.images)
    cache = os.path.join(root, ".edgecls_cache")

    # one DataModule, set up once (one `data:` line); each worker count is its train loader with that many workers
    dm = ImageClassificationDataModule(source=ImageFolderSource(root), image_size=224, augment="rrc_affine_dropout",
                                       mean_std="imagenet", split=[0.9, 0.05, 0.05], batch_size=args.batch_size,
                                       num_workers=max(args.workers), persistent_workers=True, cache_dir=cache,
                                       decoded_cache=False)  # decode every epoch, as the torchvision side does
    dm.setup("fit")
    rows = []
    for workers in args.workers:
        dm.num_workers, dm.persistent_workers = workers, workers > 0
        albu = images_per_second(dm.train_dataloader())
        paths = dm.dataset("train").images.paths
        tv_loader = DataLoader(TorchvisionS2(paths), batch_size=args.batch_size, shuffle=True, drop_last=True,
                               num_workers=workers, persistent_workers=workers > 0, worker_init_fn=init_loader_worker)
        tv = images_per_second(tv_loader)
        rows.append((workers, len(paths), albu, tv))

    print(f"train pipeline: decode (read_image) + rrc_affine_dropout + normalize + collate, {args.images} JPEGs 500x375 -> 224x224, "
          f"batch {args.batch_size}, torch {torch.__version__}, {os.cpu_count()} CPUs")
    print(f"{'workers':>7} | {'albumentations img/s':>20} | {'torchvision v2 img/s':>20} | {'ratio':>6} | target 1.3x")
    print("-" * 78)
    for workers, n, albu, tv in rows:
        ratio = albu / tv
        print(f"{workers:>7} | {albu:>20.1f} | {tv:>20.1f} | {ratio:>5.2f}x | {'met' if ratio >= 1.3 else 'NOT met'}")
    print()
    for workers, n, albu, tv in rows:
        ratio = albu / tv
        print(f"target albumentations >= 1.3x torchvision v2 with {workers} worker(s), {n} train images: {ratio:.2f}x -> "
              f"{'met' if ratio >= 1.3 else 'NOT met'}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
