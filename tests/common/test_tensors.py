"""common.tensors against TensorFlow's own conversions: the wire format is TensorFlow's, either way it is written."""

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
    np.complex64,
    np.complex128,
]


def _filled(values, typed: bool = False) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto()
    tensors.fill(proto, values, typed=typed)
    return proto


@pytest.mark.parametrize("typed", [False, True], ids=["tensor_content", "typed fields"])
@pytest.mark.parametrize("dtype", [*NUMERIC, tf.bfloat16.as_numpy_dtype])
def test_numbers_round_trip_and_read_as_tensorflow_reads_them(dtype, typed):
    array = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    proto = _filled(array, typed)
    assert proto.dtype == tf.as_dtype(dtype).as_datatype_enum
    assert bool(proto.tensor_content) != typed  # typed: the *_val fields, as TF Serving's AsProtoField writes them
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)
    back = tensors.to_ndarray(proto, dtype)
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)
    np.testing.assert_array_equal(tensors.to_ndarray(tf.make_tensor_proto(array)), array)


@pytest.mark.parametrize("dtype", NUMERIC)
def test_typed_value_fields_are_read_with_the_last_value_repeated_and_none_as_zeros(dtype):
    array = np.array([[1, 0, 1], [1, 1, 1]]).astype(dtype)
    short = _filled(array[0, :2], typed=True)  # 1, 0
    short.ClearField("tensor_shape")
    for size in array.shape:
        short.tensor_shape.dim.add(size=size)
    repeated = array.copy()
    repeated.ravel()[2:] = 0  # the last value given stands for the missing ones
    np.testing.assert_array_equal(tensors.to_ndarray(short), repeated)
    np.testing.assert_array_equal(tf.make_ndarray(short), repeated)
    empty = tensor_pb2.TensorProto(dtype=short.dtype, tensor_shape=short.tensor_shape)
    np.testing.assert_array_equal(tensors.to_ndarray(empty), np.zeros_like(array))
    np.testing.assert_array_equal(tf.make_ndarray(empty), np.zeros_like(array))


def test_a_shape_claiming_more_than_max_bytes_is_refused_before_anything_is_allocated():
    splat = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])  # one value fills any shape
    for size in (100_000, 28, 28):
        splat.tensor_shape.dim.add(size=size)
    with pytest.raises(ValueError, match=r"\[100000, 28, 28\] float32 tensor exceeds 1048576 bytes"):
        tensors.to_ndarray(splat, max_bytes=1 << 20)
    assert tensors.to_ndarray(splat, max_bytes=100_000 * 28 * 28 * 4).shape == (100_000, 28, 28)
    negative = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    negative.tensor_shape.dim.add(size=-1)
    with pytest.raises(ValueError, match="negative dimension"):
        tensors.to_ndarray(negative)


def test_strings_go_as_string_val_and_come_back_as_bytes():
    proto = _filled([b"\x89PNG", "naïve", b""])
    assert proto.dtype == types_pb2.DT_STRING and list(proto.string_val) == [b"\x89PNG", "naïve".encode(), b""]
    assert tf.make_ndarray(proto).tolist() == [b"\x89PNG", "naïve".encode(), b""]
    assert tensors.to_ndarray(proto).tolist() == [b"\x89PNG", "naïve".encode(), b""]
    matrix = tensors.to_ndarray(tf.make_tensor_proto([[b"a", b"b"], [b"c", b"d"]]), object)
    assert matrix.shape == (2, 2) and matrix[1, 0] == b"c"


@pytest.mark.parametrize(
    "values",
    [
        np.array([[b"ab", b""], [b"c\x00d", b"e"]], dtype="S3"),
        np.array([["ab", ""], ["c\x00d", "e"]]),
        np.array([[np.bytes_(b"ab"), bytearray(b"")], [b"c\x00d", "e"]], dtype=object),
    ],
    ids=["bytes array", "str array", "object array of mixed items"],
)
def test_string_arrays_of_any_kind_go_as_tensorflow_writes_them(values):
    proto = _filled(values)
    assert proto.dtype == types_pb2.DT_STRING
    assert [d.size for d in proto.tensor_shape.dim] == [2, 2]
    assert list(proto.string_val) == [b"ab", b"", b"c\x00d", b"e"] == list(tf.make_tensor_proto(values).string_val)


@pytest.mark.parametrize("typed", [False, True], ids=["tensor_content", "typed fields"])
def test_numbers_in_the_other_byte_order_keep_their_values(typed):
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    swapped = array.astype(array.dtype.newbyteorder("S"))
    proto = _filled(swapped, typed)
    assert proto.dtype == types_pb2.DT_FLOAT
    np.testing.assert_array_equal(tensors.to_ndarray(proto, np.float32), array)
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)


def test_a_type_other_than_the_expected_one_is_an_error():
    with pytest.raises(ValueError, match="expected DT_FLOAT, got DT_INT64"):
        tensors.to_ndarray(_filled(np.arange(3)), np.float32)
    with pytest.raises(ValueError, match="expected DT_INT64, got DT_STRING"):
        tensors.to_ndarray(_filled([b"x"]), np.int64)
    with pytest.raises(TypeError, match=r"no TensorFlow type for numpy dtype datetime64\[s\]"):
        _filled(np.zeros(2, "datetime64[s]"))
    with pytest.raises(ValueError, match="unsupported tensor type DT_RESOURCE"):
        tensors.to_ndarray(tensor_pb2.TensorProto(dtype=types_pb2.DT_RESOURCE))
