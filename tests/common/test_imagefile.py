"""common.imagefile's header sniffer against PIL: the size every format's header claims, read without a decoder."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import webp_claiming
from PIL import Image

from fmnist.common import imagefile

FORMATS = {
    "png": ("PNG", {}),
    "baseline jpeg": ("JPEG", {}),
    "progressive jpeg": ("JPEG", {"progressive": True}),
    "gif": ("GIF", {}),
    "bmp": ("BMP", {}),
    "lossy webp": ("WEBP", {}),
    "lossless webp": ("WEBP", {"lossless": True}),
}


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("size", [(28, 28), (300, 17), (1, 4000)])
@pytest.mark.parametrize("kind", FORMATS)
def test_the_sniffed_size_is_pils(kind, size):
    fmt, options = FORMATS[kind]
    pixels = np.random.default_rng(0).integers(0, 256, size[::-1], dtype=np.uint8)
    data = _encoded(Image.fromarray(pixels), fmt, **options)
    assert imagefile.header_size(data) == Image.open(io.BytesIO(data)).size == size


def test_an_extended_webp_is_read_from_its_canvas():
    image = Image.fromarray(np.zeros((17, 300), np.uint8)).convert("RGBA")
    image.putalpha(128)  # alpha: PIL writes the extended format
    data = _encoded(image, "WEBP")
    assert data[12:16] == b"VP8X" and imagefile.header_size(data) == (300, 17)


def test_what_is_no_image_header_claims_nothing():
    for data in (b"", b"not an image", b"\xff\xd8\xff", b"RIFF\0\0\0\0WAVEfmt ", b"GIF8", b"BM"):
        assert imagefile.header_size(data) is None


def test_a_webp_bomb_is_too_large_for_the_commands_as_for_the_server():
    """The server refuses a WebP bomb by its header (tf.io.decode_image would decode WebP); the
    commands, which refuse any WebP as unsupported, give the same verdict the server would."""
    bomb = webp_claiming(100_000, 100_000)
    assert imagefile.header_size(bomb) == (100_000, 100_000)
    assert imagefile.check(bomb, imagefile.Limits())[0] == imagefile.TOO_LARGE
    small = _encoded(Image.fromarray(np.zeros((28, 28), np.uint8)), "WEBP")
    assert imagefile.check(small, imagefile.Limits())[0] == imagefile.UNSUPPORTED_FORMAT
