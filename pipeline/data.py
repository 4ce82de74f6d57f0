"""ExampleGen: read Fashion-MNIST from the four standard IDX files.

Where the files come from, in order: an explicit directory (``--data-dir``),
``$FASHION_MNIST_DIR``, the Keras cache, then a download through Keras. Every
file is validated (magic number, counts, shapes, label range) so a truncated
or foreign file fails with its name and the problem instead of a reshape error
deep inside training.

Usage: ``python -m pipeline.data --data-dir DIR`` prints what it finds.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmnist.common import names

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SPLITS = tuple(SPLIT_FILES)
KERAS_CACHE = Path("~/.keras/datasets/fashion-mnist").expanduser()

_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


class DataError(Exception):
    """The data cannot be found or is not valid Fashion-MNIST; the message says why."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [n, 28, 28]
    labels: np.ndarray  # uint8 [n]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    train: Split
    test: Split
    source: str  # the directory it was read from, for logs and the saved config

    def split(self, name: str) -> Split:
        return {"train": self.train, "test": self.test}[name]


def _read_idx(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:  # gzip raises these for truncated streams
        raise DataError(f"{path}: cannot read ({e})") from e


def parse_idx(data: bytes, path: Path, *, rank: int) -> np.ndarray:
    """Decode one IDX file of unsigned bytes, checking its header against its size."""
    magic = _IMAGES_MAGIC if rank == 3 else _LABELS_MAGIC
    header = 4 + 4 * rank
    if len(data) < header:
        raise DataError(f"{path}: only {len(data)} bytes, shorter than an IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(
            f"{path}: magic number 0x{found:08x}, expected 0x{magic:08x} ({'images' if rank == 3 else 'labels'} file)"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise DataError(
            f"{path}: header says {dims} = {expected} bytes of data, file holds {len(data) - header}"
            " (truncated or wrong file)"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _find_file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def read_split(directory: Path, split: str) -> Split:
    image_name, label_name = SPLIT_FILES[split]
    paths = []
    for name in (image_name, label_name):
        path = _find_file(directory, name)
        if path is None:
            raise DataError(f"{directory}: no {name} (nor its uncompressed form)")
        paths.append(path)
    images = parse_idx(_read_idx(paths[0]), paths[0], rank=3)
    labels = parse_idx(_read_idx(paths[1]), paths[1], rank=1)
    if images.shape[1:] != (names.IMAGE_SIZE, names.IMAGE_SIZE):
        raise DataError(f"{paths[0]}: images are {images.shape[1:]}, expected 28x28")
    if len(images) != len(labels):
        raise DataError(f"{paths[0]} holds {len(images)} images but {paths[1]} {len(labels)} labels")
    if labels.size and labels.max() >= names.NUM_CLASSES:
        raise DataError(f"{paths[1]}: label {labels.max()} outside 0..{names.NUM_CLASSES - 1}")
    return Split(images=images, labels=labels)


def _has_files(directory: Path) -> bool:
    return all(_find_file(directory, n) for files in SPLIT_FILES.values() for n in files)


def _download_with_keras() -> Path:
    """The users' path when nothing is on disk: Keras fetches into its cache."""
    import keras  # deferred: importing Keras costs seconds and most runs never download

    keras.datasets.fashion_mnist.load_data()
    return KERAS_CACHE


def resolve_dir(
    data_dir: str | os.PathLike | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
    download: Callable[[], Path] = _download_with_keras,
) -> Path:
    """The directory to read from; downloads only when no directory is given or found."""
    explicit = data_dir or environ.get(names.ENV_DATA_DIR)
    if explicit:
        directory = Path(explicit)
        if not _has_files(directory):
            missing = [n for f in SPLIT_FILES.values() for n in f if not _find_file(directory, n)]
            raise DataError(f"{directory}: missing {', '.join(missing)}")
        return directory
    if _has_files(KERAS_CACHE):
        return KERAS_CACHE
    try:
        return download()
    except Exception as e:  # any network or HTTP failure means the same to the user
        raise DataError(
            "Fashion-MNIST is not on this machine and could not be downloaded "
            f"({type(e).__name__}: {e}). Provide the four IDX files "
            f"({', '.join(n for f in SPLIT_FILES.values() for n in f)}) in one of three ways: "
            f"pass --data-dir DIR, set {names.ENV_DATA_DIR}=DIR, or place them in {KERAS_CACHE}."
        ) from e


def load(data_dir: str | os.PathLike | None = None, **resolve_kwargs) -> Dataset:
    directory = resolve_dir(data_dir, **resolve_kwargs)
    return Dataset(
        train=read_split(directory, "train"),
        test=read_split(directory, "test"),
        source=str(directory),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Locate, validate and summarise Fashion-MNIST.")
    parser.add_argument(
        "--data-dir", help=f"directory of the IDX files (default: ${names.ENV_DATA_DIR}, then the Keras cache)"
    )
    args = parser.parse_args(argv)
    try:
        dataset = load(args.data_dir)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{dataset.source}: train {len(dataset.train)}, test {len(dataset.test)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
