"""Figures a person looks at after training: samples, curves, the model diagram.

Every figure is a PNG (Agg backend, no display needed). The confusion matrix
lives in :mod:`fmnist.report` because the batch job draws it too.

Usage: ``sample_grid(images, labels, "samples.png"); training_curves(history, "curves.png")``;
``reliability_diagram(calibration.before, calibration.after, calibration.temperature, "reliability.png")``
"""

from __future__ import annotations

import logging
import os
import shutil

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from fmnist.common import names

log = logging.getLogger(__name__)
_DIAGRAM_DPI = 110  # the figures' resolution, so the diagram reads at the same size


def sample_grid(images: np.ndarray, labels: np.ndarray, path: str | os.PathLike, rows: int = 3, cols: int = 3) -> None:
    """The seed's 3×3 grid of training images with their class names."""
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows))
    for ax, image, label in zip(axes.flat, images, labels, strict=False):
        ax.imshow(image, cmap="gray")
        ax.set_title(names.CLASS_NAMES[int(label)], fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def training_curves(history: dict[str, list[float]], path: str | os.PathLike, title: str = "") -> None:
    """Loss and accuracy per epoch, training beside validation, under ``title`` (which run it was)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    if title:
        fig.suptitle(title)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=False):
        for key, style in ((metric, "-o"), (f"val_{metric}", "--o")):
            if key in history:
                ax.plot(range(1, len(history[key]) + 1), history[key], style, label=key)
        ax.set_xlabel("epoch")
        epochs = len(history.get(metric, []))
        ax.set_xlim(0.5, epochs + 0.5)  # whole epochs only, even for a one-epoch run
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def can_draw_diagrams() -> bool:
    """Whether Graphviz's ``dot``, which draws the model diagram, is on PATH."""
    return shutil.which("dot") is not None


def model_diagram(model, path: str | os.PathLike) -> bool:
    """keras.utils.plot_model, top to bottom with shapes and activations; False (and one notice) without Graphviz."""
    import keras

    if not can_draw_diagrams():
        log.warning(
            "model diagram skipped: Graphviz's dot is not on PATH (install graphviz, e.g. apt-get install graphviz)"
        )
        return False
    keras.utils.plot_model(
        model, to_file=str(path), show_shapes=True, show_layer_activations=True, rankdir="TB", dpi=_DIAGRAM_DPI
    )
    return os.path.exists(path)


def reliability_diagram(before, after, temperature: float, path: str | os.PathLike, title: str = "") -> None:
    """Accuracy against confidence per bin, before and after temperature scaling (``calibrator.Reliability``s).

    A calibrated model's bars sit on the diagonal; the legend gives each side's
    expected calibration error.
    """
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="calibrated")
    for table, style, label in (
        (before, "s--", f"logits as trained: ECE {before.error:.4f}"),
        (after, "o-", f"temperature {temperature:.3f}: ECE {after.error:.4f}"),
    ):
        ax.plot(table.confidence, table.accuracy, style, label=label)
    ax.set_xlabel("confidence (top probability), mean per bin")
    ax.set_ylabel("accuracy in the bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability{': ' + title if title else ''}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
