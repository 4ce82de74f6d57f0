"""Shared fixtures: the real dataset and a real, briefly trained, pushed SavedModel.

Training once per session keeps the suite fast; every test that writes gets
its own copy under its own ``tmp_path``.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from PIL import Image

from fmnist.common import names


def encode_png(pixels: np.ndarray, mode: str = "L") -> bytes:
    """PNG bytes of a uint8 image, converted to ``mode`` (L, RGB, RGBA, LA)."""
    image = Image.fromarray(np.asarray(pixels, np.uint8))
    if mode != "L":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A valid few-hundred-byte grey PNG whose header claims ``width`` x ``height`` pixels: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def two_versions_config(models: Path, version_labels: dict[str, int] | None = None) -> Path:
    """``models/models.config``: the model under ``models`` served at versions 1 and 2, with ``version_labels``."""
    labels = "".join(
        f'    version_labels {{ key: "{key}" value: {value} }}\n' for key, value in (version_labels or {}).items()
    )
    config = models / "models.config"
    config.write_text(f"""model_config_list {{
  config {{
    name: "{names.MODEL_NAME}"
    base_path: "{models / names.MODEL_NAME}"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
{labels}  }}
}}
""")
    return config


def corrupt_png(png: bytes) -> bytes:
    """``png`` with its IDAT's compressed stream garbled and its CRC made right again: only a decoder (the
    model's) can tell that it is no image."""
    at = png.index(b"IDAT") - 4
    length = int.from_bytes(png[at : at + 4], "big")
    data = bytes(b ^ 0x5A for b in png[at + 8 : at + 8 + length])
    chunk = png[at : at + 8] + data + zlib.crc32(b"IDAT" + data).to_bytes(4, "big")
    return png[:at] + chunk + png[at + 12 + length :]


def webp_claiming(width: int, height: int) -> bytes:
    """An extended (VP8X) WebP header whose canvas is ``width`` x ``height``: a decompression bomb."""
    vp8x = bytes(4) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + len(vp8x).to_bytes(4, "little") + vp8x
    return b"RIFF" + len(body).to_bytes(4, "little") + body


@pytest.fixture(scope="session")
def dataset():
    from fmnist.pipeline import data

    return data.load()  # $FASHION_MNIST_DIR in CI; a missing dataset fails loudly, never skips


@pytest.fixture(scope="session")
def _trained(dataset):
    """An MLP trained for one epoch on 3,000 images, the last 10 % held back (a ``trainer.TrainResult``)."""
    from fmnist.pipeline import trainer

    return trainer.run(trainer.TrainConfig(epochs=1, limit=3000, verbose=0), dataset.train)


def _warmup(dataset) -> list:
    from fmnist.pipeline import export

    images = dataset.test.images[:4]
    return export.warmup_requests(names.MODEL_NAME, images, [encode_png(i) for i in images])


@pytest.fixture(scope="session")
def _pushed_once(tmp_path_factory, dataset, _trained) -> Path:
    """models/<name>/1 with ``_trained``'s network as it was trained: no calibration, no trust outputs (what an
    older export serves)."""
    from fmnist.pipeline import pusher

    models_dir = tmp_path_factory.mktemp("models")
    pusher.push(_trained.model, models_dir / names.MODEL_NAME, warmup=_warmup(dataset), clock=lambda: 1)
    return models_dir


@pytest.fixture(scope="session")
def _trusted_once(tmp_path_factory, dataset, _trained) -> Path:
    """models/<name>/1 with ``_trained``'s network as the exporter pushes it: temperature and novelty score fitted
    by the Calibrator on its held-back images, so its predict signatures answer ``ood_scores`` and ``unfamiliar``
    too (docs/trust.md). The Evaluator, InfraValidator and model card are left out: they add nothing served."""
    from fmnist.pipeline import calibrator, data, novelty, pusher

    fitted = data.Split(images=dataset.train.images[: _trained.fitted], labels=dataset.train.labels[: _trained.fitted])
    calibration = calibrator.run(_trained.model, fitted, _trained.held_back, dataset.test, novelty.NoveltyConfig())
    models_dir = tmp_path_factory.mktemp("trusted-models")
    pusher.push(
        _trained.model,
        models_dir / names.MODEL_NAME,
        warmup=_warmup(dataset),
        clock=lambda: 1,
        temperature=calibration.temperature,
        novelty=calibration.novelty,
    )
    return models_dir


def _own_copy(tmp_path_factory, models_dir: Path, label: str) -> Path:
    """A module's own copy of ``models_dir``'s base path (``fashion_mnist``), for its server and in-process runs."""
    target = tmp_path_factory.mktemp(label) / "models"
    shutil.copytree(models_dir, target)
    return target / names.MODEL_NAME


def _embedded_server(base_path: Path) -> Iterator[str]:
    """``127.0.0.1:PORT`` of an embedded server of ``base_path``, until the generator is closed."""
    from fmnist.serving.server import ServerConfig, start

    running = start(ServerConfig(port=0, model_name=names.MODEL_NAME, model_base_path=str(base_path)))
    yield f"127.0.0.1:{running.port}"
    running.stop()


@pytest.fixture(scope="module")
def trusted_base(tmp_path_factory, _trusted_once) -> Path:
    """A module's own copy of the base path of the model pushed with the trust outputs (``_trusted_once``)."""
    return _own_copy(tmp_path_factory, _trusted_once, "trusted")


@pytest.fixture(scope="module")
def trusted_server(trusted_base) -> Iterator[str]:
    """``127.0.0.1:PORT`` of an embedded server of ``trusted_base``, for the module."""
    yield from _embedded_server(trusted_base)


@pytest.fixture(scope="module")
def model_base(tmp_path_factory, _pushed_once) -> Path:
    """A module's own copy of the pushed model's base path (``fashion_mnist/1``), for its server and in-process runs."""
    return _own_copy(tmp_path_factory, _pushed_once, "served")


@pytest.fixture(scope="module")
def server(model_base) -> Iterator[str]:
    """``127.0.0.1:PORT`` of an embedded server of ``model_base``, for the module."""
    yield from _embedded_server(model_base)


@pytest.fixture
def models_dir(_pushed_once, tmp_path) -> Path:
    """A private copy of a models directory holding ``fashion_mnist/1``."""
    target = tmp_path / "models"
    shutil.copytree(_pushed_once, target)
    return target


@pytest.fixture(scope="session")
def labelled_tree(tmp_path_factory, dataset) -> Path:
    """40 test images in folders named by class, a truncated PNG and a text file: two errors."""
    root = tmp_path_factory.mktemp("labelled")
    for i in range(40):
        folder = root / names.folder_name(int(dataset.test.labels[i]))
        folder.mkdir(exist_ok=True)
        (folder / f"{i}.png").write_bytes(encode_png(dataset.test.images[i]))
    (root / "truncated.png").write_bytes(encode_png(dataset.test.images[0])[:60])
    (root / "notes.txt").write_text("not an image")
    return root
