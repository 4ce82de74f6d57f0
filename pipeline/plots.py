"""Figures a person looks at after training: samples, curves, the model diagram.

Every figure is a PNG (Agg backend, no display needed). The confusion matrix
lives in :mod:`fmnist.report` because the batch job draws it too.

Usage: ``sample_grid(images, labels, "samples.png"); training_curves(history, "curves.png")``
"""

from __future__ import annotations

import logging
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fmnist import names  # noqa: E402

log = logging.getLogger(__name__)


def sample_grid(images: np.ndarray, labels: np.ndarray, path: str | os.PathLike, rows: int = 3, cols: int = 3) -> None:
    """The seed's 3×3 grid of training images with their class names."""
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows))
    for ax, image, label in zip(axes.flat, images, labels):
        ax.imshow(image, cmap="gray")
        ax.set_title(names.CLASS_NAMES[int(label)], fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def training_curves(history: dict[str, list[float]], path: str | os.PathLike) -> None:
    """Loss and accuracy per epoch, training beside validation."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-o"), (f"val_{metric}", "--o")):
            if key in history:
                ax.plot(range(1, len(history[key]) + 1), history[key], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def model_diagram(model, path: str | os.PathLike) -> bool:
    """keras.utils.plot_model, left to right with shapes; False (and one notice) without graphviz."""
    import keras

    try:
        keras.utils.plot_model(model, to_file=str(path), show_shapes=True, rankdir="LR", dpi=96)
    except (ImportError, OSError) as e:
        log.warning("model diagram skipped: %s (install graphviz, e.g. apt-get install graphviz)", e)
        return False
    return os.path.exists(path)
