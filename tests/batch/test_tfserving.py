"""TFServingModelHandler: Beam's RunInference against a real TF Serving-compatible server on loopback."""

from __future__ import annotations

import shutil

import apache_beam as beam
import grpc
import numpy as np
import pytest
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from conftest import encode_png

from fmnist.batch import TFServingModelHandler
from fmnist.common import names, tensors
from fmnist.common.apis import predict_pb2
from fmnist.common.client import PredictionClient
from fmnist.serving.server import ServerConfig, start

IMAGES = 24


@pytest.fixture(scope="module")
def encoded(dataset) -> list[bytes]:
    return [encode_png(image) for image in dataset.test.images[:IMAGES]]


@pytest.fixture(scope="module")
def expected(server, encoded) -> list[int]:
    with PredictionClient(server) as client:
        return client.predict_encoded(encoded).class_ids.tolist()


def _handler(target: str, **kwargs) -> TFServingModelHandler:
    settings = dict(
        model_name=names.MODEL_NAME,
        signature_name=names.PREDICT_IMAGES,
        input_alias=names.INPUT_IMAGE_BYTES,
        max_batch_size=8,
    )
    return TFServingModelHandler(target, **{**settings, **kwargs})


def _pipeline() -> test_pipeline.TestPipeline:
    return test_pipeline.TestPipeline(runner="FnApiRunner")


def test_run_inference_over_encoded_bytes_gives_every_output_row_and_the_answering_version(server, encoded, expected):
    with _pipeline() as pipeline:
        results = (
            pipeline
            | beam.Create(list(enumerate(encoded)))
            | beam.MapTuple(lambda i, data: data)  # plain examples, not keyed
            | RunInference(_handler(server))
        )
        rows = results | beam.Map(
            lambda r: (
                r.example,
                int(r.inference[names.OUTPUT_CLASS_IDS]),
                r.inference[names.OUTPUT_CLASS_NAMES].decode(),
                round(float(r.inference[names.OUTPUT_PROBABILITIES].sum()), 4),
                r.model_id,
            )
        )
        want = [
            (data, c, names.CLASS_NAMES[c], 1.0, f"{names.MODEL_NAME}:1")
            for data, c in zip(encoded, expected, strict=False)
        ]
        assert_that(rows, equal_to(want))


def test_keyed_examples_and_numeric_input_with_an_output_filter(server, dataset, expected):
    handler = KeyedModelHandler(
        _handler(
            server,
            signature_name=names.SERVING_DEFAULT,
            input_alias=names.INPUT_IMAGES,
            output_aliases=[names.OUTPUT_CLASS_IDS],
        )
    )
    keyed = [(f"image-{i}", image.astype(np.float32)) for i, image in enumerate(dataset.test.images[:IMAGES])]
    with _pipeline() as pipeline:
        rows = (
            pipeline
            | beam.Create(keyed)
            | RunInference(handler)
            | beam.MapTuple(lambda key, r: (key, sorted(r.inference), int(r.inference[names.OUTPUT_CLASS_IDS])))
        )
        # raw pixels and the PNGs of the same images get the same class from the same model
        assert_that(rows, equal_to([(f"image-{i}", [names.OUTPUT_CLASS_IDS], c) for i, c in enumerate(expected)]))


def test_a_rejected_batch_goes_to_the_dead_letter_output_and_the_others_are_classified(server, encoded, expected):
    broken = encoded[0][:40]
    with _pipeline() as pipeline:
        main, other = (
            pipeline
            | beam.Create([broken, *encoded[1:4]])
            | RunInference(_handler(server, max_batch_size=1, min_batch_size=1)).with_exception_handling()
        )
        assert_that(
            main | beam.Map(lambda r: int(r.inference[names.OUTPUT_CLASS_IDS])),
            equal_to(expected[1:4]),
            label="classified",
        )
        # (the batch, (exception type, message, traceback)): the server's verdict, not retried
        failed = other.failed_inferences | beam.Map(lambda f: (f[0], "INVALID_ARGUMENT" in str(f[1])))
        assert_that(failed, equal_to([([broken], True)]), label="dead letters")


def test_only_transient_codes_are_retried():
    handler = _handler("127.0.0.1:1")

    class Failed(grpc.RpcError):
        def __init__(self, code):
            self._code = code

        def code(self):
            return self._code

    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED):
        assert handler.retry_filter(Failed(code)), code
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
        assert not handler.retry_filter(Failed(code)), code
    assert not handler.retry_filter(ValueError("not an RPC"))


def test_batching_bounds_reach_batch_elements_and_a_heavy_batch_goes_as_several_requests():
    kwargs = _handler("h:1", min_batch_size=2, max_batch_size=16, max_batch_duration_secs=3).batch_elements_kwargs()
    assert kwargs == {"min_batch_size": 2, "max_batch_size": 16, "max_batch_duration_secs": 3}
    with pytest.raises(ValueError, match="a version or a version_label"):
        _handler("h:1", version=1, version_label="stable")

    class Stub:  # answers each request with its own row count, and records the requests' sizes
        sizes: list[int] = []

        def Predict(self, request, timeout):
            rows = len(request.inputs[names.INPUT_IMAGE_BYTES].string_val)
            self.sizes.append(rows)
            response = predict_pb2.PredictResponse()
            response.model_spec.name, response.model_spec.version.value = "m", 3
            tensors.fill(response.outputs["n"], np.full(rows, rows))
            return response

    examples = [b"x" * size for size in (400, 400, 300, 1500, 100, 100)]
    results = _handler("h:1", max_batch_weight=1000).request(examples, Stub())
    assert Stub.sizes == [2, 1, 1, 2]  # 800 | 300 | 1500 alone | 200: never over 1000 bytes but for one example
    assert [r.example for r in results] == examples and {r.model_id for r in results} == {"m:3"}


def test_replicas_share_the_calls_and_a_lost_one_costs_retries_not_examples(_pushed_once, tmp_path, encoded):
    # The same weights as version 1 on one replica and version 2 on the other, so model_id says who answered.
    for version in ("1", "2"):
        shutil.copytree(_pushed_once / names.MODEL_NAME / "1", tmp_path / version / names.MODEL_NAME / version)
    replicas = [
        start(ServerConfig(port=0, model_name=names.MODEL_NAME, model_base_path=str(tmp_path / v / names.MODEL_NAME)))
        for v in ("1", "2")
    ]
    try:
        handler = _handler(",".join(f"127.0.0.1:{r.port}" for r in replicas), num_retries=3)
        stub = handler.load_model()
        answered = [result.model_id for data in encoded[:12] for result in handler.run_inference([data], stub)]
        assert set(answered) == {f"{names.MODEL_NAME}:1", f"{names.MODEL_NAME}:2"}  # round-robin over both
        replicas[0].stop()
        after = [result.model_id for data in encoded for result in handler.run_inference([data], stub)]
        assert len(after) == len(encoded)  # every example answered, by the replica that is left
        assert set(after[-4:]) == {f"{names.MODEL_NAME}:2"}
    finally:
        for replica in replicas:
            replica.stop()
