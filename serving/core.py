"""The request handlers behind both front ends: Predict, Classify, Regress, MultiInference, metadata, status, reload.

TF Serving's PredictionServiceImpl and ModelServiceImpl call one implementation
per API (TensorflowPredictor, the classification and regression services,
RunMultiInference, GetModelMetadataImpl, GetModelStatusImpl) over the
ServerCore; :class:`ServingCore` is those implementations over the
:class:`~fmnist.serving.models.ModelManager`. It speaks protos, raises
ServingError with TF Serving's code and message, and knows nothing of gRPC or
HTTP: the gRPC adapters (:mod:`fmnist.serving.grpc_services`) and the REST
handler (:mod:`fmnist.serving.rest`) both call it and map its errors once.

Usage::

    core = ServingCore(manager, Limits(), scheduler=None, monitor=metrics.Metrics())
    response = core.predict(request, timeout=5.0)

Ownership: the core owns nothing; the :class:`~fmnist.serving.server.Server`
that made it owns the manager and the scheduler it calls.

Thread safety: every method may be called from many request threads at once;
the core holds no state of its own beyond what it was given.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)

from fmnist.common import errors, imagefile
from fmnist.serving import batching, inference, metrics, models, predict
from fmnist.serving.loader import LoadedVersion
from fmnist.serving.signature import DEFAULT_SIGNATURE, Signature

SIGNATURE_DEF_FIELD = "signature_def"


class ServingCore:
    """The protocol-independent request handlers behind both the gRPC and the REST front end.

    Each raises ServingError with TF Serving's code and message.
    ``check_method_names`` is ``--enable_signature_method_name_check``.
    """

    def __init__(
        self,
        manager: models.ModelManager,
        limits: imagefile.Limits,
        scheduler: batching.BatchScheduler | None,
        monitor: metrics.Metrics,
        check_method_names: bool = False,
    ):
        self.manager = manager
        self.limits = limits
        self.scheduler = scheduler
        self.metrics = monitor
        self.check_method_names = check_method_names

    def _resolve(self, spec: model_pb2.ModelSpec, timeout: float | None) -> LoadedVersion:
        if timeout is not None and timeout <= 0:
            raise errors.DeadlineExceeded("Deadline Exceeded")
        return self.manager.resolve(spec)

    def _run(
        self, version: LoadedVersion, signature: Signature, inputs: dict, timeout: float | None
    ) -> dict[str, np.ndarray]:
        """Run validated inputs, through the batch scheduler when batching is on."""
        if self.scheduler is None:
            return signature.run(inputs)
        return self.scheduler.run((version.name, version.version), signature, inputs, timeout)

    def predict(self, request: predict_pb2.PredictRequest, timeout: float | None) -> predict_pb2.PredictResponse:
        _require_model_spec(request)
        version = self._resolve(request.model_spec, timeout)
        signature = predict.find_signature(version.signatures, request.model_spec.signature_name)
        if self.check_method_names:
            predict.check_method_name(signature.definition)
        inputs, aliases = predict.prepare(signature, request, self.limits)
        outputs = self._run(version, signature, inputs, timeout)
        response = predict.make_response(request.model_spec.name, version.version, signature.key, outputs, aliases)
        self.manager.request_logs.log("predict", request, response)
        return response

    def classify(
        self, request: classification_pb2.ClassificationRequest, timeout: float | None
    ) -> classification_pb2.ClassificationResponse:
        return self._on_examples(
            "classify",
            request,
            timeout,
            inference.check_classification,
            classification_pb2.ClassificationResponse(),
            inference.classification_result,
        )

    def regress(
        self, request: regression_pb2.RegressionRequest, timeout: float | None
    ) -> regression_pb2.RegressionResponse:
        return self._on_examples(
            "regress",
            request,
            timeout,
            inference.check_regression,
            regression_pb2.RegressionResponse(),
            inference.regression_result,
        )

    def _on_examples(self, kind: str, request, timeout: float | None, check: Callable, response, fill: Callable):
        """Classify or Regress: one signature over tf.Examples, its outputs into ``response.result``."""
        _require_model_spec(request)
        version = self._resolve(request.model_spec, timeout)
        signature = inference.find_signature(version.signatures, request.model_spec.signature_name)
        check(signature.definition, self.check_method_names)
        examples = inference.serialized_examples(request.input)
        inference.check_examples_input(signature.definition)
        outputs = self._run(version, signature, {inference.INPUTS: examples}, timeout)
        inference.model_spec(request.model_spec.name, signature.key, version.version, response.model_spec)
        fill(outputs, len(examples), response.result)
        self.manager.request_logs.log(kind, request, response)
        return response

    def multi_inference(
        self, request: inference_pb2.MultiInferenceRequest, timeout: float | None
    ) -> inference_pb2.MultiInferenceResponse:
        """Classify and regress tasks on one model over the same examples (multi_inference.cc's checks).

        Each task's signature runs as its own call over the shared examples, where TF Serving
        fetches the union of their outputs in one session run: the same answers for any
        stateless graph. In a TF1 export the signatures name tensors of one graph, and
        multi_inference.cc refuses tasks whose inputs are different tensors (the examples
        cannot feed ``x2``). A TF2 export gives every signature a placeholder of its own, so
        the names always differ; there TF Serving's runtime for functions
        (tfrt_multi_inference.cc) feeds each task's function the same serialized examples
        without comparing names, and so does this server. Either way each task's input
        must take serialized examples.
        """
        first = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
        version = self._resolve(first, timeout)
        checks = {
            inference.CLASSIFY_METHOD: inference.check_classification,
            inference.REGRESS_METHOD: inference.check_regression,
        }
        plan, keys, input_tensor = [], set(), None
        for task in request.tasks:
            if not task.model_spec.name:
                raise errors.InvalidArgument("Found ModelSpec with an empty model name.")
            if task.model_spec.name != first.name:
                raise errors.InvalidArgument(
                    "All ModelSpecs in a MultiInferenceRequest must access the same model name."
                )
            key = task.model_spec.signature_name or DEFAULT_SIGNATURE
            if key in keys:
                raise errors.InvalidArgument(f"Duplicate evaluation of signature: {key}")
            keys.add(key)
            if key not in version.signatures:
                raise errors.InvalidArgument(f"Requested signature not found in model graph: {key}")
            if task.method_name not in checks:
                raise errors.Unimplemented(f"Unsupported signature method_name: {task.method_name}")
            signature = version.signatures[key]
            checks[task.method_name](signature.definition, self.check_method_names)
            tensor = signature.definition.inputs[inference.INPUTS].name
            if not version.functions and input_tensor not in (None, tensor):
                raise errors.InvalidArgument("Input tensor must be the same for all Signatures.")
            input_tensor = tensor
            plan.append((task, signature))
        examples = inference.serialized_examples(request.input)
        for _, signature in plan:
            inference.check_examples_input(signature.definition)
        response = inference_pb2.MultiInferenceResponse()
        for task, signature in plan:
            outputs = self._run(version, signature, {inference.INPUTS: examples}, timeout)
            result = response.results.add()
            inference.model_spec(task.model_spec.name, signature.key, version.version, result.model_spec)
            if task.method_name == inference.CLASSIFY_METHOD:
                inference.classification_result(outputs, len(examples), result.classification_result)
            else:
                inference.regression_result(outputs, len(examples), result.regression_result)
        self.manager.request_logs.log("multi_inference", request, response)
        return response

    def metadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        _require_model_spec(request)
        if not request.metadata_field:
            raise errors.InvalidArgument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise errors.InvalidArgument(f"Metadata field {field} is not supported")
        version = self.manager.resolve(request.model_spec)
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        for key, definition in version.signature_defs.items():
            signature_defs.signature_def[key].CopyFrom(definition)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_defs)
        return response

    def status(
        self, request: get_model_status_pb2.GetModelStatusRequest
    ) -> get_model_status_pb2.GetModelStatusResponse:
        _require_model_spec(request)
        spec = request.model_spec
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            version = spec.version.value
        elif choice == "version_label":
            version = self.manager.label_version(spec.name, spec.version_label)
        else:
            version = None
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, status in self.manager.statuses(spec.name, version):
            entry = response.model_version_status.add(version=number, state=status.state)
            entry.status.error_code = status.error_code.value[0]
            entry.status.error_message = status.error_message
        return response

    def reload(self, request: model_management_pb2.ReloadConfigRequest) -> model_management_pb2.ReloadConfigResponse:
        self.manager.reload(request.config)
        return model_management_pb2.ReloadConfigResponse()


def _require_model_spec(request) -> None:
    """Every TF Serving API but MultiInference refuses a request without a ModelSpec first."""
    if not request.HasField("model_spec"):
        raise errors.InvalidArgument("Missing ModelSpec")
