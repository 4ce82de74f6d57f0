"""How well each candidate novelty score tells held-out Fashion-MNIST from images that are not like it.

Trains a profile as ``fmnist train`` does (``--epochs`` to shorten it), runs
the exporter's Calibrator (temperature, and the novelty score the served graph
carries), then scores the 10,000 test images and every set of
``bench/ood_sets.py`` with each candidate:

- ``1-confidence``: one minus the top calibrated probability (the baseline of the issue);
- ``energy``: minus the log-sum-exp of the logits (Liu et al. 2020);
- ``feature Mahalanobis``: last hidden activations to the nearest class mean, shared covariance (Lee et al. 2018);
- ``pixel PCA residual``: the part of the image 50 principal components of the training images miss;
- ``pixel Mahalanobis`` (full shared covariance) and ``feature nearest neighbour`` (cosine, 10,000
  training images): the two halves of the score served before, each a large product per image;
- ``pixel deviations``, ``feature prototypes`` and ``texture``: the distances of the served
  score (:mod:`fmnist.pipeline.novelty`), alone (``texture`` only where the score has it: the
  profile's default, as ``fmnist train``'s, or ``--texture-distance``);
- ``format gaps``: its weighted framing and contrast gaps, alone (zero for every garment: ties);
- ``served``: the standardised maximum of the distances plus the gaps, as ``ood_scores`` computes it.

Each cell is the AUROC of Fashion-MNIST test images against the set (1 = every
image of the set scores above every test image); ``flagged`` is the share the
served threshold flags. Accuracy and calibration come with it. Nothing is
timed. Needs ``pip install scikit-learn scikit-image``.

Usage: ``nice -n 15 python bench/ood.py --profile mlp``;
``nice -n 15 python bench/ood.py --profile cnn --epochs 3 --json out.json``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ood_sets  # beside this script

_PCA_COMPONENTS = 50
_PIXEL_SHRINKAGE = (
    1e-4  # of the mean eigenvalue, for the full-covariance Mahalanobis distances (served until 28's second round)
)
_NEIGHBOURS = 10_000  # training images the nearest-neighbour candidate compares with


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an outside score > an inside score), ties counted half."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside]))


def _candidates(fitted, calibration, network):
    """name → function(images uint8 [n, 28, 28]) → scores [n], higher = less like the training images."""
    from fmnist.pipeline import calibrator, novelty
    from fmnist.pipeline.model import preprocess

    def outputs(images):
        return network.predict(preprocess(images).numpy(), batch_size=1024, verbose=0)

    def class_gaussian(x, shrinkage=None):
        """Class means and the shared covariance's whitening: shrunk, or its pseudo-inverse's (``None``)."""
        present = np.unique(fitted.labels)
        means = np.stack([x[fitted.labels == c].mean(axis=0) for c in present])
        centred = x - means[np.searchsorted(present, fitted.labels)]
        eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(centred))
        if shrinkage is None:
            kept = eigenvalues > 1e-15 * eigenvalues.max()
            return means, eigenvectors[:, kept] / np.sqrt(eigenvalues[kept])
        return means, eigenvectors / np.sqrt(np.maximum(eigenvalues, 0) + shrinkage * eigenvalues.mean())

    train_features = outputs(fitted.images)[0].astype(np.float64)
    feature_means, feature_whitening = class_gaussian(train_features)
    pixels = fitted.images.reshape(len(fitted), -1) / 255.0
    pixel_means, pixel_whitening = class_gaussian(pixels, _PIXEL_SHRINKAGE)
    mean_pixels = pixels.mean(axis=0)
    components = np.linalg.svd(pixels - mean_pixels, full_matrices=False)[2][:_PCA_COMPONENTS]
    rng = np.random.default_rng(0)
    sample = train_features[rng.choice(len(train_features), _NEIGHBOURS, replace=False)]
    sample /= np.linalg.norm(sample, axis=1, keepdims=True)
    layer = calibration.novelty

    def to_nearest_mean(x, means, whitening):
        return np.concatenate(
            [
                (((x[i : i + 1024] @ whitening)[:, None, :] - (means @ whitening)[None]) ** 2).sum(-1).min(1)
                for i in range(0, len(x), 1024)
            ]
        )

    def to_nearest_neighbour(features):
        unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        return np.concatenate([1 - (unit[i : i + 1024] @ sample.T).max(1) for i in range(0, len(unit), 1024)])

    def pca_residual(images):
        x = images.reshape(len(images), -1) / 255.0 - mean_pixels
        return ((x - (x @ components.T) @ components) ** 2).sum(axis=1)

    def parts(images, features):
        chunks = range(0, len(images), 1024)
        distances = np.concatenate(
            [layer.distances(images[i : i + 1024], features[i : i + 1024]).numpy() for i in chunks]
        )
        gaps = np.concatenate([novelty.format_gaps(images[i : i + 1024]).numpy() for i in chunks])
        return distances, gaps @ layer.format_weights.numpy()

    def every(images):
        features, logits = outputs(images)
        distances, gaps = parts(images, features)
        return {
            "1-confidence": 1 - calibrator.softmax(logits, calibration.temperature).max(axis=1),
            "energy": -np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) - logits.max(1),
            "feature Mahalanobis": to_nearest_mean(features.astype(np.float64), feature_means, feature_whitening),
            "pixel PCA residual": pca_residual(images),
            "pixel Mahalanobis": to_nearest_mean(images.reshape(len(images), -1) / 255.0, pixel_means, pixel_whitening),
            "feature nearest neighbour": to_nearest_neighbour(features.astype(np.float64)),
            "pixel deviations": distances[:, 0],
            "feature prototypes": distances[:, 1],
            # Not in the score (NoveltyConfig.texture off): no column of its own either.
            "texture": distances[:, 2] if layer.texture else np.full(len(images), np.nan),
            "format gaps": gaps,
            "served": novelty.scores_of(layer, images, features),
        }

    return every


def _auroc_or_none(inside: np.ndarray, outside: np.ndarray) -> float | None:
    """The AUROC to 4 places, or None for a candidate the run does not compute (NaN scores)."""
    return round(auroc(inside, outside), 4) if np.isfinite(inside).all() else None


def _mark(name: str) -> str:
    """What a set's row says besides its name: clothing, unseen, prepared like Fashion-MNIST."""
    source = name.removesuffix("_prepared")
    marks = [
        *(["clothing"] if source in (*ood_sets.CLOTHING, "test") else []),
        *(["unseen"] if source in ood_sets.UNSEEN else []),
        *(["prepared"] if name != source else []),
    ]
    return f" ({', '.join(marks)})" if marks else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="mlp")
    parser.add_argument("--epochs", type=int, help="default: the profile's")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow's intra- and inter-op threads")
    parser.add_argument("--json", help="also write the table here")
    parser.add_argument(
        "--texture-distance", action=argparse.BooleanOptionalAction, help="default: the profile's, as fmnist train's"
    )
    args = parser.parse_args(argv)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from fmnist.pipeline import calibrator, data, evaluator, novelty, trainer
    from fmnist.pipeline.model import PROFILES, features_and_logits

    dataset = data.load()
    trained = trainer.run(trainer.TrainConfig(profile=args.profile, epochs=args.epochs, seed=args.seed), dataset.train)
    fitted = data.Split(dataset.train.images[: trained.fitted], dataset.train.labels[: trained.fitted])
    accuracy = evaluator.run(trained.model, dataset.test, evaluator.EvalConfig()).metrics["accuracy"]
    texture = PROFILES[args.profile].texture_distance if args.texture_distance is None else args.texture_distance
    config = novelty.NoveltyConfig(texture=texture)
    calibration = calibrator.run(trained.model, fitted, trained.held_back, dataset.test, config)
    score = _candidates(fitted, calibration, features_and_logits(trained.model))

    sets = ood_sets.build(np.random.default_rng(0), dataset.test.images)
    inside = score(dataset.test.images)
    threshold = float(calibration.novelty.threshold.numpy())
    table = {}
    for name, images in sets.items():
        outside = score(images)
        table[name] = {m: _auroc_or_none(inside[m], outside[m]) for m in inside}
        table[name]["flagged"] = round(float(np.mean(outside["served"] > threshold)), 4)
        table[name]["images"] = len(images)
    summary = {
        "profile": args.profile,
        "epochs": trained.history and len(next(iter(trained.history.values()))),
        "accuracy": accuracy,
        "test_flagged": calibration.metrics["novelty"]["test_flagged"],
        **calibration.metrics,
        "auroc": table,
    }
    methods = list(inside)
    print(f"{args.profile}, {summary['epochs']} epochs: accuracy {accuracy:.4f}, {json.dumps(calibration.metrics)}")
    print("| set | images | " + " | ".join(methods) + " | flagged |")
    print("|---" * (len(methods) + 3) + "|")
    for name, row in table.items():
        mark = _mark(name)
        cells = " | ".join("—" if row[m] is None else f"{row[m]:.4f}" for m in methods)
        print(f"| {name}{mark} | {row['images']} | {cells} | {row['flagged']:.1%} |")
    print(
        f"| Fashion-MNIST test | {len(dataset.test)} | "
        + " | ".join("" for _ in methods)
        + f" | {summary['test_flagged']:.1%} |"
    )
    as_made = (*ood_sets.DEVELOPMENT, *ood_sets.UNSEEN)
    targets = {name: row["served"] for name, row in table.items() if name in as_made and name not in ood_sets.CLOTHING}
    worst = min(targets, key=targets.get)
    summary["worst_served"] = {"set": worst, "auroc": targets[worst]}
    print(f"served: lowest AUROC on a set that is not clothing (as made, not prepared): {worst} {targets[worst]:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
