"""numpy arrays ↔ ``TensorProto``, both ways TF Serving writes them, without TensorFlow's runtime.

A client that only builds requests and reads responses should not pay for
``import tensorflow`` (5 s, 540 MiB) to get ``tf.make_tensor_proto`` and
``tf.make_ndarray``. Numbers go out as little-endian ``tensor_content`` (one
copy, what ``tf.make_tensor_proto`` writes for arrays); byte strings as
``string_val``. Coming back, TF Serving fills the typed ``*_val`` field
(AsProtoField) while TensorFlow fills ``tensor_content``: both are read, and a
``*_val`` shorter than the shape repeats its last value, as the TensorProto
spec says.

Usage: ``fill(request.inputs["x"], np.ones((2, 3), np.float32)); array = to_ndarray(response.outputs["y"])``
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fmnist.common.apis import tensor_pb2, types_pb2

# numpy dtype → (TF DataType, the TensorProto field TF Serving fills for it)
_NUMERIC = {
    np.dtype(np.float32): (types_pb2.DT_FLOAT, "float_val"),
    np.dtype(np.float64): (types_pb2.DT_DOUBLE, "double_val"),
    np.dtype(np.float16): (types_pb2.DT_HALF, "half_val"),  # half_val holds the 16 bits as integers
    np.dtype(np.int8): (types_pb2.DT_INT8, "int_val"),
    np.dtype(np.int16): (types_pb2.DT_INT16, "int_val"),
    np.dtype(np.int32): (types_pb2.DT_INT32, "int_val"),
    np.dtype(np.int64): (types_pb2.DT_INT64, "int64_val"),
    np.dtype(np.uint8): (types_pb2.DT_UINT8, "int_val"),
    np.dtype(np.uint16): (types_pb2.DT_UINT16, "int_val"),
    np.dtype(np.uint32): (types_pb2.DT_UINT32, "uint32_val"),
    np.dtype(np.uint64): (types_pb2.DT_UINT64, "uint64_val"),
    np.dtype(np.bool_): (types_pb2.DT_BOOL, "bool_val"),
}
_BY_TF_TYPE = {tf_type: (dtype, field) for dtype, (tf_type, field) in _NUMERIC.items()}


def fill(proto: tensor_pb2.TensorProto, values: np.ndarray | Sequence[bytes]) -> None:
    """Write ``values`` into ``proto`` in place (a request's own map entry: no second copy of the payload).

    Byte strings (``bytes`` items, or a numpy ``S``/object array of them) become
    DT_STRING; ``str`` items are UTF-8 encoded; numbers keep their dtype.
    """
    if not isinstance(values, np.ndarray):
        values = np.asarray(values, dtype=object if values and isinstance(values[0], (bytes, str)) else None)
    for size in values.shape:
        proto.tensor_shape.dim.add(size=size)
    if values.dtype.kind in "OSU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(v.encode() if isinstance(v, str) else bytes(v) for v in values.reshape(-1))
        return
    dtype = values.dtype.newbyteorder("=")
    if dtype not in _NUMERIC:
        raise TypeError(f"no TensorFlow type for numpy dtype {values.dtype}")
    proto.dtype = _NUMERIC[dtype][0]
    proto.tensor_content = np.ascontiguousarray(values, dtype=dtype.newbyteorder("<")).tobytes()


def to_ndarray(proto: tensor_pb2.TensorProto, dtype: type | np.dtype | None = None) -> np.ndarray:
    """The array ``proto`` holds; with ``dtype``, a ValueError unless it holds that type (DT_STRING: ``object``)."""
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if proto.dtype == types_pb2.DT_STRING:
        if dtype is not None and np.dtype(dtype) != np.dtype(object):
            raise ValueError(f"expected {_name_of(np.dtype(dtype))}, got DT_STRING")
        return _repeat_last(np.array(list(proto.string_val), dtype=object), shape)
    if proto.dtype not in _BY_TF_TYPE:
        raise ValueError(f"unsupported tensor type {types_pb2.DataType.Name(proto.dtype)}")
    held, field = _BY_TF_TYPE[proto.dtype]
    if dtype is not None and np.dtype(dtype) != held:
        raise ValueError(f"expected {_name_of(np.dtype(dtype))}, got {types_pb2.DataType.Name(proto.dtype)}")
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=held.newbyteorder("<")).astype(held).reshape(shape)
    values = getattr(proto, field)
    if held == np.float16:
        array = np.fromiter(values, dtype=np.uint16, count=len(values)).view(np.float16)
    else:
        array = np.fromiter(values, dtype=held, count=len(values))  # twice as fast as np.asarray on a repeated field
    return _repeat_last(array, shape)


def _repeat_last(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    size = math.prod(shape)  # np.prod costs more than the rest of a small response's conversion
    if 0 < len(values) < size:
        values = np.concatenate([values, np.repeat(values[-1:], size - len(values))])
    return values.reshape(shape)


def _name_of(dtype: np.dtype) -> str:
    return "DT_STRING" if dtype == np.dtype(object) else types_pb2.DataType.Name(_NUMERIC[dtype][0])
