"""Classification metrics and their figures, shared by the Evaluator and the batch summary.

Both report on (true label, predicted label) pairs the same way, so the
numbers in ``metrics.json`` and in a batch job's summary are comparable.

Usage: ``m = classification_metrics(labels, preds); png = confusion_matrix_png(m["confusion_matrix"])``
"""

from __future__ import annotations

import io

import numpy as np

from fmnist.common import names


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Rows are true classes, columns predicted ones."""
    matrix = np.zeros((names.NUM_CLASSES, names.NUM_CLASSES), np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return matrix


def classification_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict:
    """Accuracy, per-class precision/recall/support and the confusion matrix, JSON-ready."""
    matrix = confusion_matrix(labels, predictions)
    true_positives = np.diag(matrix).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.nan_to_num(true_positives / matrix.sum(axis=0))
        recall = np.nan_to_num(true_positives / matrix.sum(axis=1))
    return {
        "accuracy": float(true_positives.sum() / max(len(labels), 1)),
        "num_examples": len(labels),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "support": int(matrix[i].sum())}
            for i, name in enumerate(names.CLASS_NAMES)
        },
        "confusion_matrix": matrix.tolist(),
    }


def confusion_matrix_png(matrix, title: str = "Confusion matrix", ylabel: str = "true") -> bytes:
    """Counts with row-normalised shading, so rare and common classes read alike; PNG bytes.

    Bytes rather than a path, so the batch job can write it through any Beam file system.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks = range(names.NUM_CLASSES)
    ax.set_xticks(ticks, names.CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(ticks, names.CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    for i in ticks:
        for j in ticks:
            if counts[i, j]:
                ax.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if shares[i, j] > 0.5 else "black",
                )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
