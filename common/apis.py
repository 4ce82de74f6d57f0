"""TF Serving's generated gRPC messages and stubs, imported without starting TensorFlow.

The official ``tensorflow-serving-api`` modules import TensorFlow's own
generated protos (``tensorflow.core.framework.tensor_pb2`` and a few more),
and importing anything under ``tensorflow`` runs ``tensorflow/__init__.py``
first: the whole runtime, seconds and hundreds of MiB, in a client that only builds
and reads messages. Here the generated modules are imported while
``sys.modules["tensorflow"]`` is a bare package whose ``__path__`` is the
installed ``tensorflow`` directory, so Python finds the real ``*_pb2`` files
there without running the real ``__init__``. The stand-in is removed at once,
so a later ``import tensorflow`` (the server, the in-process batch mode, a
test) runs the real ``__init__`` as usual and finds the protos already loaded:
they are the same module objects, so ``tf.make_tensor_proto`` output goes into
these messages as before.

Only the top-level package is stood in: ``tensorflow/core/__init__.py`` and
the other packages between it and the protos are empty files, so they are
imported for real and stay, keeping ``tensorflow.core.framework.tensor_pb2``
reachable as an attribute for code that reaches it that way. Nothing is
vendored or regenerated: these are the installed modules, and the wire
format is theirs.

Usage: ``from fmnist.common.apis import predict_pb2, prediction_service_pb2_grpc``
"""

from __future__ import annotations

import importlib.util
import sys
import types


def _stand_in_for_tensorflow() -> types.ModuleType | None:
    """Put a bare ``tensorflow`` package in ``sys.modules`` and return it; None when one is there already.

    A real ``tensorflow`` already imported (the server, a test) is simply used.
    """
    if "tensorflow" in sys.modules:
        return None
    spec = importlib.util.find_spec("tensorflow")  # for a top-level name this locates it, runs nothing
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("tensorflow is not installed; tensorflow-serving-api's protos live in it")
    stand_in = types.ModuleType("tensorflow", "stand-in for serving.apis, removed once the protos are imported")
    stand_in.__path__ = list(spec.submodule_search_locations)
    sys.modules["tensorflow"] = stand_in
    return stand_in


_stand_in = _stand_in_for_tensorflow()
try:
    # from-imports only: "import tensorflow.core..." would bind (and so import) the top-level package.
    from tensorflow.core.framework import tensor_pb2, types_pb2
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_management_pb2,
        model_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_log_pb2,
        prediction_service_pb2_grpc,
    )
    from tensorflow_serving.config import model_server_config_pb2
finally:
    if _stand_in is not None and sys.modules.get("tensorflow") is _stand_in:
        del sys.modules["tensorflow"]
    del _stand_in

__all__ = [
    "get_model_metadata_pb2",
    "get_model_status_pb2",
    "model_management_pb2",
    "model_pb2",
    "model_server_config_pb2",
    "model_service_pb2_grpc",
    "predict_pb2",
    "prediction_log_pb2",
    "prediction_service_pb2_grpc",
    "tensor_pb2",
    "types_pb2",
]
