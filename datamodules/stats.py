"""Exact per-channel mean/std over every training pixel, and its JSON cache.

Seed 2 averaged per-batch means and took sqrt(E[x^2] - mean^2) of batch averages: biased whenever batches differ
in size, and the std formula mixes a mean of means with a per-batch second moment. Here each image contributes
integer sums of its pixels and squared pixels (exact, order-independent, so threads do not change the result);
the division happens once at the end in float64.
"""

from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
from pytorch_lightning.utilities import rank_zero_info

from datamodules.rundir import read_json_checked, write_json_checked


@dataclass
class PixelSums:
    """Running integer sums of 0-255 pixel values per RGB channel."""

    count: int = 0  # pixels per channel
    total: list[int] = field(default_factory=lambda: [0, 0, 0])
    squares: list[int] = field(default_factory=lambda: [0, 0, 0])

    def add_images(self, images: np.ndarray) -> None:
        """Add one HWC image or an NHWC batch of uint8 RGB images."""
        flat = images.reshape(-1, 3)
        self.count += flat.shape[0]
        wide = flat.astype(np.int64)
        for c in range(3):
            col = wide[:, c]
            self.total[c] += int(col.sum())
            self.squares[c] += int(np.dot(col, col))

    def merge(self, other: "PixelSums") -> None:
        self.count += other.count
        self.total = [a + b for a, b in zip(self.total, other.total)]
        self.squares = [a + b for a, b in zip(self.squares, other.squares)]

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Population mean and std (numpy's ddof=0) on the 0-1 scale."""
        if self.count == 0:
            raise ValueError("cannot compute mean/std: the training split has no pixels")
        n = self.count
        mean = [t / (255.0 * n) for t in self.total]
        # n^2 * var * 255^2 = n * sum(x^2) - sum(x)^2, exact in Python integers before the one division
        std = [float(np.sqrt((n * s - t * t) / (n * n))) / 255.0 for s, t in zip(self.squares, self.total)]
        return mean, std


def sum_pixels(read: Callable[[int], Optional[np.ndarray]], count: int, threads: int = 1) -> PixelSums:
    """Sum pixels of ``read(i)`` for i < count (``None`` = skip); threads help because decode and resize drop the GIL."""

    def one(i: int) -> PixelSums:
        sums = PixelSums()
        image = read(i)
        if image is not None:
            sums.add_images(image)
        return sums

    result = PixelSums()
    if threads <= 1:
        for i in range(count):
            result.merge(one(i))
    else:
        with ThreadPoolExecutor(threads) as pool:
            for part in pool.map(one, range(count), chunksize=16):
                result.merge(part)
    return result


def fingerprint(parts: Iterable[object]) -> str:
    """A short stable hash of what the statistics depend on (file list with sizes/mtimes, resize, source)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def file_signature(paths: Sequence[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) per file: a changed or replaced file changes the fingerprint.

    A file that cannot be stat-ed (a dangling link, removed since it was listed) gets (-1, -1): the decode pass
    that follows excludes it with its reason, and its coming back changes the fingerprint.
    """
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append((os.path.abspath(p), -1, -1))
            continue
        out.append((os.path.abspath(p), st.st_size, st.st_mtime_ns))
    return out


def _check_mean_std(data: dict) -> tuple[list[float], list[float]]:
    """The cache's values, or ValueError: three finite means and three finite positive stds."""
    try:
        mean, std = [float(v) for v in data["mean"]], [float(v) for v in data["std"]]
    except (KeyError, TypeError, ValueError):
        raise ValueError("has no mean and std lists") from None
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"holds {len(mean)} means and {len(std)} stds instead of 3 each")
    if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise ValueError(f"holds mean {mean} std {std}, not finite with positive stds")
    return mean, std


def load_cached_mean_std(cache_dir: Optional[str], key: str) -> Optional[tuple[list[float], list[float]]]:
    """The cached statistics, or None: missing, or not what was written (said in one line, then recomputed)."""
    if not cache_dir:
        return None
    path = os.path.join(cache_dir, f"mean_std-{key}.json")
    data, problem = read_json_checked(path)
    if data is not None:
        try:
            return _check_mean_std(data)
        except ValueError as exc:
            problem = str(exc)
    if problem is not None:
        rank_zero_info(f"mean/std cache {path} {problem}: computing the statistics again")
    return None


def save_cached_mean_std(cache_dir: Optional[str], key: str, mean: list[float], std: list[float],
                         info: dict) -> Optional[str]:
    if not cache_dir:
        return None
    path = os.path.join(cache_dir, f"mean_std-{key}.json")
    try:
        write_json_checked(path, {"mean": mean, "std": std, **info})
    except OSError:
        return None  # a read-only cache dir only costs a recomputation next time
    return path
