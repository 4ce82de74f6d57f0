"""One encoded image as the project judges it: what its header claims, whether it may be sent, and its record.

:func:`header_size` is the one header sniffer: the size an image claims,
read at fixed offsets for PNG, GIF, BMP, JPEG (its frame header) and WebP,
in microseconds and without a decoder, so a 100,000 x 100,000 PNG of a few
hundred bytes is refused before anything allocates its pixels. The embedded
server checks every string input with it against ``--max-image-pixels``
(whatever the model, since its decoder may be ``tf.io.decode_image``), and
:func:`check` starts with it.

:func:`check` is the verdict ``fmnist classify`` and the batch job both give
a file before sending it: the served graph's ``predict_images`` signature
takes PNG, JPEG, GIF and BMP only (its own header check reads those four),
so everything else is refused with one reason and one message. A file they
classify is reported as one record (:func:`prediction_record`) by both, so
``classify --json`` lines and the batch job's records read alike. Past the
sniffed size, a PNG's chunks are walked (one cut short, or with a wrong
CRC, is no image), and the verdict is PIL's (its lazy open, or a
fixed-offset read of the commonest PNGs that PIL would accept); a file whose
structure is fine but whose compressed pixels are broken is left for the
model to reject.

:class:`Limits` holds what an image may be, for the commands and the server alike.

Usage::

    header_size(data)                       # (width, height) its header claims, or None
    problem = check(data, Limits())          # None, or (reason, detail): EMPTY, NOT_AN_IMAGE, ...
    record = prediction_record(path, probabilities, ranked_ids, model_name, model_version)

Thread safety: pure functions and an immutable Limits.
"""

from __future__ import annotations

import io
import math
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


DEFAULT_MAX_TENSOR_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What an image may be: the commands refuse more before sending, the server before decoding.

    The defaults are the server's ``--max-image-bytes`` and ``--max-image-pixels``;
    ``max_tensor_bytes`` (``--max-tensor-bytes``) is the server's alone.
    """

    max_file_bytes: int = names.MAX_IMAGE_BYTES  # per encoded image
    max_pixels: int = names.MAX_IMAGE_PIXELS  # per image, as its header claims
    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES  # per decoded input tensor of a request (strings: 8 bytes each)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) an encoded image's header claims, or None when no PNG, GIF, BMP, JPEG or WebP header is found.

    Read at fixed offsets, without PIL: PIL refuses a PNG whose header CRC is
    wrong, which would let a forged size through to a decoder that does not
    check it. WebP is read too, although the project's graph refuses WebP:
    ``tf.io.decode_image`` decodes it, so a server in front of any model must
    refuse a WebP bomb by its size like any other (the commands refuse every
    WebP file as UNSUPPORTED_FORMAT, since the graph would).
    """
    if data.startswith(b"\x89PNG") and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data.startswith(b"GIF8") and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if data.startswith(b"BM") and len(data) >= 26:
        if int.from_bytes(data[14:18], "little") == 12:  # OS/2's BITMAPCOREHEADER: 16-bit sizes
            return int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
        return (  # BITMAPINFOHEADER and its successors; a negative height means top-down rows
            abs(int.from_bytes(data[18:22], "little", signed=True)),
            abs(int.from_bytes(data[22:26], "little", signed=True)),
        )
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return _webp_size(data)
    return None


# JPEG's start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15; C4, C8 and CC are other segments)
_JPEG_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RST0-7, SOI: markers without a length


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The frame header's size, found by walking the segments before it."""
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
        elif marker in _JPEG_STANDALONE:
            at += 2
        elif marker in _JPEG_FRAMES:  # FF Cn, length, precision, height, width
            return int.from_bytes(data[at + 7 : at + 9], "big"), int.from_bytes(data[at + 5 : at + 7], "big")
        elif marker in (0xD9, 0xDA):  # end of image, or scan data, before any frame header
            return None
        else:
            at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """The canvas of an extended WebP, or the size in a simple one's lossy or lossless bitstream header."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_START = _PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR"  # signature, then a 13-byte IHDR
_PLAIN_COLOUR_TYPES = frozenset({0, 2, 4, 6})  # grey, RGB, grey + alpha, RGBA


def _plain_png(data: bytes) -> bool:
    """Whether PIL would open this PNG without complaint, judged without PIL.

    PIL's header parse costs as much as reading a small file in the batch
    job. This covers the PNGs ``fmnist images`` and most
    encoders write: IHDR first, its CRC right (PIL checks it too), 8 bits per
    channel, grey/RGB with or without alpha, standard compression and
    filtering, and IDAT straight after, where PIL stops reading. Anything else
    goes through PIL, so every verdict stays PIL's.
    """
    return (
        data.startswith(_PNG_START)
        and data[37:41] == b"IDAT"
        and data[24] == 8
        and data[25] in _PLAIN_COLOUR_TYPES
        and not data[26]
        and not data[27]
        and data[28] <= 1
        and zlib.crc32(data[12:29]) == int.from_bytes(data[29:33], "big")
    )


def _png_damage(data: bytes) -> str | None:
    """What is wrong with a PNG's chunks, or None: each must fit in the file with its CRC right, up to IEND.

    A PNG cut short has a header PIL and the header sniffer accept, and only
    the decoder, in the model, would find its end missing; walking the
    chunks finds it here, in microseconds (a 28 x 28 PNG has four), so it is
    NOT_AN_IMAGE wherever it is, never a rejected request to bisect.
    """
    at = len(_PNG_SIGNATURE)
    while at + 12 <= len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        kind = data[at + 4 : at + 8]
        end = at + 8 + length
        if end + 4 > len(data):
            break
        if zlib.crc32(data[at + 4 : end]) != int.from_bytes(data[end : end + 4], "big"):
            return f"damaged PNG: the CRC of its {kind.decode('latin-1')!r} chunk is wrong"
        if kind == b"IEND":
            return None
        at = end + 4
    return f"truncated PNG: its {len(data)} bytes end before its IEND chunk"


def check(data: bytes, limits: Limits) -> tuple[str, str] | None:
    """(reason, detail) when ``data`` is no image the served model takes; None when it may be sent. A too_large
    detail names the option that sets the limit (the commands' and the server's alike)."""
    if not data:
        return EMPTY, "0 bytes"
    if len(data) > limits.max_file_bytes:
        return TOO_LARGE, f"more than --max-image-bytes allows ({limits.max_file_bytes:,} bytes)"
    size = header_size(data)
    if size is not None:  # too large for the server too, whatever else may be wrong with the file
        if size[0] * size[1] > limits.max_pixels:
            return _too_many_pixels(f"{size[0]}x{size[1]}", limits.max_pixels)
    if data.startswith(_PNG_SIGNATURE) and (damage := _png_damage(data)):
        return NOT_AN_IMAGE, damage
    if size is not None:
        if _plain_png(data) and 0 < size[0] * size[1] <= (Image.MAX_IMAGE_PIXELS or limits.max_pixels):
            return None  # what PIL would conclude, at a twentieth of the cost
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                kind, (width, height) = image.format, image.size
    except Image.DecompressionBombError:  # PIL raises it past twice its own limit, which is far above ours
        return _too_many_pixels(f"more than {2 * Image.MAX_IMAGE_PIXELS}", limits.max_pixels)
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
    path: str,
    probabilities: Sequence[float],
    ranked: Sequence[int],
    model_name: str,
    model_version: int,
    ood_score: float | None = None,
    unfamiliar: bool | None = None,
) -> dict:
    """One classified file: a line of ``fmnist classify --json``, a row of ``fmnist batch``'s predictions.

    ``ranked`` holds the top-k class ids, best first; the first is the
    file's class. ``probabilities`` are plain floats, so the record is JSON-ready.
    ``ood_score`` and ``unfamiliar`` are the version's trust outputs for the
    file (docs/trust.md: when ``unfamiliar``, the class is a guess); None (null)
    where the version serves none.
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
        "ood_score": ood_score,
        "unfamiliar": unfamiliar,
    }
