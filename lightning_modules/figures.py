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
    size = min(12.0, 2.5 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(size, size), dpi=80)
    ax.imshow(frac, vmin=0.0, vmax=1.0, cmap="Blues")
    if k <= 30:
        ax.set_xticks(range(k), names, rotation=90, fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
        if k <= 15:
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return fig
