"""Figures logged to TensorBoard."""

from __future__ import annotations

from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def confusion_matrix_figure(matrix: torch.Tensor, class_names: Optional[Sequence[str]] = None) -> "plt.Figure":
    """Row-normalised confusion matrix (rows: true class, columns: predicted), with counts in small matrices."""
    counts = matrix.double()
    rows = counts.sum(dim=1, keepdim=True).clamp(min=1)
    frac = (counts / rows).numpy()
    k = frac.shape[0]
    names = list(class_names) if class_names and len(class_names) == k else [str(i) for i in range(k)]
    # TensorBoard shows an image card about 420 px wide at its default size: up to 12 classes the figure is that
    # wide, so its counts and names are drawn at the size they are read (a larger figure is scaled down, and its
    # 7-point digits became unreadable at 10 classes); more classes grow it (the card's enlarge button shows it whole)
    size = 5.2 if k <= 12 else min(14.0, 0.42 * k)
    fig, ax = plt.subplots(figsize=(size, size), dpi=80)
    ax.imshow(frac, vmin=0.0, vmax=1.0, cmap="Blues")
    if k <= 30:
        label_size = 12 if k <= 12 else 9
        ax.set_xticks(range(k), names, rotation=90 if max(map(len, names)) > 2 else 0, fontsize=label_size)
        ax.set_yticks(range(k), names, fontsize=label_size)
        if k <= 15:
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=13 if k <= 6 else 11 if k <= 10 else 8,
                            color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted", fontsize=12)
    ax.set_ylabel("true", fontsize=12)
    fig.tight_layout()
    return fig
