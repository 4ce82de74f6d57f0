"""The gRPC services: TF Serving's PredictionService and ModelService over a :class:`ServingCore`.

Each RPC is the core's handler for it, called with the call's remaining
deadline; ``_answer`` is the one place where a ServingError becomes the
gRPC status TF Serving answers with (its ``ToGRPCStatus``), where any other
exception becomes INTERNAL rather than taking the server down, and where each
request is counted in the metrics. (The REST handler, :mod:`fmnist.serving.rest`,
does the same for HTTP.)

Usage::

    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)

Thread safety: gRPC calls the methods from its worker threads, concurrently; they keep no state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from fmnist.common import errors
from fmnist.serving.core import ServingCore

log = logging.getLogger(__name__)


class _OverCore:
    """What both services share: the core, and :meth:`_answer`."""

    def __init__(self, core: ServingCore):
        self._core = core

    def _answer(self, api: str, model: str, context: grpc.ServicerContext, handler: Callable, *args):
        """``handler(*args)``'s response, or the call aborted with its error's status; counted either way."""
        started = time.perf_counter()
        code, details, response = grpc.StatusCode.OK, "", None
        try:
            response = handler(*args)
        except errors.ServingError as error:
            code, details = error.code, error.details
        except Exception as error:  # no request may take the server down
            log.exception("%s failed", api)
            code, details = grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}"
        self._core.metrics.observe_request(model, api, code.name, time.perf_counter() - started)
        if code is not grpc.StatusCode.OK:
            context.abort(code, details)
        return response


class PredictionService(_OverCore, prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress, MultiInference and GetModelMetadata."""

    def Predict(self, request, context):
        core, model = self._core, request.model_spec.name
        return self._answer("Predict", model, context, core.predict, request, context.time_remaining())

    def Classify(self, request, context):
        core, model = self._core, request.model_spec.name
        return self._answer("Classify", model, context, core.classify, request, context.time_remaining())

    def Regress(self, request, context):
        core, model = self._core, request.model_spec.name
        return self._answer("Regress", model, context, core.regress, request, context.time_remaining())

    def MultiInference(self, request, context):
        core, model = self._core, request.tasks[0].model_spec.name if request.tasks else ""
        return self._answer("MultiInference", model, context, core.multi_inference, request, context.time_remaining())

    def GetModelMetadata(self, request, context):
        return self._answer("GetModelMetadata", request.model_spec.name, context, self._core.metadata, request)


class ModelService(_OverCore, model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus and HandleReloadConfigRequest."""

    def GetModelStatus(self, request, context):
        return self._answer("GetModelStatus", request.model_spec.name, context, self._core.status, request)

    def HandleReloadConfigRequest(self, request, context):
        return self._answer("HandleReloadConfigRequest", "", context, self._core.reload, request)
