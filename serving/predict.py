"""Predict, request side and response side: validation, TensorProto <-> numpy.

TF Serving's messages and status codes are the contract clients code against
(``predict_util.cc``), so they are reproduced here word for word where TF
Serving has one, and the graph's own InvalidArgument errors are reduced to
the line that names the problem ("Graph execution error:" says nothing).

Usage::

    signature = find_signature(loaded_version, request.model_spec.signature_name)
    inputs, aliases = prepare(signature, request, Limits())
    response = make_response(request.model_spec.name, version, signature.key,
                             signature.run(inputs), aliases)
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from PIL import Image
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import predict_pb2

from fmnist.common import errors, names
from fmnist.serving.signature import DEFAULT_SIGNATURE, Signature, dtype_text

DEFAULT_MAX_IMAGE_PIXELS = names.MAX_IMAGE_PIXELS
DEFAULT_MAX_IMAGE_BYTES = names.MAX_IMAGE_BYTES
DEFAULT_MAX_TENSOR_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Limits on what a request may make the server allocate or decode."""

    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES  # per encoded image in a string input
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # per image, as its header claims
    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES  # per decoded input tensor (strings: 8 bytes each)


def find_signature(signatures: Mapping[str, Signature], signature_name: str) -> Signature:
    """The signature a request names ('' is serving_default); FAILED_PRECONDITION if absent."""
    key = signature_name or DEFAULT_SIGNATURE
    if key not in signatures:
        raise errors.FailedPrecondition(f'Serving signature key "{key}" not found.')
    return signatures[key]


def tensor_to_array(proto: tensor_pb2.TensorProto, max_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> np.ndarray:
    """TensorProto → ndarray; numeric ``tensor_content`` without a copy through TF.

    A few bytes of proto can claim a huge shape (a single ``float_val`` fills
    the whole tensor), so the decoded size is checked before anything is allocated.
    """
    shape = [d.size for d in proto.tensor_shape.dim]
    dtype = tf.dtypes.as_dtype(proto.dtype)
    if any(size < 0 for size in shape):
        raise ValueError(f"negative dimension in {shape}")
    if math.prod(shape) * np.dtype(dtype.as_numpy_dtype).itemsize > max_bytes:  # strings: one pointer each
        raise ValueError(f"{shape} {dtype.name} tensor exceeds {max_bytes} bytes")
    if proto.tensor_content and dtype != tf.string:
        return np.frombuffer(proto.tensor_content, dtype=dtype.as_numpy_dtype).reshape(shape)
    return tf.make_ndarray(proto)


# numpy dtype → (DataType, the TensorProto field TF's AsProtoField fills). Strings and half aside.
_PROTO_FIELDS = {
    np.dtype(np.float32): (types_pb2.DT_FLOAT, "float_val"),
    np.dtype(np.float64): (types_pb2.DT_DOUBLE, "double_val"),
    np.dtype(np.int64): (types_pb2.DT_INT64, "int64_val"),
    np.dtype(np.int32): (types_pb2.DT_INT32, "int_val"),
    np.dtype(np.int16): (types_pb2.DT_INT16, "int_val"),
    np.dtype(np.int8): (types_pb2.DT_INT8, "int_val"),
    np.dtype(np.uint8): (types_pb2.DT_UINT8, "int_val"),
    np.dtype(np.uint16): (types_pb2.DT_UINT16, "int_val"),
    np.dtype(np.uint32): (types_pb2.DT_UINT32, "uint32_val"),
    np.dtype(np.uint64): (types_pb2.DT_UINT64, "uint64_val"),
    np.dtype(np.bool_): (types_pb2.DT_BOOL, "bool_val"),
    np.dtype(np.float16): (types_pb2.DT_HALF, "half_val"),
}


def array_to_tensor(array: np.ndarray, proto: tensor_pb2.TensorProto) -> None:
    """Fill ``proto`` from ``array`` in the typed ``*_val`` fields, as TF Serving's AsProtoField does.

    Clients written for TF Serving read e.g. ``outputs["probabilities"].float_val``
    directly, so ``tensor_content`` would break them.
    """
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    flat = array.ravel()
    if array.dtype.kind in "OSU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
        return
    proto.dtype, field = _PROTO_FIELDS[array.dtype]
    values = flat.view(np.uint16) if array.dtype == np.float16 else flat  # half_val holds the raw bits
    getattr(proto, field).extend(values.tolist())


PREDICT_METHODS = (
    tf.saved_model.PREDICT_METHOD_NAME,
    tf.saved_model.CLASSIFY_METHOD_NAME,
    tf.saved_model.REGRESS_METHOD_NAME,
)


def check_method_name(definition: meta_graph_pb2.SignatureDef) -> None:
    """``--enable_signature_method_name_check``: Predict runs predict, classify and regress
    signatures only (INTERNAL, as TF Serving's VerifySignature answers)."""
    if definition.method_name not in PREDICT_METHODS:
        raise errors.Internal(
            f"Expected prediction signature method_name to be one of {{{', '.join(PREDICT_METHODS)}}}. "
            f"Was: {definition.method_name}",
        )


def _header_size(value: bytes) -> tuple[int, int] | None:
    """(width, height) an encoded image's header claims, None if not a recognised image.

    PNG, GIF and BMP are read at fixed offsets (PIL would refuse a PNG with a
    bad CRC, letting a forged header through to the decoder); JPEG and WebP,
    whose size sits behind variable-length segments, by PIL's lazy open.
    """
    if value.startswith(b"\x89PNG") and value[12:16] == b"IHDR":
        return int.from_bytes(value[16:20], "big"), int.from_bytes(value[20:24], "big")
    if value.startswith(b"GIF8") and len(value) >= 10:
        return int.from_bytes(value[6:8], "little"), int.from_bytes(value[8:10], "little")
    if value.startswith(b"BM") and len(value) >= 26:
        return (
            abs(int.from_bytes(value[18:22], "little", signed=True)),
            abs(int.from_bytes(value[22:26], "little", signed=True)),
        )
    if value.startswith((b"\xff\xd8", b"RIFF")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return Image.open(io.BytesIO(value)).size
        except Image.DecompressionBombError:
            return Image.MAX_IMAGE_PIXELS, Image.MAX_IMAGE_PIXELS
        except Exception:  # no readable header: the graph's decoder gives the real message
            return None
    return None


def _check_images(alias: str, array: np.ndarray, limits: Limits) -> None:
    """Refuse oversized or bomb images before any decoder sees them.

    Only headers are read, so a 100k x 100k PNG of a few hundred bytes costs
    microseconds. Values that are not recognisable images are left for the
    graph to judge.
    """
    for index, value in enumerate(array.ravel()):
        if not isinstance(value, bytes):
            continue
        if len(value) > limits.max_image_bytes:
            raise errors.InvalidArgument(
                f"input '{alias}' element {index} is {len(value)} bytes, "
                f"more than the limit of {limits.max_image_bytes} bytes"
            )
        size = _header_size(value)
        if size is not None and size[0] * size[1] > limits.max_image_pixels:
            raise errors.InvalidArgument(
                f"input '{alias}' element {index}: image too large: its header claims "
                f"{size[0]}x{size[1]} pixels, more than the limit of {limits.max_image_pixels}"
            )


def prepare(
    signature: Signature, request: predict_pb2.PredictRequest, limits: Limits
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Input arrays and the output aliases to return, or INVALID_ARGUMENT for what TF Serving checks
    before running: input and output aliases, tensor parsing, and (ours) image and tensor sizes."""
    definition = signature.definition
    if len(request.inputs) != len(definition.inputs):
        sent, wanted = set(request.inputs), set(definition.inputs)
        raise errors.InvalidArgument(
            f"input size does not match signature: {len(sent)}!={len(wanted)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
            f"Missing but required: {{{','.join(sorted(wanted - sent))}}}."
        )
    inputs: dict[str, np.ndarray] = {}
    for alias, proto in request.inputs.items():
        if alias not in definition.inputs:
            raise errors.InvalidArgument(
                f"input tensor alias not found in signature: {alias}. "
                f"Inputs expected to be in the set {{{','.join(sorted(definition.inputs))}}}."
            )
        try:
            array = tensor_to_array(proto, limits.max_tensor_bytes)
        except Exception as error:
            raise errors.InvalidArgument(f"tensor parsing error: {alias}: {error}") from None
        # Shapes are not checked against the signature, as in TF Serving's predict_util.cc: the
        # graph decides (a [-1, 1] input fed [1] runs). A dtype the session would refuse is
        # refused here in the session's words, as TF Serving reports it.
        if proto.dtype != definition.inputs[alias].dtype:
            raise errors.InvalidArgument(
                f"Expects arg[{sorted(definition.inputs).index(alias)}] to be "
                f"{dtype_text(definition.inputs[alias].dtype)} but {dtype_text(proto.dtype)} is provided"
            )
        if proto.dtype == types_pb2.DT_STRING:
            _check_images(alias, array, limits)
        inputs[alias] = array
    aliases: list[str] = []
    for alias in request.output_filter:
        if alias not in definition.outputs:
            raise errors.InvalidArgument(
                f"output tensor alias not found in signature: {alias} "
                f"Outputs expected to be in the set {{{','.join(sorted(definition.outputs))}}}."
            )
        if alias in aliases:
            raise errors.InvalidArgument(f"duplicate output tensor alias: {alias}")
        aliases.append(alias)
    return inputs, aliases or sorted(definition.outputs)


def make_response(
    model_name: str, version: int, signature_key: str, outputs: Mapping[str, np.ndarray], aliases: Sequence[str]
) -> predict_pb2.PredictResponse:
    """The PredictResponse naming the answering version and signature, with the chosen outputs."""
    response = predict_pb2.PredictResponse()
    response.model_spec.name = model_name
    response.model_spec.version.value = version
    response.model_spec.signature_name = signature_key
    for alias in aliases:
        array_to_tensor(np.asarray(outputs[alias]), response.outputs[alias])
    return response
