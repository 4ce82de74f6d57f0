"""JSON ↔ tensors and tf.Examples, as TF Serving's REST API reads and writes them (json_tensor.cc).

Request bodies parse with rapidjson's error words, ``{"b64": "..."}`` is bytes
both ways, each input is converted to its signature's dtype or refused in TF
Serving's words, a predict body's ``"instances"`` (rows) or ``"inputs"``
(columns) become one array per input, a classify or regress body's examples
become tf.Examples, and outputs become JSON values. Every failure is an
INVALID_ARGUMENT ServingError. :mod:`fmnist.serving.rest` routes requests to
the core through these.

Usage::

    body = parse_json(request_bytes)
    columns, rows = input_columns(body, signature_def.inputs)
    array = input_array("x", columns["x"], signature_def.inputs["x"].dtype)

Thread safety: pure functions.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
from google.protobuf import json_format
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2

from fmnist.common import errors, tensors
from fmnist.serving.signature import dtype_text

# rapidjson's words for the parse errors TF Serving reports, by Python's.
_JSON_ERRORS = {
    "Expecting value": "Invalid value.",
    "Extra data": "The document root must not be followed by other values.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Expecting ',' delimiter": "Missing a comma or ']' after an array element.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid control character at": "Invalid encoding in string.",
    "Invalid \\escape": "Invalid escape character in string.",
}


def parse_json(body: bytes) -> Any:
    """The request body as JSON, or INVALID_ARGUMENT in rapidjson's words, as TF Serving reports it."""
    if not body.strip():
        raise errors.InvalidArgument("JSON Parse error: The document is empty. at offset: 0")
    try:
        return json.loads(body)
    except json.JSONDecodeError as error:
        reason = _JSON_ERRORS.get(error.msg, error.msg)
        raise errors.InvalidArgument(f"JSON Parse error: {reason} at offset: {error.pos}") from None
    except UnicodeDecodeError:
        raise errors.InvalidArgument("JSON Parse error: Invalid encoding in string.") from None


def unb64(value: Any) -> Any:
    """Replace every {"b64": "..."} in a JSON value by its bytes."""
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (ValueError, TypeError):
                raise errors.InvalidArgument("Unable to base64 decode") from None
        return {key: unb64(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unb64(item) for item in value]
    return value


# The JSON value kinds each tensor kind takes, as TF Serving's json_tensor.cc: any number for
# floats, integers for integers, true/false for bools.
_ACCEPTED_KINDS = {"f": "fiu", "c": "fiu", "i": "iu", "u": "iu", "b": "b"}


def _fits(value: Any, kinds: str) -> bool:
    if isinstance(value, bool):
        return "b" in kinds
    if isinstance(value, int):
        return "i" in kinds
    return isinstance(value, float) and "f" in kinds


def _first_misfit(value: Any, kinds: str) -> Any:
    """The first leaf of a JSON array that is not of ``kinds``."""
    if isinstance(value, list):
        for item in value:
            misfit = _first_misfit(item, kinds)
            if misfit is not None:
                return misfit
        return None
    return None if _fits(value, kinds) else value


def _json_text(value: Any) -> str:
    return json.dumps(value if not isinstance(value, bytes) else {"b64": base64.b64encode(value).decode()})


def input_array(alias: str, value: Any, dtype: int | None) -> np.ndarray:
    """The array for one input; ``dtype`` None (an alias the signature lacks) is inferred.

    A value of the wrong JSON type is refused as TF Serving words it:
    ``JSON Value: "x" not of expected type: float``.
    """
    try:
        if dtype is None:
            return np.array(value)
        if dtype == types_pb2.DT_STRING:
            encode = np.vectorize(lambda v: v if isinstance(v, bytes) else str(v).encode(), otypes=[object])
            return encode(np.array(value, dtype=object))
        inferred = np.array(value)
    except (ValueError, TypeError) as error:
        kind = types_pb2.DataType.Name(dtype) if dtype is not None else "tensor"
        raise errors.InvalidArgument(f"input '{alias}' is not a well-formed {kind} value: {error}") from None
    target = tensors.numpy_dtype(dtype)
    kinds = _ACCEPTED_KINDS.get(target.kind, "")
    if inferred.size and inferred.dtype.kind not in kinds:
        misfit = _first_misfit(value, kinds)
        raise errors.InvalidArgument(f"JSON Value: {_json_text(misfit)} not of expected type: {dtype_text(dtype)}")
    return inferred.astype(target, copy=False)


def input_columns(body: dict, inputs: dict) -> tuple[dict[str, Any], bool]:
    """(alias → value, row format?) from a predict body's "instances" or "inputs"."""
    if ("instances" in body) == ("inputs" in body):
        raise errors.InvalidArgument(
            "Missing 'inputs' or 'instances' key"
            if "instances" not in body
            else "Not formatted correctly expecting only one of 'inputs' or 'instances' keys exist"
        )
    if "inputs" in body:
        value = unb64(body["inputs"])
        return (value if isinstance(value, dict) else {next(iter(inputs)): value}), False
    instances = unb64(body["instances"])
    if not isinstance(instances, list):
        raise errors.InvalidArgument("'instances' must be a JSON array")
    if instances and all(isinstance(row, dict) for row in instances):
        keys = set(instances[0])
        if any(set(row) != keys for row in instances):
            raise errors.InvalidArgument("The instances do not all have the same named inputs")
        return {key: [row[key] for row in instances] for key in keys}, True
    if len(inputs) != 1:
        raise errors.InvalidArgument("instances without names need a signature with exactly one input")
    return {next(iter(inputs)): instances}, True


def example(value: Any) -> example_pb2.Example:
    """A JSON object of feature name → value or list (numbers, strings, b64 bytes) as a tf.Example."""
    if not isinstance(value, dict):
        raise errors.InvalidArgument("an example must be a JSON object of features")
    example = example_pb2.Example()
    for name, feature_value in value.items():
        values = feature_value if isinstance(feature_value, list) else [feature_value]
        feature = example.features.feature[name]
        if all(isinstance(v, (bytes, str)) for v in values):
            feature.bytes_list.value.extend(v if isinstance(v, bytes) else v.encode() for v in values)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            feature.int64_list.value.extend(values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            feature.float_list.value.extend(values)
        else:
            raise errors.InvalidArgument(f"feature '{name}' must hold numbers or strings, not a mix")
    return example


def json_value(alias: str, array: np.ndarray) -> Any:
    if array.dtype != object:
        return array.tolist()

    def text(value: bytes) -> Any:
        if not alias.endswith("_bytes"):
            try:
                return value.decode()
            except UnicodeDecodeError:
                pass
        return {"b64": base64.b64encode(value).decode()}

    return np.vectorize(text, otypes=[object])(array).tolist() if array.ndim else text(array.item())


def message_json(message) -> dict:
    """A message as TF Serving prints it: proto field names, every field without presence
    (``"defaults": {}``, ``"name": ""``, ``"unknown_rank": false``, ``"dim": []``) included."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
