"""serving.tensors against TensorFlow's own conversions: the wire format is TensorFlow's, either way it is written."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from fmnist.common import tensors
from fmnist.common.apis import tensor_pb2, types_pb2

NUMERIC = [
    np.float32,
    np.float64,
    np.float16,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.bool_,
]


def _filled(values) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto()
    tensors.fill(proto, values)
    return proto


@pytest.mark.parametrize("dtype", NUMERIC)
def test_numbers_round_trip_and_read_as_tensorflow_reads_them(dtype):
    array = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    proto = _filled(array)
    assert proto.dtype == tf.as_dtype(dtype).as_datatype_enum
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)
    back = tensors.to_ndarray(proto, dtype)
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)
    np.testing.assert_array_equal(tensors.to_ndarray(tf.make_tensor_proto(array)), array)


@pytest.mark.parametrize("dtype", NUMERIC)
def test_typed_value_fields_as_tf_serving_writes_them_are_read_with_the_last_value_repeated(dtype):
    array = np.array([[1, 0, 1], [1, 1, 1]]).astype(dtype)
    proto = tf.make_tensor_proto(array)
    field = tensors._NUMERIC[np.dtype(dtype)][1]
    proto.ClearField("tensor_content")
    proto.ClearField(field)
    values = [1, 0, 1, 1]  # the last value stands for the two missing ones
    getattr(proto, field).extend(np.array(values, dtype).view(np.uint16).tolist() if dtype == np.float16 else values)
    np.testing.assert_array_equal(tensors.to_ndarray(proto), array)
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)


def test_strings_go_as_string_val_and_come_back_as_bytes():
    proto = _filled([b"\x89PNG", "naïve", b""])
    assert proto.dtype == types_pb2.DT_STRING and list(proto.string_val) == [b"\x89PNG", "naïve".encode(), b""]
    assert tf.make_ndarray(proto).tolist() == [b"\x89PNG", "naïve".encode(), b""]
    assert tensors.to_ndarray(proto).tolist() == [b"\x89PNG", "naïve".encode(), b""]
    matrix = tensors.to_ndarray(tf.make_tensor_proto([[b"a", b"b"], [b"c", b"d"]]), object)
    assert matrix.shape == (2, 2) and matrix[1, 0] == b"c"


def test_a_type_other_than_the_expected_one_is_an_error():
    with pytest.raises(ValueError, match="expected DT_FLOAT, got DT_INT64"):
        tensors.to_ndarray(_filled(np.arange(3)), np.float32)
    with pytest.raises(ValueError, match="expected DT_INT64, got DT_STRING"):
        tensors.to_ndarray(_filled([b"x"]), np.int64)
    with pytest.raises(TypeError, match="no TensorFlow type for numpy dtype complex128"):
        _filled(np.zeros(2, np.complex128))
