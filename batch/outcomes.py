"""What flows through the batch job: an image read from a file, and its outcome.

Every matched file ends as exactly one :class:`Classified` or one
:class:`Failed`; that is how the job guarantees outputs + errors = inputs.
The types are plain frozen dataclasses of str/bytes/int/float so any runner
can pickle them between workers.

Outcomes also travel as JSON lines (:func:`to_json`, :func:`from_json`): the
job's checkpoints, which let ``fmnist batch --resume`` skip files an
interrupted run had already classified, hold them that way.

Usage: ``Failed(path, Reason.EMPTY, "0 bytes")``; ``from_json(to_json(outcome)) == outcome``
"""

from __future__ import annotations

import base64
import functools
import json
import struct
from dataclasses import dataclass, field

import orjson

from fmnist.common import imagefile, names


class Reason:
    """Why a file has no classification; the keys of "errors by reason" in the summary and metrics."""

    UNREADABLE = "unreadable"  # the file system refused to open or read it
    # The verdicts of the header check that ``fmnist classify`` makes too (fmnist.imagefile.check).
    EMPTY = imagefile.EMPTY
    NOT_AN_IMAGE = imagefile.NOT_AN_IMAGE
    UNSUPPORTED_FORMAT = imagefile.UNSUPPORTED_FORMAT
    TOO_LARGE = imagefile.TOO_LARGE
    REJECTED = "rejected_by_model"  # the model could not decode it (INVALID_ARGUMENT)
    INFERENCE_FAILED = "inference_failed"  # the model failed on its batch as a whole, for another reason


@dataclass(frozen=True)
class Image:
    """One file's encoded bytes; ``label`` is the class its parent folder names, if any."""

    path: str
    data: bytes
    label: int | None


@dataclass(frozen=True)
class Classified:
    """One file's class probabilities and the model version that produced them.

    ``data`` is the encoded image the model was given, where the classifier
    kept it: ``--format tfrecord`` needs it for the replayable Predict request
    of each PredictionLog. It is the same bytes object the file was read into
    (no copy), and it is left out of equality and ``repr``. ``ood_score`` and
    ``unfamiliar`` are the model's ``ood_scores`` and ``unfamiliar`` outputs
    for the file (docs/trust.md); None where the version has no such outputs.
    """

    path: str
    label: int | None
    probabilities: tuple[float, ...]
    model_name: str
    model_version: int
    data: bytes | None = field(default=None, repr=False, compare=False)
    ood_score: float | None = None
    unfamiliar: bool | None = None

    @functools.cached_property
    def class_id(self) -> int:
        """The likeliest class; ties go to the lower id, as the graph's argmax does (max keeps the first).

        Asked three times per file by the job, so no sort, and computed once (kept in the instance).
        """
        return max(range(len(self.probabilities)), key=self.probabilities.__getitem__)

    def top_k(self, k: int) -> list[tuple[int, float]]:
        """The ``k`` likeliest (class id, probability), best first; ties keep label order (a reversed sort is
        stable too)."""
        p = self.probabilities
        return [(i, p[i]) for i in sorted(range(len(p)), key=p.__getitem__, reverse=True)[:k]]

    @property
    def class_name(self) -> str:
        return names.CLASS_NAMES[self.class_id]


@dataclass(frozen=True)
class Failed:
    """One file that could not be classified: ``reason`` is a :class:`Reason`, ``detail`` says more."""

    path: str
    reason: str
    detail: str


Outcome = Classified | Failed


def carried(path: str) -> bytes:
    """``path`` as Beam can carry it on its own: its UTF-8 bytes, a file name's undecodable bytes included.

    Python holds those as lone surrogates (``os.fsdecode``), which UTF-8
    cannot encode, and Beam encodes a bare ``str`` between steps as strict
    UTF-8; inside the job's dataclasses a path travels pickled, as it is.
    """
    return path.encode("utf-8", "surrogatepass")


def uncarried(data: bytes) -> str:
    """The path :func:`carried` gave ``data`` for."""
    return data.decode("utf-8", "surrogatepass")


def json_uncarried(value: object) -> str:
    """``json.dumps``'s ``default`` for values holding :func:`carried` paths: each as its path, which JSON escapes."""
    if isinstance(value, bytes):
        return uncarried(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def utf8_text(path: str) -> str:
    """``path`` as formats that hold only UTF-8 take it (CSV, Parquet, protobuf strings): unchanged, or, where it
    holds a file name's undecodable bytes, with each written as JSON escapes it (``caf\\udce9.png``)."""
    if path.isascii():
        return path
    try:
        path.encode()
    except UnicodeEncodeError:
        return path.encode("utf-8", "backslashreplace").decode()
    return path


_CLASSIFIED_KEYS = frozenset({"path", "label", "probabilities", "model_name", "model_version"})
_FAILED_KEYS = frozenset({"path", "reason", "detail"})


def to_json(outcome: Outcome, with_data: bool = False) -> str:
    """One line of JSON holding every field of ``outcome``; a classified file's bytes too (base64) ``with_data``,
    for outputs that hold them (PredictionLogs).

    Probabilities are packed as little-endian float64 in base64, so they read
    back bit for bit at a third of the cost of their decimal form (which was
    most of a checkpoint's cost: ``bench/resume.py``).
    """
    if isinstance(outcome, Classified):
        packed = base64.b64encode(struct.pack(f"<{len(outcome.probabilities)}d", *outcome.probabilities)).decode()
        fields = {
            "path": outcome.path,
            "label": outcome.label,
            "probabilities": packed,
            "model_name": outcome.model_name,
            "model_version": outcome.model_version,
        }
        if outcome.unfamiliar is not None:  # a version without the outputs: lines as before
            fields["ood_score"], fields["unfamiliar"] = outcome.ood_score, outcome.unfamiliar
        if with_data and outcome.data is not None:
            fields["data"] = base64.b64encode(outcome.data).decode()
        return json_line(fields)
    if isinstance(outcome, Failed):
        return json_line({"path": outcome.path, "reason": outcome.reason, "detail": outcome.detail})
    raise TypeError(f"not an outcome: {outcome!r}")


def json_line(value: dict) -> str:
    """``value`` as one line of compact JSON, by orjson (a tenth of ``json.dumps``'s cost: the job writes
    a line per file); by ``json.dumps`` when a string holds what UTF-8 cannot (a file name's undecodable
    bytes, kept by Python as lone surrogates), which it escapes."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":"))


def from_json(line: str) -> Outcome:
    """The outcome :func:`to_json` wrote; ``ValueError`` for anything else.

    Anything else: a damaged line, other fields, wrong types.
    """
    fields = _parsed(line)
    if not isinstance(fields, dict):
        raise ValueError(f"not an outcome: {line[:80]!r}")
    keys = fields.keys()
    if keys == _FAILED_KEYS and all(isinstance(fields[k], str) for k in _FAILED_KEYS):
        return Failed(fields["path"], fields["reason"], fields["detail"])
    data = fields.pop("data", None)
    if data is not None and not isinstance(data, str):
        raise ValueError(f"not an outcome: {line[:80]!r}")
    ood_score, unfamiliar = fields.pop("ood_score", None), fields.pop("unfamiliar", None)
    scored = isinstance(ood_score, (int, float)) and not isinstance(ood_score, bool) and isinstance(unfamiliar, bool)
    if not scored and (ood_score, unfamiliar) != (None, None):
        raise ValueError(f"not an outcome: {line[:80]!r}")
    if (
        keys == _CLASSIFIED_KEYS
        and isinstance(fields["path"], str)
        and isinstance(fields["model_name"], str)
        and _is_int(fields["model_version"])
        and (fields["label"] is None or _is_int(fields["label"]))
        and isinstance(fields["probabilities"], str)
        and (packed := base64.b64decode(fields["probabilities"], validate=True))
        and len(packed) % 8 == 0
    ):
        return Classified(
            fields["path"],
            fields["label"],
            struct.unpack(f"<{len(packed) // 8}d", packed),
            fields["model_name"],
            fields["model_version"],
            None if data is None else base64.b64decode(data, validate=True),
            None if ood_score is None else float(ood_score),
            unfamiliar,
        )
    raise ValueError(f"not an outcome: {line[:80]!r}")


def _parsed(line: str) -> object:
    """orjson's reading of a line; json's where it holds an escaped lone surrogate (:func:`json_line`'s
    fallback), which orjson refuses. A line neither reads raises json.JSONDecodeError, a ValueError."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
