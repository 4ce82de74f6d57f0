"""The batch job's file side: which files an ``--input`` names, reading them, writing records.

Reading checks each file locally before anything is sent, with the check
``fmnist classify`` makes (:func:`fmnist.imagefile.check`: its size, and its
header without decoding pixels), so empty files, non-images, unsupported
formats and decompression bombs become error records here rather than
failed requests. Checkpoints (:func:`write_checkpoint`) keep each classified
batch's outcomes as the job goes, so ``--resume`` can finish an interrupted
run. Everything goes through Beam's ``FileSystems``, so
``gs://``, ``s3://`` and the others work wherever their Beam extra is installed.

Usage::

    patterns = [p for spec in ["images/", "more/**/*.png"] for p in input_patterns(spec)]
    read = batches_of_paths_and_sizes | beam.ParDo(ReadImages(limits))
    lists_of_records | Write(output_dir, "predictions", "jsonl", PREDICTION_SCHEMA)
    lists_of_serialized_prediction_logs | Write(output_dir, "predictions", "tfrecord")
    write_checkpoint(folder, outcomes); read_checkpoint(path) == outcomes
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import apache_beam as beam
import pyarrow as pa
from apache_beam import coders
from apache_beam.io import tfrecordio
from apache_beam.io.filesystem import CompressionTypes, FileSystem
from apache_beam.io.filesystems import FileSystems

from fmnist.batch.behind import OneBehind
from fmnist.batch.outcomes import Classified, Failed, Image, Outcome, Reason, from_json, json_line, to_json
from fmnist.common import imagefile, names
from fmnist.common.apis import prediction_log_pb2, types_pb2  # the protos alone (no TensorFlow runtime)
from fmnist.common.imagefile import Limits  # what a file may be; job.JobConfig holds one

TFRECORD = "tfrecord"  # predictions as TF Serving PredictionLogs, what TFX's BulkInferrer writes
FORMATS = ("jsonl", "csv", "parquet", TFRECORD)
SUCCESS = "_SUCCESS"
CHECKPOINT_SUFFIX = ".jsonl"
CHECKPOINT_TEMP_PREFIX = "tmp-"  # a checkpoint being written: never read, removed by the next --resume
_CHECKPOINT_NAME = re.compile(r"^[0-9a-f]{32}" + re.escape(CHECKPOINT_SUFFIX) + "$")
_WILDCARD = re.compile(r"[*?\[]")

_TOP_K = pa.struct([("class_id", pa.int64()), ("class_name", pa.string()), ("probability", pa.float64())])
PREDICTION_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("class_id", pa.int64()),
        ("class_name", pa.string()),
        ("confidence", pa.float64()),
        ("top_k", pa.list_(_TOP_K)),
        ("model_name", pa.string()),
        ("model_version", pa.int64()),
    ]
)
ERROR_SCHEMA = pa.schema([("path", pa.string()), ("reason", pa.string()), ("detail", pa.string())])


def input_patterns(spec: str) -> list[str]:
    """The Beam file patterns for one ``--input``: folders recursively, globs with ``**/`` matching zero folders too.

    Beam's ``**`` matches any characters, ``/`` included, so ``imgs/**/*.png``
    alone would need at least one folder below ``imgs``; users (and shells with
    globstar) expect it to match ``imgs/a.png`` as well, so each ``**/`` also
    yields the pattern without it. A plain path is a folder when the local file
    system says so, or when no file has exactly that name (object stores have
    no folders, only prefixes).
    """
    if _WILDCARD.search(spec):
        return sorted(_zero_or_more_folders(spec))
    if not os.path.isdir(spec) and any(m.path == spec for m in FileSystems.match([spec])[0].metadata_list):
        return [spec]
    return [FileSystems.join(spec.rstrip("/"), "**")]


def is_request_log(pattern: str) -> bool:
    """Whether an input pattern names request logs (PredictionLog TFRecords) rather than image files."""
    return pattern.endswith(names.REQUEST_LOG_SUFFIX)


class LoggedImages(beam.DoFn):
    """(log file, serialized PredictionLog) → an :class:`Image` or :class:`Failed` per encoded image it logged.

    A Predict request carries them in its ``image_bytes`` input, a Classify
    request in each tf.Example's ``image`` feature. A record that names where
    its request came from (``log_metadata.request_origin``: the file's path,
    in what ``--format tfrecord`` writes) names its image so, and the image's
    label is the class that path's folder names, as for a file; a record with
    several images names them ``<origin>#<n>``. A server's request log names
    no origin: its images are named ``<log file>#<digest of the record>-<n>``,
    the digest keeping the name the same from one replay to the next. Every
    image goes through the same header check as a file.
    """

    def __init__(self, limits: Limits):
        self._limits = limits

    def process(self, element: tuple[str, bytes]) -> Iterator[Image | Failed]:
        filename, record = element
        logged = prediction_log_pb2.PredictionLog.FromString(record)
        if logged.HasField("predict_log"):
            tensor = logged.predict_log.request.inputs.get(names.INPUT_IMAGE_BYTES)
            images = list(tensor.string_val) if tensor is not None else []
        elif logged.HasField("classify_log"):
            examples = logged.classify_log.request.input.example_list.examples
            images = [data for e in examples for data in e.features.feature[names.FEATURE_IMAGE].bytes_list.value]
        else:
            images = []
        origin = logged.log_metadata.request_origin
        digest = "" if origin else hashlib.sha1(record).hexdigest()[:12]
        for n, data in enumerate(images):
            if origin:
                path = origin if len(images) == 1 else f"{origin}#{n}"
                folder = os.path.dirname(path)
                label = _label_of_folder(folder) if folder else None
            else:
                path, label = f"{filename}#{digest}-{n}", None
            problem = imagefile.check(data, self._limits)
            yield Failed(path, *problem) if problem else Image(path, data, label)


def _zero_or_more_folders(pattern: str) -> set[str]:
    """``pattern`` with each ``**/`` kept or dropped, every combination."""
    head, globstar, tail = pattern.partition("**/")
    if not globstar:
        return {pattern}
    return {head + rest for rest in _zero_or_more_folders(tail)} | {
        head + globstar + rest for rest in _zero_or_more_folders(tail)
    }


@functools.lru_cache(maxsize=4096)
def _label_of_folder(folder: str) -> int | None:
    """The class id a folder is named after (``names.folder_name``), if any; a folder holds thousands of files."""
    return names.class_id_from_folder(FileSystems.split(folder)[1])


class ReadImages(OneBehind):
    """A batch of (path, matched size) → one list holding each file's :class:`Image` or :class:`Failed`.

    From here to the writers a batch, not a file, is the element: Beam's
    per-element work in the Python SDK (a few microseconds per step) was
    most of the job's time per file. One batch is read ahead, in a thread of
    its own (:class:`~batch.behind.OneBehind`): while the batch before it is
    classified downstream (RunInference waits for the model's answer, the GIL
    released), the next batch's files are opened and read, so the worker's
    reading and the model's work overlap.
    """

    def __init__(self, limits: Limits):
        self._limits = limits

    def setup(self) -> None:
        super().setup()
        self._file_systems: dict[str | None, FileSystem] = {}

    def work(self, batch: list[tuple[str, int]]) -> list[list[Image | Failed]]:
        return [[self._read(path, size) for path, size in batch]]

    def _file_system(self, path: str) -> FileSystem:
        """One file system per scheme: ``FileSystems`` makes a new one for every call (a tenth of the job's time)."""
        scheme = FileSystems.get_scheme(path)
        if scheme not in self._file_systems:
            self._file_systems[scheme] = FileSystems.get_filesystem(path)
        return self._file_systems[scheme]

    def _read(self, path: str, matched_size: int) -> Image | Failed:
        file_system = self._file_system(path)
        try:
            # UNCOMPRESSED: Beam would otherwise gunzip a "x.gz" behind our back.
            with file_system.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as file:
                # One byte past the limit is enough for the check to see a file over it.
                data = _read_at_most(file, self._limits.max_file_bytes + 1, matched_size)
        except OSError as error:
            return Failed(path, Reason.UNREADABLE, f"{type(error).__name__}: {error}")
        problem = imagefile.check(data, self._limits)
        # os.path.dirname, not the file system's split, which normalises the path again (8 % of the job).
        return Failed(path, *problem) if problem else Image(path, data, _label_of_folder(os.path.dirname(path)))


def _read_at_most(file: BinaryIO, limit: int, matched_size: int) -> bytes:
    """The file's first ``limit`` bytes, in a buffer sized by the size it was matched with.

    ``read(limit)`` alone allocates ``limit`` bytes (16 MiB) for every
    300-byte file; that was the costliest line of the job. One byte more than
    matched is asked for, so a file that grew since is still read whole.
    """
    data = file.read(min(matched_size + 1, limit))
    if len(data) > matched_size:
        data += file.read(limit - len(data))
    return data


def prediction_record(outcome: Classified, top_k: int) -> dict:
    """One output row (:data:`PREDICTION_SCHEMA`), the record ``fmnist classify --json`` prints too."""
    ranked = [class_id for class_id, _ in outcome.top_k(top_k)]
    return imagefile.prediction_record(
        outcome.path, outcome.probabilities, ranked, outcome.model_name, outcome.model_version
    )


def prediction_log(outcome: Classified, signature: str = names.PREDICT_IMAGES) -> bytes:
    """One serialized ``tensorflow.serving.PredictionLog`` for a classified file (``--format tfrecord``).

    ``predict_log.request`` is the Predict request that classifies this one
    file (model name, ``signature``, its bytes as a 1-element ``image_bytes``
    string tensor; no version: any version can replay it), and
    ``predict_log.response`` is what TF Serving answers it: the model spec of
    the version that answered, and the signature's outputs for one image
    (``probabilities`` float [1, 10], ``class_ids`` int64 [1], ``class_names``
    string [1]) in the typed ``*_val`` fields, as TF Serving's AsProtoField
    writes them. ``log_metadata`` holds that version's model spec and, in
    ``request_origin``, the file's path: where this request came from (a
    PredictRequest has no field for it, and an extra input would make the
    server refuse the request).

    Each record is a copy of one template per model version with the file's
    values added: 8 µs a file, where building it field by field through
    :func:`serving.tensors.fill` took 80.
    """
    if outcome.data is None:
        raise ValueError(f"{outcome.path}: no image bytes kept with its outcome; a PredictionLog needs them")
    log = prediction_log_pb2.PredictionLog()
    log.CopyFrom(_log_template(outcome.model_name, outcome.model_version, signature, len(outcome.probabilities)))
    log.predict_log.request.inputs[names.INPUT_IMAGE_BYTES].string_val.append(outcome.data)
    outputs = log.predict_log.response.outputs
    outputs[names.OUTPUT_PROBABILITIES].float_val.extend(outcome.probabilities)  # float32 values: exact
    class_id = outcome.class_id
    outputs[names.OUTPUT_CLASS_IDS].int64_val.append(class_id)
    outputs[names.OUTPUT_CLASS_NAMES].string_val.append(names.CLASS_NAMES[class_id].encode())
    log.log_metadata.request_origin = outcome.path
    return log.SerializeToString()


@functools.lru_cache(maxsize=16)
def _log_template(model_name: str, version: int, signature: str, classes: int) -> prediction_log_pb2.PredictionLog:
    """A file's PredictionLog but for the file: the model specs, and each tensor's type and shape (never modified)."""
    log = prediction_log_pb2.PredictionLog()
    request, response = log.predict_log.request, log.predict_log.response
    request.model_spec.name, request.model_spec.signature_name = model_name, signature
    answered = response.model_spec
    answered.name, answered.signature_name, answered.version.value = model_name, signature, version
    log.log_metadata.model_spec.CopyFrom(answered)
    tensors = [
        (request.inputs[names.INPUT_IMAGE_BYTES], types_pb2.DT_STRING, (1,)),
        (response.outputs[names.OUTPUT_PROBABILITIES], types_pb2.DT_FLOAT, (1, classes)),
        (response.outputs[names.OUTPUT_CLASS_IDS], types_pb2.DT_INT64, (1,)),
        (response.outputs[names.OUTPUT_CLASS_NAMES], types_pb2.DT_STRING, (1,)),
    ]
    for tensor, dtype, shape in tensors:
        tensor.dtype = dtype
        for size in shape:
            tensor.tensor_shape.dim.add(size=size)
    return log


def output_record(file_format: str, top_k: int, signature: str) -> Callable[[Classified], dict | bytes]:
    """What :class:`Write` takes for one classified file in ``file_format``: a row, or a serialized PredictionLog."""
    if file_format == TFRECORD:
        return functools.partial(prediction_log, signature=signature)
    return functools.partial(prediction_record, top_k=top_k)


def errors_format(file_format: str) -> str:
    """The format of ``errors``: the predictions' own, but JSONL beside TFRecords (errors are no predictions)."""
    return "jsonl" if file_format == TFRECORD else file_format


def error_record(outcome: Failed) -> dict:
    """One ``errors`` row (:data:`ERROR_SCHEMA`)."""
    return {"path": outcome.path, "reason": outcome.reason, "detail": outcome.detail}


def _csv_line(record: dict, columns: list[str]) -> str:
    """One CSV row; nested values (top_k) are JSON in their cell."""
    buffer = io.StringIO()
    cells = [v if isinstance(v, (str, int, float)) else json.dumps(v) for v in (record[c] for c in columns)]
    csv.writer(buffer, lineterminator="").writerow(cells)
    return buffer.getvalue()


@dataclass(frozen=True)
class Blocks:
    """How :class:`Write`'s sink in ``file_format`` takes a non-empty list of records: as lines of text
    (jsonl, csv), one Arrow table (parquet), or the list of serialized records itself (tfrecord)."""

    file_format: str
    schema: pa.Schema | None = None

    def __call__(self, records: list) -> str | pa.Table | list[bytes]:
        if self.file_format == TFRECORD:
            return records
        if self.file_format == "parquet":
            return pa.Table.from_pylist(records, schema=self.schema)
        if self.file_format == "csv":
            columns = self.schema.names
            return "\n".join(_csv_line(record, columns) for record in records)
        return "\n".join(map(json_line, records))


class Write(beam.PTransform):
    """Lists of dict records → sharded ``<output>/<name>-SSSSS-of-NNNNN.<format>`` files.

    Each list is formatted and handed to the sink as one piece (:class:`Blocks`:
    a block of lines, or one Arrow table), so the per-element cost is paid per
    batch. ``tfrecord`` takes lists of serialized records instead (no schema),
    one TFRecord each, and writes a list at a time too (:class:`_TFRecordBatchSink`).
    ``formatted``: the elements are blocks already, none empty, made by
    ``Blocks(file_format, schema)`` where the records were (the job makes
    them in a thread of its own).
    """

    def __init__(
        self, output: str, name: str, file_format: str, schema: pa.Schema | None = None, *, formatted: bool = False
    ):
        super().__init__()
        self._prefix = FileSystems.join(output, name)
        self._blocks = Blocks(file_format, schema)
        self._formatted = formatted

    @classmethod
    def formatted_by(cls, blocks: Blocks, output: str, name: str) -> Write:
        """A Write taking the blocks ``blocks`` made (``formatted``)."""
        return cls(output, name, blocks.file_format, blocks.schema, formatted=True)

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        file_format, schema = self._blocks.file_format, self._blocks.schema
        suffix = "." + file_format
        if not self._formatted:
            batches = (
                batches
                | "NonEmpty" >> beam.Filter(bool)  # an empty block would be a blank line
                | "Format" >> beam.Map(self._blocks)
            )
        if file_format == TFRECORD:
            return batches | beam.io.Write(_TFRecordBatchSink(self._prefix, suffix))
        if file_format == "parquet":
            return batches | beam.io.WriteToParquetBatched(self._prefix, schema, file_name_suffix=suffix)
        header = ",".join(schema.names) if file_format == "csv" else None
        return batches | beam.io.WriteToText(self._prefix, file_name_suffix=suffix, header=header)


class _TFRecordBatchSink(tfrecordio._TFRecordSink):
    """Beam's TFRecord sink (``WriteToTFRecord``'s) taking a list of serialized records per element.

    ``WriteToTFRecord`` takes one record per element, so a batch would have to
    be flattened first: 30 µs a record where this takes 11 (50,000 800-byte
    records, FnApiRunner, 2 cores). Only the element changes; the framing,
    sharding, temp files and finalisation are the sink's own.
    """

    def __init__(self, file_path_prefix: str, file_name_suffix: str):
        super().__init__(
            file_path_prefix,
            coders.BytesCoder(),
            file_name_suffix,
            num_shards=0,
            shard_name_template=None,
            compression_type=CompressionTypes.AUTO,
            triggering_frequency=None,
        )

    def write_record(self, file_handle, value: list[bytes]) -> None:
        for record in value:
            self.write_encoded_record(file_handle, record)


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file through Beam's FileSystems (local or remote)."""
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as file:
        file.write(data)


def checkpoint_name(paths: Iterable[str]) -> str:
    """A batch's checkpoint file name: a digest of its sorted paths, so a retried batch rewrites the same file."""
    return hashlib.sha256(json.dumps(sorted(paths)).encode()).hexdigest()[:32] + CHECKPOINT_SUFFIX


def is_checkpoint(name: str) -> bool:
    """Whether a file name in the checkpoint folder is a complete checkpoint's (not one being written)."""
    return bool(_CHECKPOINT_NAME.match(name))


def write_checkpoint(folder: str, outcomes: Sequence[Outcome], with_data: bool = False) -> str:
    """Save a batch's outcomes under ``folder`` as one JSON line each (:func:`batch.outcomes.to_json`, with the
    images' bytes ``with_data``); returns the path.

    Written whole under a temporary name in the same folder, then renamed, so
    the checkpoint's name never stands for half a file; on object stores the
    rename is a copy of the whole object. The name is :func:`checkpoint_name`.
    """
    path = FileSystems.join(folder, checkpoint_name(outcome.path for outcome in outcomes))
    temporary = FileSystems.join(folder, f"{CHECKPOINT_TEMP_PREFIX}{uuid.uuid4().hex}")
    write_bytes(temporary, "".join(to_json(outcome, with_data) + "\n" for outcome in outcomes).encode())
    FileSystems.rename([temporary], [path])
    return path


def read_checkpoint(path: str) -> list[Outcome]:
    """The outcomes :func:`write_checkpoint` saved in ``path``; ``ValueError`` for a damaged one.

    Every line must be an outcome, and the paths must give the file's own
    name back, so a file cut short (even at a line's end) or edited is refused.
    """
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as file:
        text = file.read().decode()
    outcomes = [from_json(line) for line in text.splitlines()]
    paths = [outcome.path for outcome in outcomes]
    name = FileSystems.split(path)[1]
    if not outcomes or len(set(paths)) < len(paths) or checkpoint_name(paths) != name:
        raise ValueError(f"{name} does not hold the outcomes it was written with")
    return outcomes
