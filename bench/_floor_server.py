"""The transport floor for bench/serving.py: a PredictionService that runs no model.

It parses each PredictRequest and answers with a PredictResponse of as many
rows, made once per row count by the embedded server's own response builder.
A call to it costs what a served call costs in the client, in gRPC and in
protobuf, and nothing of the model or of request validation, so the gap
between the two is the only part a faster server could remove.

Usage: ``python bench/_floor_server.py --port 8500`` (GetModelStatus says version 1 is AVAILABLE)
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
from concurrent import futures

import _common  # noqa: F401  (first: fixes sys.path)
import grpc
import numpy as np
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from fmnist.common import names
from fmnist.serving import predict


@functools.lru_cache(maxsize=16)
def _response(model: str, signature: str, rows: int) -> predict_pb2.PredictResponse:
    outputs = {
        names.OUTPUT_PROBABILITIES: np.full((rows, names.NUM_CLASSES), 1 / names.NUM_CLASSES, np.float32),
        names.OUTPUT_CLASS_IDS: np.zeros(rows, np.int64),
        names.OUTPUT_CLASS_NAMES: np.array([names.CLASS_NAMES[0].encode()] * rows, dtype=object),
    }
    return predict.make_response(model, 1, signature or names.SERVING_DEFAULT, outputs, names.OUTPUTS)


class _Predictions(prediction_service_pb2_grpc.PredictionServiceServicer):
    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        # Rows: the first dimension of the request's one input (images or image_bytes).
        shape = next(iter(request.inputs.values())).tensor_shape.dim if request.inputs else ()
        return _response(request.model_spec.name, request.model_spec.signature_name, shape[0].size if shape else 1)


class _Models(model_service_pb2_grpc.ModelServiceServicer):
    def GetModelStatus(self, request, context) -> get_model_status_pb2.GetModelStatusResponse:
        response = get_model_status_pb2.GetModelStatusResponse()
        response.model_version_status.add(version=1, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
        return response


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", help="accepted for ServerProcess; nothing is logged")
    args = parser.parse_args(argv)
    limit = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    # As many worker threads as the embedded server's default (4 per core), so only the model differs.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4 * (os.cpu_count() or 1)), options=limit)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_Predictions(), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(_Models(), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(None))
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
