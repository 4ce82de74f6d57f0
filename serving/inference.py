"""Classify, Regress and MultiInference: tf.Examples in, as TF Serving's classifier and regressor.

A classification signature takes one input ``inputs`` (the serialized
tf.Examples) and has outputs ``classes`` [batch, k] strings and/or ``scores``
[batch, k] floats; a regression signature takes ``inputs`` and has one output
``outputs``, [batch] or [batch, 1] floats. Checks and messages follow
``classifier.cc``, ``regressor.cc`` and ``multi_inference.cc``; the
signature's ``method_name`` is checked only with
``--enable_signature_method_name_check``, as in TF Serving (TF2 and Keras
exports write none of TF Serving's method names).

Usage::

    signature = find_signature(version.signatures, request.model_spec.signature_name)
    check_regression(signature.definition, check_method_name=False)
    examples = serialized_examples(request.input)
    regression_result(signature.run({INPUTS: examples}), len(examples), response.result)

Thread safety: pure functions.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2, model_pb2, regression_pb2

from fmnist.common import errors
from fmnist.serving.signature import DEFAULT_SIGNATURE, Signature, dtype_text

# TensorFlow's own names for the classification and regression APIs.
CLASSIFY_METHOD = tf.saved_model.CLASSIFY_METHOD_NAME
REGRESS_METHOD = tf.saved_model.REGRESS_METHOD_NAME
INPUTS = tf.saved_model.CLASSIFY_INPUTS  # "inputs", the regression input's alias too
CLASSES = tf.saved_model.CLASSIFY_OUTPUT_CLASSES
SCORES = tf.saved_model.CLASSIFY_OUTPUT_SCORES
OUTPUTS = tf.saved_model.REGRESS_OUTPUTS


def find_signature(signatures: Mapping[str, Signature], signature_name: str) -> Signature:
    """The signature a Classify or Regress request names ('' is serving_default), or INVALID_ARGUMENT."""
    key = signature_name or DEFAULT_SIGNATURE
    if key not in signatures:
        raise errors.InvalidArgument(f"No signature was found with the name: {key}")
    return signatures[key]


def _check_method(definition: meta_graph_pb2.SignatureDef, kind: str, method: str, check: bool) -> None:
    if check and definition.method_name != method:
        raise errors.InvalidArgument(
            f"Expected {kind} signature method_name to be {method}. Was: {definition.method_name}"
        )


def check_classification(definition: meta_graph_pb2.SignatureDef, check_method_name: bool) -> None:
    """PreProcessClassification's checks of a signature, with its messages."""
    _check_method(definition, "classification", CLASSIFY_METHOD, check_method_name)
    if len(definition.inputs) != 1:
        raise errors.InvalidArgument("Expected one input Tensor.")
    if len(definition.outputs) not in (1, 2):
        raise errors.InvalidArgument(f"Expected one or two output Tensors, found {len(definition.outputs)}")
    if INPUTS not in definition.inputs:
        raise errors.FailedPrecondition(f"No classification inputs found in SignatureDef: {definition}")
    if CLASSES not in definition.outputs and SCORES not in definition.outputs:
        raise errors.FailedPrecondition(
            f'Expected classification signature outputs to contain at least one of "{CLASSES}" or "{SCORES}". '
            f"Signature was: {definition}"
        )


def check_regression(definition: meta_graph_pb2.SignatureDef, check_method_name: bool) -> None:
    """PreProcessRegression's checks of a signature, with its messages."""
    _check_method(definition, "regression", REGRESS_METHOD, check_method_name)
    if len(definition.inputs) != 1:
        raise errors.InvalidArgument("Expected one input Tensor.")
    if len(definition.outputs) != 1:
        raise errors.InvalidArgument("Expected one output Tensor.")
    if INPUTS not in definition.inputs:
        raise errors.FailedPrecondition(f"No regression inputs found in SignatureDef: {definition}")
    if OUTPUTS not in definition.outputs:
        raise errors.FailedPrecondition(f"No regression outputs found in SignatureDef: {definition}")


def check_examples_input(definition: meta_graph_pb2.SignatureDef) -> None:
    """Serialized examples feed a string input; any other is refused as TF Serving's session
    refuses it (a signature such as classify_x2_to_y3 takes floats)."""
    dtype = definition.inputs[INPUTS].dtype
    if dtype != types_pb2.DT_STRING:
        raise errors.InvalidArgument(f"Expects arg[0] to be {dtype_text(dtype)} but string is provided")


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
        raise errors.InvalidArgument("Input is empty.")
    return np.array([example.SerializeToString() for example in examples], dtype=object)


def model_spec(name: str, signature_name: str, version: int, spec: model_pb2.ModelSpec) -> None:
    """A response's ModelSpec as TF Serving's MakeModelSpec fills it ('' is serving_default)."""
    spec.name = name
    spec.signature_name = signature_name or DEFAULT_SIGNATURE
    spec.version.value = version


def _checked(outputs: Mapping[str, np.ndarray], alias: str, dtype: np.dtype, num_examples: int) -> np.ndarray | None:
    if alias not in outputs:
        return None
    tensor = outputs[alias]
    if tensor.ndim != 2:
        raise errors.InvalidArgument(f"Expected Tensor shape: [batch_size num_classes] but got {_shape(tensor)}")
    if tensor.dtype != dtype:
        expected = "DT_STRING" if dtype.kind == "O" else "DT_FLOAT"
        raise errors.InvalidArgument(f"Expected {alias} Tensor of {expected}. Got: {_dtype_name(tensor)}")
    if tensor.shape[0] != num_examples:
        raise errors.InvalidArgument(f"Expected {alias} output batch size of {num_examples}. Got: {tensor.shape[0]}")
    return tensor


def _shape(tensor: np.ndarray) -> str:
    """A shape as TensorShape::DebugString writes it."""
    return "[" + ",".join(str(size) for size in tensor.shape) + "]"


def _dtype_name(tensor: np.ndarray) -> str:
    return "DT_STRING" if tensor.dtype == object else f"DT_{tf.as_dtype(tensor.dtype).name.upper()}"


def classification_result(
    outputs: Mapping[str, np.ndarray], num_examples: int, result: classification_pb2.ClassificationResult
) -> None:
    """PostProcessClassificationResult: one Classifications per example, one Class per column."""
    classes = _checked(outputs, CLASSES, np.dtype(object), num_examples)
    scores = _checked(outputs, SCORES, np.dtype(np.float32), num_examples)
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise errors.InvalidArgument(
            f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    width = (classes if classes is not None else scores).shape[1]
    for row in range(num_examples):
        classifications = result.classifications.add()
        for column in range(width):
            entry = classifications.classes.add()
            if classes is not None:
                entry.label = classes[row, column].decode("utf-8", "replace")
            if scores is not None:
                entry.score = float(scores[row, column])


def regression_result(
    outputs: Mapping[str, np.ndarray], num_examples: int, result: regression_pb2.RegressionResult
) -> None:
    """PostProcessRegressionResult: one value per example, from a [batch] or [batch, 1] float output."""
    tensor = outputs[OUTPUTS]
    if not (tensor.ndim == 1 or (tensor.ndim == 2 and tensor.shape[1] == 1)):
        raise errors.InvalidArgument(
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {_shape(tensor)}"
        )
    if tensor.shape[0] != num_examples:
        raise errors.InvalidArgument(
            f"Input batch size did not match output batch size: {num_examples} vs. {tensor.shape[0]}"
        )
    if tensor.dtype != np.float32:
        raise errors.InvalidArgument(f"Expected output Tensor of DT_FLOAT.  Got: {_dtype_name(tensor)}")
    for value in tensor.ravel().tolist():
        result.regressions.add(value=value)
