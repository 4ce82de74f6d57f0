"""The batch jobs' records: a classified file as a row or a TF Serving PredictionLog, a failed one as an error row,
and writing lists of them to sharded files.

Rows follow :data:`PREDICTION_SCHEMA` (the record ``fmnist classify --json``
prints too) and :data:`ERROR_SCHEMA`; ``--format tfrecord`` writes one
serialized ``tensorflow.serving.PredictionLog`` per classified file instead,
what TFX's BulkInferrer writes. :class:`Write` takes lists of records (one per
batch) and hands each list to Beam's sink as one block, so the per-element
cost is paid per batch.

Usage::

    lists_of_records | Write(output_dir, "predictions", "jsonl", PREDICTION_SCHEMA)
    lists_of_serialized_prediction_logs | Write(output_dir, "predictions", "tfrecord")
    to_record = output_record("csv", top_k=3, signature="predict_images"); to_record(classified)

Thread safety: the functions and :class:`BlockFormat` keep no state but a cache of PredictionLog templates
(``functools.lru_cache``, thread-safe), so the job formats records in a thread of its own.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Callable
from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa
from apache_beam import coders
from apache_beam.io import tfrecordio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from fmnist.batch.outcomes import Classified, Failed, json_line, utf8_text
from fmnist.common import imagefile, names
from fmnist.common.apis import prediction_log_pb2, types_pb2  # the protos alone (no TensorFlow runtime)

TFRECORD = "tfrecord"  # predictions as TF Serving PredictionLogs, what TFX's BulkInferrer writes
FORMATS = ("jsonl", "csv", "parquet", TFRECORD)
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
        ("ood_score", pa.float64()),  # null where the version serves no trust outputs (docs/trust.md)
        ("unfamiliar", pa.bool_()),
    ]
)
ERROR_SCHEMA = pa.schema([("path", pa.string()), ("reason", pa.string()), ("detail", pa.string())])


def prediction_record(outcome: Classified, top_k: int) -> dict:
    """One output row (:data:`PREDICTION_SCHEMA`), the record ``fmnist classify --json`` prints too."""
    ranked = [class_id for class_id, _ in outcome.top_k(top_k)]
    return imagefile.prediction_record(
        outcome.path,
        outcome.probabilities,
        ranked,
        outcome.model_name,
        outcome.model_version,
        outcome.ood_score,
        outcome.unfamiliar,
    )


def prediction_log(outcome: Classified, signature: str = names.PREDICT_IMAGES) -> bytes:
    """One serialized ``tensorflow.serving.PredictionLog`` for a classified file (``--format tfrecord``).

    ``predict_log.request`` is the Predict request that classifies this one
    file (model name, ``signature``, its bytes as a 1-element ``image_bytes``
    string tensor; no version: any version can replay it), and
    ``predict_log.response`` is what TF Serving answers it: the model spec of
    the version that answered, and the signature's outputs for one image
    (``probabilities`` float [1, 10], ``class_ids`` int64 [1], ``class_names``
    string [1]), and ``ood_scores`` float [1] and ``unfamiliar`` bool [1]
    where the version gave them, in the typed ``*_val`` fields, as TF Serving's AsProtoField
    writes them. ``log_metadata`` holds that version's model spec and, in
    ``request_origin``, the file's path: where this request came from (a
    PredictRequest has no field for it, and an extra input would make the
    server refuse the request).

    Each record is a copy of one template per model version with the file's
    values added: an order of magnitude cheaper than building it field by
    field through :func:`fmnist.common.tensors.fill`.
    """
    if outcome.data is None:
        raise ValueError(f"{outcome.path}: no image bytes kept with its outcome; a PredictionLog needs them")
    log = prediction_log_pb2.PredictionLog()
    scored = outcome.unfamiliar is not None
    classes = len(outcome.probabilities)
    log.CopyFrom(_log_template(outcome.model_name, outcome.model_version, signature, classes, scored))
    log.predict_log.request.inputs[names.INPUT_IMAGE_BYTES].string_val.append(outcome.data)
    outputs = log.predict_log.response.outputs
    outputs[names.OUTPUT_PROBABILITIES].float_val.extend(outcome.probabilities)  # float32 values: exact
    class_id = outcome.class_id
    outputs[names.OUTPUT_CLASS_IDS].int64_val.append(class_id)
    outputs[names.OUTPUT_CLASS_NAMES].string_val.append(names.CLASS_NAMES[class_id].encode())
    if scored:
        outputs[names.OUTPUT_OOD_SCORES].float_val.append(outcome.ood_score)
        outputs[names.OUTPUT_UNFAMILIAR].bool_val.append(outcome.unfamiliar)
    log.log_metadata.request_origin = utf8_text(outcome.path)
    return log.SerializeToString()


@functools.lru_cache(maxsize=16)
def _log_template(
    model_name: str, version: int, signature: str, classes: int, scored: bool
) -> prediction_log_pb2.PredictionLog:
    """A file's PredictionLog but for the file: the model specs, and each tensor's type and shape (never modified);
    ``scored``: with the trust outputs."""
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
    if scored:
        tensors.append((response.outputs[names.OUTPUT_OOD_SCORES], types_pb2.DT_FLOAT, (1,)))
        tensors.append((response.outputs[names.OUTPUT_UNFAMILIAR], types_pb2.DT_BOOL, (1,)))
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
    """One CSV row; nested values (top_k) and booleans are JSON in their cell (``true``), null is an empty cell,
    and text as UTF-8 holds it."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([_cell(record[c]) for c in columns])
    return buffer.getvalue()


def _cell(value: object) -> object:
    if isinstance(value, str):
        return utf8_text(value)
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return json.dumps(value)


def _utf8_path(record: dict) -> dict:
    """``record`` with its path as UTF-8 holds it (:func:`~batch.outcomes.utf8_text`); itself when it holds it."""
    path = record["path"]
    text = utf8_text(path)
    return record if text is path else {**record, "path": text}


@dataclass(frozen=True)
class BlockFormat:
    """How :class:`Write`'s sink in ``file_format`` takes a non-empty list of records: as lines of text
    (jsonl, csv), one Arrow table (parquet), or the list of serialized records itself (tfrecord)."""

    file_format: str
    schema: pa.Schema | None = None

    def __call__(self, records: list) -> str | pa.Table | list[bytes]:
        if self.file_format == TFRECORD:
            return records
        if self.file_format == "parquet":
            return pa.Table.from_pylist([_utf8_path(record) for record in records], schema=self.schema)
        if self.file_format == "csv":
            columns = self.schema.names
            return "\n".join(_csv_line(record, columns) for record in records)
        return "\n".join(map(json_line, records))


class Write(beam.PTransform):
    """Lists of dict records → sharded ``<output>/<name>-SSSSS-of-NNNNN.<format>`` files.

    Each list is formatted and handed to the sink as one piece (:class:`BlockFormat`:
    a block of lines, or one Arrow table), so the per-element cost is paid per
    batch. ``tfrecord`` takes lists of serialized records instead (no schema),
    one TFRecord each, and writes a list at a time too (:class:`_TFRecordBatchSink`).
    ``formatted``: the elements are blocks already, none empty, made by
    ``BlockFormat(file_format, schema)`` where the records were (the job makes
    them in a thread of its own).
    """

    def __init__(
        self, output: str, name: str, file_format: str, schema: pa.Schema | None = None, *, formatted: bool = False
    ):
        super().__init__()
        self._prefix = FileSystems.join(output, name)
        self._blocks = BlockFormat(file_format, schema)
        self._formatted = formatted

    @classmethod
    def formatted_by(cls, blocks: BlockFormat, output: str, name: str) -> Write:
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
    be flattened first, which costs the runner more per record than the
    writing does. Only the element changes; the framing,
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
