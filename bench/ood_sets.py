"""Out-of-distribution image sets for measuring the novelty score, built only from what packages ship.

Every set is uint8 [n, 28, 28], light on dark where the source has a
polarity, made the way the served graph sees a file: grey (ITU-R 601-2
luma), resized with antialiasing. Sources: noise and shapes drawn here,
Fashion-MNIST's own test images inverted or shifted (still clothing, reported
apart), scikit-learn's bundled 8 x 8 digits, scikit-image's bundled sample
photos, its LFW subset (25 x 25 faces and non-face patches), its
``random_shapes`` and ``binary_blobs`` generators, and matplotlib's sample
photo. Nothing is downloaded. ``DEVELOPMENT`` are the sets the method was
chosen on; ``UNSEEN`` were first measured after it was fixed. ``PREPARED``
are some of them again after Fashion-MNIST's own preparation (:func:`prepared`),
with the test images themselves as the control: they show what the score sees
when an image's format cannot give it away.

Usage: ``python bench/ood_sets.py --write tests/data/ood`` writes the small committed set the fast tests use
(needs ``pip install scikit-learn scikit-image``); ``build(rng, fashion_test_images)`` gives the full sets.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 28
SET_SIZE = 2000
CLOTHING = ("inverted", "shifted")  # Fashion-MNIST transformed: unlike the training images, but clothing
DEVELOPMENT = ("noise", "blobs", "inverted", "shifted", "shapes", "digits", "photos", "photos_other", "lfw", "whole")
UNSEEN = ("random_shapes", "binary_blobs")
# Prepared like Fashion-MNIST (reported, not part of the target); "test_prepared" is clothing, the control.
PREPARED = ("shapes", "digits", "photos", "lfw", "random_shapes", "test")
# Sample photos whose licence allows committing crops of them (public domain or CC0, per their packages).
_FREE_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg", "coins.png")


def to_28(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L").resize((SIZE, SIZE), Image.LANCZOS), np.uint8)


def _skimage_photos(names: tuple[str, ...] | None = None) -> list[str]:
    import skimage.data

    folder = os.path.dirname(skimage.data.__file__)
    skip = ("chessboard", "logo", "phantom")  # drawings, not photos
    paths = sorted(p for p in glob.glob(f"{folder}/*") if p.endswith((".png", ".jpg")))
    if names is not None:
        return [p for p in paths if os.path.basename(p) in names]
    return [p for p in paths if not any(s in os.path.basename(p) for s in skip)]


def _open(paths: list[str]) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in paths]


def crops(rng: np.random.Generator, n: int, photos: list[Image.Image]) -> np.ndarray:
    """``n`` random square crops (a fifth of the shorter side to all of it) of ``photos``."""
    out = []
    for _ in range(n):
        photo = photos[rng.integers(len(photos))]
        w, h = photo.size
        side = int(rng.uniform(0.2, 1.0) * min(w, h))
        x, y = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
        out.append(to_28(photo.crop((x, y, x + side, y + side))))
    return np.stack(out)


def shapes(rng: np.random.Generator, n: int) -> np.ndarray:
    """One to three filled ellipses, rectangles, triangles or thick lines, light on black."""
    out = []
    for _ in range(n):
        canvas = Image.new("L", (4 * SIZE, 4 * SIZE), 0)
        draw = ImageDraw.Draw(canvas)
        for _ in range(rng.integers(1, 4)):
            kind, shade = rng.integers(4), int(rng.integers(80, 256))
            (x0, x1), (y0, y1) = sorted(rng.integers(0, 4 * SIZE, 2)), sorted(rng.integers(0, 4 * SIZE, 2))
            box = [int(x0), int(y0), int(x1) + 10, int(y1) + 10]
            points = [tuple(int(v) for v in rng.integers(0, 4 * SIZE, 2)) for _ in range(3)]
            if kind == 0:
                draw.ellipse(box, fill=shade)
            elif kind == 1:
                draw.rectangle(box, fill=shade)
            elif kind == 2:
                draw.line(points[:2], fill=shade, width=int(rng.integers(3, 12)))
            else:
                draw.polygon(points, fill=shade)
        out.append(to_28(canvas))
    return np.stack(out)


def prepared(images: np.ndarray) -> np.ndarray:
    """``images`` as Fashion-MNIST prepared its own: contrast stretched to 0-255, trimmed, long side 28, centred.

    After Zalando's description (trim, resize the longest edge to 28, centre,
    grey) and what its images show: every one spans 0 to 255 and fills the
    frame on its long side. Its sharpening step is left out.
    """
    out = []
    for image in images:
        x = image.astype(np.float64) - image.min()
        x *= 255 / max(x.max(), 1e-9)
        rows, cols = np.flatnonzero(x.any(axis=1)), np.flatnonzero(x.any(axis=0))
        if len(rows):
            x = x[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        scale = SIZE / max(x.shape)
        h, w = (max(1, round(side * scale)) for side in x.shape)
        canvas = np.zeros((SIZE, SIZE))
        top, left = (SIZE - h) // 2, (SIZE - w) // 2
        canvas[top : top + h, left : left + w] = np.asarray(
            Image.fromarray(x.astype(np.uint8)).resize((w, h), Image.LANCZOS)
        )
        canvas *= 255 / max(canvas.max(), 1e-9)
        out.append(np.round(canvas).astype(np.uint8))
    return np.stack(out)


def digits() -> np.ndarray:
    """scikit-learn's 1,797 bundled 8 x 8 digits, upscaled to 20 x 20 and padded to 28 x 28 as MNIST is."""
    from sklearn.datasets import load_digits

    small = load_digits().images  # 0..16
    scaled = [
        np.asarray(Image.fromarray((d * 255 / 16).astype(np.uint8)).resize((20, 20), Image.BICUBIC)) for d in small
    ]
    return np.pad(np.stack(scaled), ((0, 0), (4, 4), (4, 4)))


def build(rng: np.random.Generator, fashion_test: np.ndarray, size: int = SET_SIZE) -> dict[str, np.ndarray]:
    """Every set, by name (``DEVELOPMENT``, ``UNSEEN``, then each of ``PREPARED`` as ``<name>_prepared``)."""
    import matplotlib
    import skimage.data
    import skimage.draw
    from sklearn.datasets import load_sample_images

    picked = fashion_test[rng.choice(len(fashion_test), size, replace=False)]
    shifted = np.zeros_like(picked)
    shifted[:, :, 10:] = picked[:, :, :-10]
    coarse = np.clip(rng.normal(0, 1, (size, 7, 7)), -2, 2)
    hopper = _open([os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")])
    others = [*hopper, *(Image.fromarray(i) for i in load_sample_images().images)]
    lfw = skimage.data.lfw_subset()  # 100 faces, 100 non-face patches, 0..1
    sets = {
        "noise": rng.integers(0, 256, (size, SIZE, SIZE)).astype(np.uint8),
        "blobs": np.stack(
            [to_28(Image.fromarray(((c + 2) * 63).astype(np.uint8)).resize((SIZE, SIZE))) for c in coarse]
        ),
        "inverted": 255 - picked,
        "shifted": shifted,
        "shapes": shapes(rng, size),
        "digits": digits(),
        "photos": crops(rng, size, _open(_skimage_photos())),
        "photos_other": crops(rng, size, others),
        "lfw": np.stack([to_28(Image.fromarray((f * 255).astype(np.uint8))) for f in lfw]),
        "whole": np.stack([to_28(p) for p in [*_open(_skimage_photos()), *others]]),
    }
    shapes_drawn = []
    for _ in range(size):
        image, _ = skimage.draw.random_shapes(
            (4 * SIZE, 4 * SIZE),
            max_shapes=3,
            channel_axis=None,
            intensity_range=(80, 255),
            rng=int(rng.integers(2**31)),
        )
        shapes_drawn.append(to_28(Image.fromarray(255 - image)))  # drawn dark on white: inverted to light on black
    sets["random_shapes"] = np.stack(shapes_drawn)
    sets["binary_blobs"] = np.stack(
        [
            to_28(
                Image.fromarray(
                    skimage.data.binary_blobs(4 * SIZE, blob_size_fraction=f, rng=int(s)).astype(np.uint8) * 255
                )
            )
            for f, s in zip(rng.uniform(0.05, 0.3, size // 4), rng.integers(2**31, size=size // 4), strict=True)
        ]
    )
    for name in PREPARED:
        sets[f"{name}_prepared"] = prepared(picked if name == "test" else sets[name])
    return sets


def small_set(rng: np.random.Generator, fashion_test: np.ndarray, per_kind: int = 8) -> dict[str, np.ndarray]:
    """The committed test set: ``per_kind`` images each of noise, shapes, digits, photos and inverted garments."""
    return {
        "noise": rng.integers(0, 256, (per_kind, SIZE, SIZE)).astype(np.uint8),
        "shapes": shapes(rng, per_kind),
        "digits": digits()[rng.choice(1797, per_kind, replace=False)],
        "photo": crops(rng, per_kind, _open(_skimage_photos(_FREE_PHOTOS))),
        "inverted": 255 - fashion_test[rng.choice(len(fashion_test), per_kind, replace=False)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", required=True, help="folder for the small set's PNGs, <kind>_<i>.png")
    parser.add_argument("--seed", type=int, default=28)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fmnist.pipeline import data

    out = Path(args.write)
    out.mkdir(parents=True, exist_ok=True)
    for kind, images in small_set(np.random.default_rng(args.seed), data.load().test.images).items():
        for i, image in enumerate(images):
            Image.fromarray(image).save(out / f"{kind}_{i}.png", optimize=True)
    print(f"wrote {len(list(out.glob('*.png')))} PNGs under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
