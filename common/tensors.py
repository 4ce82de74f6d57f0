"""numpy arrays ↔ ``TensorProto``, both ways TF Serving writes them, without TensorFlow's runtime.

The one conversion the project has, for the client (requests out, responses
in) and the embedded server (requests in, responses out). A client that only
builds requests and reads responses should not pay for ``import tensorflow``
(seconds and hundreds of MiB) to get ``tf.make_tensor_proto`` and ``tf.make_ndarray``.
Requests go out as little-endian ``tensor_content`` (one copy, what
``tf.make_tensor_proto`` writes for arrays); responses as the typed ``*_val``
fields (``typed=True``: TF Serving's AsProtoField, which clients written for
TF Serving read directly); byte strings as ``string_val`` either way. Coming
back both are read, and a ``*_val`` shorter than the shape repeats its last
value (an empty one: zeros), as TensorFlow's ``Tensor::FromProto`` does.
``max_bytes`` refuses a tensor whose shape claims too much before anything is
allocated: a few bytes of proto (one ``float_val``) can claim any size.

Usage::

    fill(request.inputs["x"], np.ones((2, 3), np.float32))      # tensor_content
    fill(response.outputs["y"], scores, typed=True)             # float_val
    array = to_ndarray(proto, np.float32, max_bytes=1 << 20)    # ValueError on another type or a larger tensor

Thread safety: pure functions.
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
    np.dtype(np.complex64): (types_pb2.DT_COMPLEX64, "scomplex_val"),  # real and imaginary parts in turn
    np.dtype(np.complex128): (types_pb2.DT_COMPLEX128, "dcomplex_val"),
}
_BY_TF_TYPE = {tf_type: (dtype, field) for dtype, (tf_type, field) in _NUMERIC.items()}
_SIXTEEN_BITS = frozenset({types_pb2.DT_HALF, types_pb2.DT_BFLOAT16})  # their *_val holds each value's 16 bits
_STRING_ITEM_BYTES = np.dtype(object).itemsize  # a decoded string tensor costs a pointer per item, at least


def _bfloat16() -> np.dtype:
    """TensorFlow's bfloat16 as numpy knows it, from ml_dtypes (which TensorFlow installs), imported only
    when a bfloat16 tensor comes: a client that never meets one does not pay for the import."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def _type_of(dtype: np.dtype) -> tuple[int, str] | None:
    """(DataType, *_val field) of a numpy dtype; None where TensorFlow has none."""
    found = _NUMERIC.get(dtype)
    if found is None and dtype.name == "bfloat16":  # only ml_dtypes makes one, so it is imported already
        return types_pb2.DT_BFLOAT16, "half_val"
    return found


def _dtype_of(tf_type: int) -> tuple[np.dtype, str]:
    """(numpy dtype, *_val field) of a DataType; ValueError for one without a numpy twin here."""
    if tf_type == types_pb2.DT_BFLOAT16:
        return _bfloat16(), "half_val"
    if tf_type not in _BY_TF_TYPE:
        name = types_pb2.DataType.Name(tf_type) if tf_type in types_pb2.DataType.values() else str(tf_type)
        raise ValueError(f"unsupported tensor type {name}")
    return _BY_TF_TYPE[tf_type]


def numpy_dtype(tf_type: int) -> np.dtype:
    """The numpy dtype of a TensorFlow DataType (DT_STRING: ``object``); ValueError for one without a twin here."""
    return np.dtype(object) if tf_type == types_pb2.DT_STRING else _dtype_of(tf_type)[0]


def fill(proto: tensor_pb2.TensorProto, values: np.ndarray | Sequence[bytes], *, typed: bool = False) -> None:
    """Write ``values`` into ``proto`` in place (a request's own map entry: no second copy of the payload).

    Byte strings (``bytes`` items, or a numpy ``S``/object array of them) become
    DT_STRING; ``str`` items are UTF-8 encoded; numbers keep their dtype, in
    ``tensor_content``, or with ``typed`` in the typed ``*_val`` field.
    """
    if not isinstance(values, np.ndarray):
        values = np.asarray(values, dtype=object if values and isinstance(values[0], (bytes, str)) else None)
    for size in values.shape:
        proto.tensor_shape.dim.add(size=size)
    if values.dtype.kind in "OSU":
        proto.dtype = types_pb2.DT_STRING
        items = values.reshape(-1).tolist()  # S: bytes, U: str, O: whatever the array holds
        if values.dtype.kind != "S" and not {bytes}.issuperset(map(type, items)):
            items = [item.encode() if isinstance(item, str) else bytes(item) for item in items]
        proto.string_val.extend(items)  # one call over a list of bytes: the repeated field's fast path
        return
    dtype = values.dtype if values.dtype.isnative else values.dtype.newbyteorder("=")
    tf_type = _type_of(dtype)
    if tf_type is None:
        raise TypeError(f"no TensorFlow type for numpy dtype {values.dtype}")
    proto.dtype, field = tf_type
    if not typed:
        proto.tensor_content = np.ascontiguousarray(values, dtype=dtype.newbyteorder("<")).tobytes()
        return
    flat = np.ascontiguousarray(values, dtype=dtype).reshape(-1)
    if tf_type[0] in _SIXTEEN_BITS:
        flat = flat.view(np.uint16)
    elif dtype.kind == "c":
        flat = flat.view(flat.real.dtype)
    getattr(proto, field).extend(flat.tolist())


def to_ndarray(
    proto: tensor_pb2.TensorProto, dtype: type | np.dtype | None = None, *, max_bytes: int | None = None
) -> np.ndarray:
    """The array ``proto`` holds; ValueError unless it holds ``dtype`` (DT_STRING: ``object``), when given,
    and, with ``max_bytes``, unless its shape fits in that many bytes (checked before anything is allocated)."""
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise ValueError(f"negative dimension in {list(shape)}")
    string = proto.dtype == types_pb2.DT_STRING
    held, field = (np.dtype(object), "string_val") if string else _dtype_of(proto.dtype)
    if dtype is not None and np.dtype(dtype) != held:
        raise ValueError(f"expected {_name_of(np.dtype(dtype))}, got {types_pb2.DataType.Name(proto.dtype)}")
    size = math.prod(shape)  # np.prod costs more than the rest of a small response's conversion
    if max_bytes is not None and size * (_STRING_ITEM_BYTES if string else held.itemsize) > max_bytes:
        raise ValueError(f"{list(shape)} {'string' if string else held.name} tensor exceeds {max_bytes} bytes")
    if string:
        return _repeat_last(np.array(list(proto.string_val), dtype=object), size, b"").reshape(shape)
    if proto.tensor_content:  # little-endian, as TensorFlow writes it; no copy where that is native
        return np.frombuffer(proto.tensor_content, dtype=held.newbyteorder("<")).astype(held, copy=False).reshape(shape)
    values = getattr(proto, field)
    if proto.dtype in _SIXTEEN_BITS:
        array = np.fromiter(values, dtype=np.uint16, count=len(values)).view(held)
    elif held.kind == "c":
        parts = np.dtype(np.float32 if held == np.complex64 else np.float64)
        array = np.fromiter(values, dtype=parts, count=len(values)).view(held)
    else:
        array = np.fromiter(values, dtype=held, count=len(values))  # twice as fast as np.asarray on a repeated field
    return _repeat_last(array, size, 0).reshape(shape)


def _repeat_last(values: np.ndarray, size: int, empty) -> np.ndarray:
    """``size`` values: the last one repeated where fewer are given, ``empty`` where none are."""
    if len(values) < size:
        padding = values[-1:] if len(values) else np.array([empty], dtype=values.dtype)
        values = np.concatenate([values, np.repeat(padding, size - len(values))])
    return values


def _name_of(dtype: np.dtype) -> str:
    if dtype == np.dtype(object):
        return "DT_STRING"
    tf_type = _type_of(dtype)
    return types_pb2.DataType.Name(tf_type[0]) if tf_type else str(dtype)
