"""Deterministic stratified train/val/test split (seed 1's 6:2:2 by default).

Each class is shuffled with its own generator derived from (seed, class) and cut by the ratios, so every class
keeps the ratios within one image and adding images to one class never moves the images of another.
scikit-learn's ``train_test_split(stratify=...)`` needs two calls for three parts and refuses classes with a
single image, which real business folders do have.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def check_ratios(ratios: Sequence[float]) -> list[float]:
    """Validate YAML ``split: [train, val, test]``; returns them as floats."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or ratios[0] <= 0:
        raise ValueError(f"split must be three fractions [train, val, test] with train > 0, got {list(ratios)}")
    if abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must add up to 1, got {list(ratios)} (sum {sum(ratios):g})")
    return [float(r) for r in ratios]


def stratified_split(labels: Sequence[int], ratios: Sequence[float], seed: int) -> tuple[np.ndarray, ...]:
    """Indices (train, val, test), each sorted, disjoint, together covering ``range(len(labels))``.

    Per class of n items: val = round(n * r_val), test = round(n * r_test), train = the rest (at least one:
    a class the model never trains on cannot be learned).
    """
    ratios = check_ratios(ratios)
    labels = np.asarray(labels)
    parts: list[list[np.ndarray]] = [[], [], []]
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[np.random.default_rng([seed, int(cls)]).permutation(len(members))]
        n = len(members)
        n_val, n_test = int(round(n * ratios[1])), int(round(n * ratios[2]))
        while n - n_val - n_test < 1 and (n_val or n_test):
            if n_test >= n_val and n_test:
                n_test -= 1
            else:
                n_val -= 1
        n_train = n - n_val - n_test
        parts[0].append(members[:n_train])
        parts[1].append(members[n_train:n_train + n_val])
        parts[2].append(members[n_train + n_val:])
    return tuple(np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts)


def holdout_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (keep, holdout) indices: carves a validation split out of an official train set."""
    keep, held, _ = stratified_split(labels, [1.0 - fraction, fraction, 0.0], seed)
    return keep, held
