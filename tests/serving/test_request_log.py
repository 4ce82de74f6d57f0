"""serving.request_log: sampled PredictionLog TFRecords, rotated, flushed on close, never failing a request."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from fmnist.common import tensors
from fmnist.common.errors import ServingError
from fmnist.serving import request_log


def _config(
    prefix: Path | str, rate: float = 1.0, collector: str = "file"
) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(
        f'model_config_list {{ config {{ name: "m" base_path: "/m" logging_config {{ '
        f"sampling_config {{ sampling_rate: {rate} }} "
        f'log_collector_config {{ type: "{collector}" filename_prefix: "{prefix}" }} }} }} }}',
        model_server_config_pb2.ModelServerConfig(),
    )


def _pair(i: int) -> tuple[predict_pb2.PredictRequest, predict_pb2.PredictResponse]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    tensors.fill(request.inputs["image_bytes"], [f"image {i}".encode()])
    response = predict_pb2.PredictResponse()
    response.model_spec.name, response.model_spec.version.value = "m", 7
    tensors.fill(response.outputs["class_ids"], np.array([i % 10]))
    return request, response


def _records(prefix: Path) -> list[prediction_log_pb2.PredictionLog]:
    files = sorted(prefix.parent.glob(f"{prefix.name}.*{request_log.SUFFIX}"))
    return [
        prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset([str(f) for f in files])
    ]


def test_every_request_is_logged_with_its_response_and_the_version_that_answered(tmp_path):
    logs = request_log.RequestLogs()
    logs.configure(_config(tmp_path / "logs" / "m"))
    for i in range(20):
        logs.log("predict", *_pair(i))
    logs.close()  # flushes what is queued
    records = _records(tmp_path / "logs" / "m")
    assert [r.predict_log.request.inputs["image_bytes"].string_val[0] for r in records] == [
        f"image {i}".encode() for i in range(20)
    ]
    assert {r.log_metadata.model_spec.version.value for r in records} == {7}
    assert records[0].log_metadata.sampling_config.sampling_rate == 1.0
    assert list(records[0].log_metadata.saved_model_tags) == ["serve"]
    assert [int(tensors.to_ndarray(r.predict_log.response.outputs["class_ids"])[0]) for r in records] == [
        i % 10 for i in range(20)
    ]


def test_sampling_rate_and_rotation_by_size(tmp_path):
    draws = itertools.cycle([0.1, 0.6])  # every other request falls under a rate of 0.5
    logs = request_log.RequestLogs(rotation=request_log.Rotation(max_bytes=200), sample=lambda: next(draws))
    logs.configure(_config(tmp_path / "m", rate=0.5))
    for i in range(10):
        logs.log("predict", *_pair(i))
    logs.close()
    assert len(_records(tmp_path / "m")) == 5
    assert len(list(tmp_path.glob("m.*.tfrecord"))) >= 2  # each file closed once past 200 bytes


def test_a_disk_that_refuses_drops_and_counts_records_but_never_fails_the_caller(tmp_path):
    (tmp_path / "not-a-folder").write_text("a file where the log folder should be")
    logs = request_log.RequestLogs()
    logs.configure(_config(tmp_path / "not-a-folder" / "m"))
    for i in range(3):
        logs.log("predict", *_pair(i))  # returns at once, whatever the disk does
    logs.close()
    assert logs.dropped["m"] == 3


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path):
    logs = request_log.RequestLogs(queue_size=1)
    logs.configure(_config(tmp_path / "m"))
    for i in range(500):
        logs.log("predict", *_pair(i))
    logs.close()
    assert logs.dropped["m"] > 0 and len(_records(tmp_path / "m")) + logs.dropped["m"] == 500


def test_an_unknown_collector_or_no_prefix_is_refused(tmp_path):
    with pytest.raises(ServingError, match="unsupported log collector type 'bigquery'"):
        request_log.RequestLogs().configure(_config(tmp_path / "m", collector="bigquery"))
    with pytest.raises(ServingError, match="needs a filename_prefix"):
        request_log.RequestLogs().configure(_config("", collector="file"))


def test_fmnist_batch_replays_logged_requests_through_the_model(tmp_path, _pushed_once, dataset):
    from conftest import encode_png

    from fmnist.batch import job
    from fmnist.common import names
    from fmnist.common.client import open_channel
    from fmnist.serving.server import ServerConfig, start

    def images_request(images: list[bytes]) -> predict_pb2.PredictRequest:
        """What PredictionClient.predict_encoded sends."""
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = names.MODEL_NAME, names.PREDICT_IMAGES
        tensors.fill(request.inputs[names.INPUT_IMAGE_BYTES], images)
        return request

    server = start(
        ServerConfig(port=0, model_name=names.MODEL_NAME, model_base_path=str(_pushed_once / names.MODEL_NAME))
    )
    target = f"127.0.0.1:{server.port}"
    try:
        logs = request_log.RequestLogs()
        config = _config(tmp_path / "logs" / names.MODEL_NAME)
        config.model_config_list.config[0].name = names.MODEL_NAME
        logs.configure(config)
        with open_channel(target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            logged = {}
            for start_at in range(0, 12, 4):  # three requests of four images, as a client sent them
                images = [encode_png(image) for image in dataset.test.images[start_at : start_at + 4]]
                request = images_request(images)
                response = stub.Predict(request, timeout=30)
                logs.log("predict", request, response)
                logged.update(
                    zip(images, tensors.to_ndarray(response.outputs[names.OUTPUT_CLASS_IDS]).tolist(), strict=False)
                )
            request = images_request([b"not an image"])  # refused by the header check
            logs.log("predict", request, predict_pb2.PredictResponse(model_spec=request.model_spec))
        logs.close()
        result = job.run(
            [
                "--input",
                f"{tmp_path}/logs/*{names.REQUEST_LOG_SUFFIX}",
                "--output",
                str(tmp_path / "out"),
                "--server",
                target,
                "--batch-size",
                "5",
            ]
        )
    finally:
        server.stop()
    assert (result.summary.inputs, result.summary.classified, result.summary.errors) == (13, 12, 1)
    records = [
        json.loads(line)
        for shard in (tmp_path / "out").glob("predictions-*")
        for line in shard.read_text().splitlines()
    ]
    assert all("#" in r["path"] and r["path"].endswith(tuple(f"-{n}" for n in range(4))) for r in records)
    assert sorted(r["class_id"] for r in records) == sorted(logged.values())  # the same model, the same answers


def test_the_server_logs_as_its_model_config_says_and_flushes_on_stop(tmp_path, _pushed_once, dataset):
    from conftest import encode_png

    from fmnist.common import names
    from fmnist.common.client import PredictionClient
    from fmnist.serving.server import ServerConfig, start

    prefix = tmp_path / "logs" / names.MODEL_NAME
    config_file = tmp_path / "models.config"
    config_file.write_text(
        f'model_config_list {{ config {{ name: "{names.MODEL_NAME}" base_path: "{_pushed_once / names.MODEL_NAME}" '
        f'model_platform: "tensorflow" logging_config {{ sampling_config {{ sampling_rate: 1.0 }} '
        f'log_collector_config {{ type: "file" filename_prefix: "{prefix}" }} }} }} }}'
    )
    server = start(ServerConfig(port=0, model_config_file=str(config_file)))
    try:
        with PredictionClient(f"127.0.0.1:{server.port}") as client:
            answers = [client.predict_encoded([encode_png(dataset.test.images[i])]).class_ids[0] for i in range(5)]
        metrics = server.core.metrics.exposition().decode()
    finally:
        server.stop()  # writes what is still queued
    records = _records(prefix)
    assert len(records) == 5
    assert [
        int(tensors.to_ndarray(r.predict_log.response.outputs[names.OUTPUT_CLASS_IDS])[0]) for r in records
    ] == answers
    assert {r.log_metadata.model_spec.version.value for r in records} == {1}
    assert "request_log_dropped" in metrics  # the metric exists; nothing was dropped here
