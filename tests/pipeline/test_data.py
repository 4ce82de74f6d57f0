"""ExampleGen: finding, reading and validating the IDX files."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from fmnist.common import names
from fmnist.pipeline import data


def _idx(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_dataset(directory: Path, n: int = 20, *, gz: bool = True, labels: np.ndarray | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 10 if labels is None else labels
    for _split, (image_file, label_file) in data.SPLIT_FILES.items():
        for name, payload in ((image_file, _idx(images, 0x803)), (label_file, _idx(labels, 0x801))):
            if gz:
                with gzip.open(directory / name, "wb") as f:
                    f.write(payload)
            else:
                (directory / name.removesuffix(".gz")).write_bytes(payload)
    return directory


@pytest.mark.parametrize("gz", [True, False])
def test_reads_gzipped_and_plain_idx(tmp_path, gz):
    dataset = data.load(_write_dataset(tmp_path / "d", gz=gz))
    assert dataset.train.images.shape == (20, 28, 28) and dataset.train.images.dtype == np.uint8
    np.testing.assert_array_equal(dataset.test.labels, np.arange(20) % 10)


def test_real_dataset_has_standard_shape(dataset):
    assert dataset.train.images.shape == (60000, 28, 28)
    assert dataset.test.images.shape == (10000, 28, 28)
    assert set(np.unique(dataset.test.labels)) == set(range(names.NUM_CLASSES))


def test_env_var_is_used_when_no_flag(tmp_path):
    directory = _write_dataset(tmp_path / "d")
    assert data.resolve_dir(None, environ={names.ENV_DATA_DIR: str(directory)}) == directory


def test_offline_without_files_names_the_three_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "KERAS_CACHE", tmp_path / "empty-cache")

    def no_network():
        raise OSError("Name or service not known")

    with pytest.raises(data.DataError) as e:
        data.resolve_dir(None, environ={}, download=no_network)
    message = str(e.value)
    assert "--data-dir" in message and names.ENV_DATA_DIR in message and "empty-cache" in message
    assert "Name or service not known" in message


def test_truncated_file_is_named(tmp_path):
    directory = _write_dataset(tmp_path / "d", gz=False)
    path = directory / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte.*truncated"):
        data.load(directory)


def test_truncated_gzip_stream_is_named(tmp_path):
    directory = _write_dataset(tmp_path / "d")
    path = directory / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz"):
        data.load(directory)


def test_swapped_files_fail_on_magic_number(tmp_path):
    directory = _write_dataset(tmp_path / "d")
    images, labels = directory / "train-images-idx3-ubyte.gz", directory / "train-labels-idx1-ubyte.gz"
    shutil.copy(labels, tmp_path / "x")
    shutil.copy(images, labels)
    shutil.copy(tmp_path / "x", images)
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte.gz: magic number 0x00000801"):
        data.load(directory)


def test_label_out_of_range_is_refused(tmp_path):
    directory = _write_dataset(tmp_path / "d", labels=np.full(20, 12))
    with pytest.raises(data.DataError, match="label 12 outside 0..9"):
        data.load(directory)


def test_missing_file_is_named(tmp_path):
    directory = _write_dataset(tmp_path / "d")
    (directory / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(data.DataError, match="missing t10k-images-idx3-ubyte.gz"):
        data.load(directory)
