"""The PNG recorded with every run: source, target, prediction and error of a few test samples.

Presentation only (numpy arrays in, a file out): the engine decides what to show, this draws it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_predictions"]


def plot_predictions(source: np.ndarray, target: np.ndarray, pred: np.ndarray, path: Path) -> None:
    """Source / target / prediction / error per test sample (rows), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = source.shape[0]
    fig, axes = plt.subplots(k, 4, figsize=(10, 2.5 * k), squeeze=False)
    for i in range(k):
        panels = (("source (normalised)", source[i]), ("target u", target[i]), ("prediction", pred[i]),
                  ("error", pred[i] - target[i]))
        for j, (title, image) in enumerate(panels):
            ax = axes[i, j]
            shown = ax.imshow(image, origin="lower", cmap="RdBu_r" if j == 3 else "viridis")
            fig.colorbar(shown, ax=ax, fraction=0.046)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
