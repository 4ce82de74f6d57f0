"""One image file as ``fmnist classify`` and ``fmnist batch`` both treat it: may it be sent, and its record.

The served graph's ``predict_images`` signature is built for PNG, JPEG, GIF
and BMP: its header check, which refuses a decompression bomb before anything
is decoded, reads those four formats only. ``tf.io.decode_image`` inside it
would decode a WebP file as well, but with no size check in front, so a WebP
bomb would reach the decoder; the commands therefore send the four formats
only, and refuse everything else before sending, with one verdict and one
message (:func:`check`). A file they classify is reported as one record
(:func:`prediction_record`) by both, so ``classify --json`` lines and the
batch job's records read alike.

Only the header is parsed (by PIL, lazily, or by a fixed-offset read of the
commonest PNGs), so a hostile file costs microseconds; a file whose header
is fine but whose body is broken is left for the model to reject.

Usage::

    problem = check(data, Limits())          # None, or (reason, detail): EMPTY, NOT_AN_IMAGE, ...
    record = prediction_record(path, probabilities, ranked_ids, model_name, model_version)
"""

from __future__ import annotations

import io
import math
import re
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from fmnist.common import names

# Why a file is not sent; also the batch job's error reasons (batch.outcomes.Reason).
EMPTY = "empty"  # zero bytes
NOT_AN_IMAGE = "not_an_image"  # no image header that PIL recognises
UNSUPPORTED_FORMAT = "unsupported_format"  # an image, but not PNG/JPEG/GIF/BMP
TOO_LARGE = "too_large"  # too many bytes, or a header claiming more pixels than --max-image-pixels

SUPPORTED = ("PNG", "JPEG", "GIF", "BMP")  # as PIL names them
_DECODABLE = frozenset({*SUPPORTED, "MPO"})  # MPO is how PIL names a multi-picture JPEG
_PIL_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")  # the count in PIL's DecompressionBombError


@dataclass(frozen=True)
class Limits:
    """What a file may be and still be sent: the server's ``--max-image-bytes`` and ``--max-image-pixels`` defaults."""

    max_file_bytes: int = names.MAX_IMAGE_BYTES
    max_pixels: int = names.MAX_IMAGE_PIXELS


_PNG_START = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR"  # signature, then a 13-byte IHDR
_PLAIN_COLOUR_TYPES = frozenset({0, 2, 4, 6})  # grey, RGB, grey + alpha, RGBA


def _plain_png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG that PIL would open without complaint, found without PIL; else None.

    PIL's header parse was half of reading a file in the batch job (about
    20 µs of a 28 x 28 PNG). This covers the PNGs ``fmnist images`` and most
    encoders write: IHDR first, its CRC right (PIL checks it too), 8 bits per
    channel, grey/RGB with or without alpha, standard compression and
    filtering, and IDAT straight after, where PIL stops reading. Anything else
    returns None and goes through PIL, so every verdict stays PIL's.
    """
    if not data.startswith(_PNG_START) or data[37:41] != b"IDAT":
        return None
    if data[24] != 8 or data[25] not in _PLAIN_COLOUR_TYPES or data[26] or data[27] or data[28] > 1:
        return None
    if zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big"):
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def check(data: bytes, limits: Limits) -> tuple[str, str] | None:
    """(reason, detail) when ``data`` is no image the served model takes; None when it may be sent."""
    if not data:
        return EMPTY, "0 bytes"
    if len(data) > limits.max_file_bytes:
        return TOO_LARGE, f"more than {limits.max_file_bytes} bytes"
    size = _plain_png_size(data)
    if size is not None:  # what PIL would conclude, at a twentieth of the cost
        if size[0] * size[1] > limits.max_pixels:
            return _too_many_pixels(f"{size[0]}x{size[1]}", limits.max_pixels)
        if 0 < size[0] * size[1] <= (Image.MAX_IMAGE_PIXELS or limits.max_pixels):
            return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                kind, (width, height) = image.format, image.size
    except Image.DecompressionBombError as error:  # past PIL's own limit, which is far above ours
        match = _PIL_BOMB_PIXELS.search(str(error))
        return _too_many_pixels(match.group(1) if match else "too many", limits.max_pixels)
    except Image.UnidentifiedImageError:
        return NOT_AN_IMAGE, f"no image header PIL recognises; starts {data[:8]!r}"
    except Exception as error:  # PIL raises many types on hostile headers; all mean "not an image"
        return NOT_AN_IMAGE, f"{type(error).__name__}: {error}"
    if kind not in _DECODABLE:
        return UNSUPPORTED_FORMAT, f"{kind} (supported: {', '.join(SUPPORTED)})"
    if width * height > limits.max_pixels:
        return _too_many_pixels(f"{width}x{height}", limits.max_pixels)
    return None


def _too_many_pixels(claimed: str, max_pixels: int) -> tuple[str, str]:
    """The project's limit, as the flag that sets it names it (4096x4096 by default)."""
    side = math.isqrt(max_pixels)
    limit = f"{side}x{side}" if side * side == max_pixels else f"{max_pixels} pixels"
    return TOO_LARGE, f"its header claims {claimed} pixels, more than --max-image-pixels allows ({limit})"


def prediction_record(
    path: str, probabilities: Sequence[float], ranked: Sequence[int], model_name: str, model_version: int
) -> dict:
    """One classified file: a line of ``fmnist classify --json``, a row of ``fmnist batch``'s predictions.

    ``ranked`` holds the top-k class ids, best first; the first is the
    file's class. ``probabilities`` are plain floats, so the record is JSON-ready.
    """
    class_id = ranked[0]
    return {
        "path": path,
        "class_id": class_id,
        "class_name": names.CLASS_NAMES[class_id],
        "confidence": probabilities[class_id],
        "top_k": [{"class_id": i, "class_name": names.CLASS_NAMES[i], "probability": probabilities[i]} for i in ranked],
        "model_name": model_name,
        "model_version": model_version,
    }
