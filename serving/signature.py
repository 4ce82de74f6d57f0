"""One callable signature of a loaded version, and TensorFlow's errors as TF Serving reports them.

Predict, Classify, Regress, MultiInference, the batch scheduler and warmup
all run a :class:`Signature`; a graph's runtime error comes out of it as the
ServingError of its TF code, with its message reduced to the line that names
the problem ("Graph execution error:" says nothing), as TF Serving's clients
see it.

Usage::

    signature = Signature("serving_default", signature_def, function)
    outputs = signature.run({"images": pixels})          # errors.InvalidArgument("...") on bad input

Thread safety: immutable; ``run`` may be called from many threads at once if ``function`` may.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from fmnist.common import errors

DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY  # what an empty signature_name means

Function = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class Signature:
    """One callable signature of a loaded version.

    ``function`` maps input alias → array to output alias → array, for
    inputs already validated against ``definition``.
    """

    key: str
    definition: meta_graph_pb2.SignatureDef
    function: Function

    def run(self, inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """Execute on already validated inputs; graph errors become ServingErrors."""
        try:
            return self.function(inputs)
        except tf.errors.OpError as error:
            code = errors.status_code(error.error_code)
            raise errors.from_code(code, graph_error_message(error.message)) from None


_NOISE = re.compile(r"^(Graph execution error:|Detected at node|<stack traces unavailable>|\s*\[\[|\s*$)")


def graph_error_message(message: str) -> str:
    """The line of a TF runtime error that names the problem, without node names and op ids.

    TF 2 wraps every kernel error as "Graph execution error: ... Detected at
    node ... <the real message> [[{{node ...}}]] [Op:__inference_...]".
    """
    lines = [line for line in message.splitlines() if not _NOISE.match(line)]
    text = re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", lines[0] if lines else message).strip()
    assertion = re.match(r"assertion failed: \[([^\]]*)\]", text)  # tf.debugging.assert_*: its message
    return (assertion.group(1).strip() if assertion else text) or message.strip()  # TF pads its parts


def dtype_text(dtype: int) -> str:
    """TensorFlow's DataTypeString: DT_FLOAT → float, DT_INT32 → int32, DT_STRING → string."""
    return types_pb2.DataType.Name(dtype)[len("DT_") :].lower()
