"""PredictionService.Classify: tf.Example in, (label, score) lists out, as TF Serving's classifier.

Works for any version with a classification signature (method_name
``tensorflow/serving/classify``, one DT_STRING input ``inputs`` of serialized
tf.Examples, outputs ``classes`` [batch, k] strings and/or ``scores`` [batch, k]
floats), with TF Serving's checks and messages (``classifier.cc``).

Usage::

    signature = find_signature(version.signatures, request.model_spec.signature_name)
    examples = serialized_examples(request.input)
    response = make_response(request, version.version, signature.run({INPUTS: examples}), len(examples))
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2

from serving import predict

# TensorFlow's own names for the classification API, the ones the exporter writes.
CLASSIFY_METHOD = tf.saved_model.CLASSIFY_METHOD_NAME
INPUTS = tf.saved_model.CLASSIFY_INPUTS
CLASSES = tf.saved_model.CLASSIFY_OUTPUT_CLASSES
SCORES = tf.saved_model.CLASSIFY_OUTPUT_SCORES


def find_signature(signatures: Mapping[str, predict.Signature], signature_name: str) -> predict.Signature:
    """The classification signature a request names ('' is serving_default), or INVALID_ARGUMENT."""
    key = signature_name or predict.DEFAULT_SIGNATURE
    if key not in signatures:
        raise predict.invalid(f"No signature was found with the name: {key}")
    signature = signatures[key]
    definition = signature.definition
    if definition.method_name != CLASSIFY_METHOD:
        raise predict.invalid(
            f"Expected classification signature method_name to be {CLASSIFY_METHOD}. Was: {definition.method_name}"
        )
    if len(definition.inputs) != 1:
        raise predict.invalid("Expected one input Tensor.")
    if len(definition.outputs) not in (1, 2):
        raise predict.invalid(f"Expected one or two output Tensors, found {len(definition.outputs)}")
    if INPUTS not in definition.inputs:
        raise predict.invalid(f"No classification inputs found in SignatureDef: {definition}")
    if CLASSES not in definition.outputs and SCORES not in definition.outputs:
        raise predict.invalid(
            f'Expected classification signature outputs to contain at least one of "{CLASSES}" or "{SCORES}". '
            f"Signature was: {definition}"
        )
    return signature


def serialized_examples(request_input: input_pb2.Input) -> np.ndarray:
    """The request's tf.Examples, serialized, as the DT_STRING [n] tensor the signature takes.

    With ``example_list_with_context`` every example gets the context's
    features; an example's own feature of the same name wins.
    """
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples = list(request_input.example_list.examples)
    elif kind == "example_list_with_context":
        context = request_input.example_list_with_context.context
        examples = []
        for own in request_input.example_list_with_context.examples:
            merged = example_pb2.Example()
            merged.CopyFrom(context)
            merged.MergeFrom(own)
            examples.append(merged)
    else:
        examples = []
    if not examples:
        raise predict.invalid("Input is empty.")
    return np.array([example.SerializeToString() for example in examples], dtype=object)


def _checked(outputs: Mapping[str, np.ndarray], alias: str, dtype: np.dtype, num_examples: int) -> np.ndarray | None:
    if alias not in outputs:
        return None
    tensor = outputs[alias]
    if tensor.ndim != 2:
        raise predict.invalid(f"Expected Tensor shape: [batch_size num_classes] but got {list(tensor.shape)}")
    if tensor.dtype != dtype:
        expected = "DT_STRING" if dtype == object else "DT_FLOAT"
        raise predict.invalid(f"Expected {alias} Tensor of {expected}. Got: {tensor.dtype}")
    if tensor.shape[0] != num_examples:
        raise predict.invalid(f"Expected {alias} output batch size of {num_examples}. Got: {tensor.shape[0]}")
    return tensor


def make_response(
    request: classification_pb2.ClassificationRequest, version: int, outputs: Mapping[str, np.ndarray], num_examples: int
) -> classification_pb2.ClassificationResponse:
    """One Classifications per example, one Class (label and/or score) per column."""
    classes = _checked(outputs, CLASSES, np.dtype(object), num_examples)
    scores = _checked(outputs, SCORES, np.dtype(np.float32), num_examples)
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise predict.invalid(
            f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    response = classification_pb2.ClassificationResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.version.value = version
    response.model_spec.signature_name = request.model_spec.signature_name  # as sent, as TF Serving does
    width = (classes if classes is not None else scores).shape[1]
    for row in range(num_examples):
        classifications = response.result.classifications.add()
        for column in range(width):
            entry = classifications.classes.add()
            if classes is not None:
                entry.label = classes[row, column].decode("utf-8", "replace")
            if scores is not None:
                entry.score = float(scores[row, column])
    return response
