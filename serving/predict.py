"""Predict, request side and response side: TF Serving's checks of a PredictRequest, and its response.

TF Serving's messages and status codes are the contract clients code against
(``predict_util.cc``), so they are reproduced here word for word where TF
Serving has one. Tensors are converted by :mod:`fmnist.common.tensors` (the
response in the typed ``*_val`` fields, as TF Serving writes it), and string
inputs' image headers are checked by :func:`fmnist.common.imagefile.header_size`
before any decoder sees them.

Usage::

    signature = find_signature(loaded_version.signatures, request.model_spec.signature_name)
    inputs, aliases = prepare(signature, request, imagefile.Limits())
    response = make_response(request.model_spec.name, version, signature.key,
                             signature.run(inputs), aliases)

Thread safety: pure functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import predict_pb2

from fmnist.common import errors, imagefile, tensors
from fmnist.serving.signature import DEFAULT_SIGNATURE, Signature, dtype_text


def find_signature(signatures: Mapping[str, Signature], signature_name: str) -> Signature:
    """The signature a request names ('' is serving_default); FAILED_PRECONDITION if absent."""
    key = signature_name or DEFAULT_SIGNATURE
    if key not in signatures:
        raise errors.FailedPrecondition(f'Serving signature key "{key}" not found.')
    return signatures[key]


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


def _check_images(alias: str, array: np.ndarray, limits: imagefile.Limits) -> None:
    """Refuse oversized or bomb images before any decoder sees them.

    Only headers are read, so a 100k x 100k PNG of a few hundred bytes costs
    microseconds. Values that are not recognisable images are left for the
    graph to judge.
    """
    max_file_bytes, max_pixels, header_size = limits.max_file_bytes, limits.max_pixels, imagefile.header_size
    for index, value in enumerate(array.ravel().tolist()):  # a list iterates faster than an object array
        if not isinstance(value, bytes):
            continue
        if len(value) > max_file_bytes:
            raise errors.InvalidArgument(
                f"input '{alias}' element {index} is {len(value)} bytes, more than the limit of {max_file_bytes} bytes"
            )
        size = header_size(value)
        if size is not None and size[0] * size[1] > max_pixels:
            raise errors.InvalidArgument(
                f"input '{alias}' element {index}: image too large: its header claims "
                f"{size[0]}x{size[1]} pixels, more than the limit of {max_pixels}"
            )


def prepare(
    signature: Signature, request: predict_pb2.PredictRequest, limits: imagefile.Limits
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
            array = tensors.to_ndarray(proto, max_bytes=limits.max_tensor_bytes)
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
        tensors.fill(response.outputs[alias], np.asarray(outputs[alias]), typed=True)  # as TF Serving's AsProtoField
    return response
