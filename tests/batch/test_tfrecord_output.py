"""``fmnist batch --format tfrecord``: TF Serving PredictionLogs, replayable, fed onward to another job.

Real PNG files in class folders (plus a truncated PNG and a text file the
job's check refuses) go through a real embedded server on
loopback. The records are read back with TensorFlow's own TFRecord reader and
parsed as ``tensorflow.serving.PredictionLog``; each logged request is sent
again to the same server over raw gRPC, and the jsonl run of the same files
is the reference for paths, classes and probabilities.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf

from fmnist.batch import compare, job, readers, records
from fmnist.batch.outcomes import Classified, Image, Reason
from fmnist.common import names, tensors
from fmnist.common.apis import predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc
from fmnist.common.imagefile import Limits

BATCH = 8  # several requests
BAD = {"truncated.png": Reason.NOT_AN_IMAGE, "notes.txt": Reason.NOT_AN_IMAGE}  # labelled_tree's two errors
SHARD = re.compile(r"predictions-\d{5}-of-\d{5}\.tfrecord")


def _good_files(tree: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in tree.rglob("*") if p.is_file() and p.name not in BAD}


def _logs(output: Path) -> list[prediction_log_pb2.PredictionLog]:
    """Every record of every ``predictions-*.tfrecord`` shard, read as the README says."""
    shards = sorted(str(p) for p in output.glob("predictions-*.tfrecord"))
    return [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(shards)]


def _jsonl(output: Path, name: str) -> dict[str, dict]:
    shards = sorted(output.glob(f"{name}-*.jsonl"))
    rows = [json.loads(line) for shard in shards for line in shard.read_text().splitlines()]
    by_path = {row["path"]: row for row in rows}
    assert len(by_path) == len(rows), "a file was written twice"
    return by_path


def _probabilities(log: prediction_log_pb2.PredictionLog) -> np.ndarray:
    return tensors.to_ndarray(log.predict_log.response.outputs[names.OUTPUT_PROBABILITIES], np.float32)


@pytest.fixture(scope="module")
def tfrecord_run(labelled_tree, server, tmp_path_factory) -> tuple[Path, job.JobResult]:
    output = tmp_path_factory.mktemp("tfrecord-out")
    argv = [
        "--input",
        str(labelled_tree),
        "--output",
        str(output),
        "--server",
        server,
        "--batch-size",
        str(BATCH),
        "--format",
        "tfrecord",
    ]
    return output, job.run(argv)


@pytest.fixture(scope="module")
def jsonl_run(labelled_tree, server, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("jsonl-out")
    job.run(
        [
            "--input",
            str(labelled_tree),
            "--output",
            str(output),
            "--server",
            server,
            "--batch-size",
            str(BATCH),
            "--top-k",
            str(names.NUM_CLASSES),
        ]
    )
    return output


def test_one_prediction_log_per_classified_file_holding_its_request_and_answer(tfrecord_run, labelled_tree):
    output, result = tfrecord_run
    shards = sorted(p.name for p in output.glob("predictions-*"))
    assert shards and all(SHARD.fullmatch(name) for name in shards), shards
    logs = _logs(output)
    files = _good_files(labelled_tree)
    assert sorted(log.log_metadata.request_origin for log in logs) == sorted(files)  # each file once
    assert result.summary.classified == len(logs)
    for log in logs:
        path = log.log_metadata.request_origin
        assert log.WhichOneof("log_type") == "predict_log"
        request, response = log.predict_log.request, log.predict_log.response
        # the request that classifies this one file: any version may answer it
        assert (request.model_spec.name, request.model_spec.signature_name) == (names.MODEL_NAME, names.PREDICT_IMAGES)
        assert not request.model_spec.HasField("version") and not request.model_spec.version_label
        assert list(request.inputs) == [names.INPUT_IMAGE_BYTES]
        assert tensors.to_ndarray(request.inputs[names.INPUT_IMAGE_BYTES], object).tolist() == [files[path]]
        # the answer, as TF Serving writes it: the version that answered, every output in its typed field
        assert (response.model_spec.name, response.model_spec.version.value, response.model_spec.signature_name) == (
            names.MODEL_NAME,
            1,
            names.PREDICT_IMAGES,
        )
        assert log.log_metadata.model_spec == response.model_spec
        assert set(response.outputs) == set(names.OUTPUTS)
        probabilities = _probabilities(log)
        assert probabilities.shape == (1, names.NUM_CLASSES)
        assert len(response.outputs[names.OUTPUT_PROBABILITIES].float_val) == names.NUM_CLASSES  # not tensor_content
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)
        class_id = int(np.argmax(probabilities[0]))
        assert list(response.outputs[names.OUTPUT_CLASS_IDS].int64_val) == [class_id]
        assert list(response.outputs[names.OUTPUT_CLASS_NAMES].string_val) == [names.CLASS_NAMES[class_id].encode()]


def test_each_logged_request_replayed_against_the_server_gets_the_logged_answer(tfrecord_run, server):
    output, _ = tfrecord_run
    logs = _logs(output)
    with grpc.insecure_channel(server) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for log in logs:
            request = predict_pb2.PredictRequest.FromString(log.predict_log.request.SerializeToString())
            replayed = stub.Predict(request, timeout=30)
            logged = log.predict_log.response
            assert replayed.model_spec == logged.model_spec, log.log_metadata.request_origin
            for alias in names.OUTPUTS:  # same type, shape and field as a served answer
                mine, theirs = logged.outputs[alias], replayed.outputs[alias]
                assert (mine.dtype, mine.tensor_shape) == (theirs.dtype, theirs.tensor_shape)
                assert [f.name for f, _ in mine.ListFields()] == [f.name for f, _ in theirs.ListFields()]
            # one image alone, where the job sent it in a batch of 8: equal up to float32 rounding
            np.testing.assert_allclose(
                _probabilities(log), tensors.to_ndarray(replayed.outputs[names.OUTPUT_PROBABILITIES]), atol=1e-5
            )
            assert logged.outputs[names.OUTPUT_CLASS_IDS] == replayed.outputs[names.OUTPUT_CLASS_IDS]


def test_errors_stay_jsonl_beside_the_tfrecords(tfrecord_run, labelled_tree):
    output, result = tfrecord_run
    assert not list(output.glob("errors-*.tfrecord"))
    errors = _jsonl(output, "errors")
    assert {path: row["reason"] for path, row in errors.items()} == {str(labelled_tree / n): r for n, r in BAD.items()}
    assert all(row["detail"] for row in errors.values())
    summary = result.summary
    assert summary.inputs == summary.classified + summary.errors == len(_good_files(labelled_tree)) + len(BAD)
    assert (output / "_SUCCESS").exists() and (output / "summary.json").exists()
    listed = {Path(p).name for p in result.files}
    assert {p.name for p in output.glob("predictions-*.tfrecord")} <= listed
    assert {p.name for p in output.glob("errors-*.jsonl")} <= listed


def test_tfrecord_and_jsonl_outputs_hold_the_same_predictions(tfrecord_run, jsonl_run):
    logs = {log.log_metadata.request_origin: log for log in _logs(tfrecord_run[0])}
    rows = _jsonl(jsonl_run, "predictions")
    assert logs.keys() == rows.keys()
    for path, row in rows.items():
        log = logs[path]
        probabilities = _probabilities(log)[0]
        assert int(np.argmax(probabilities)) == row["class_id"]
        assert log.predict_log.response.outputs[names.OUTPUT_CLASS_NAMES].string_val[0].decode() == row["class_name"]
        by_class = {t["class_id"]: t["probability"] for t in row["top_k"]}  # --top-k 10: every class
        assert [probabilities[i] for i in range(names.NUM_CLASSES)] == pytest.approx(
            [by_class[i] for i in range(names.NUM_CLASSES)], abs=1e-6
        )
        spec = log.predict_log.response.model_spec
        assert (spec.name, spec.version.value) == (row["model_name"], row["model_version"])
    assert _jsonl(tfrecord_run[0], "errors").keys() == _jsonl(jsonl_run, "errors").keys()


def test_replaying_the_tfrecords_names_each_image_by_its_original_path(tfrecord_run, jsonl_run, server, tmp_path):
    output, first = tfrecord_run
    replay = job.run(
        [
            "--input",
            f"{output}/predictions-*{names.REQUEST_LOG_SUFFIX}",
            "--output",
            str(tmp_path),
            "--server",
            server,
            "--batch-size",
            str(BATCH),
        ]
    )
    rows = _jsonl(tmp_path, "predictions")
    original = _jsonl(jsonl_run, "predictions")
    assert rows.keys() == original.keys()  # /…/Bag/12.png, not <log>#<digest>-0
    assert {p: r["class_id"] for p, r in rows.items()} == {p: r["class_id"] for p, r in original.items()}
    assert (replay.summary.inputs, replay.summary.errors) == (first.summary.classified, 0)
    # the paths keep their class folders, so the replay is evaluated as the first run was
    assert replay.summary.evaluation.files == first.summary.evaluation.files == len(rows)
    assert replay.summary.evaluation.accuracy == pytest.approx(first.summary.evaluation.accuracy)


def test_fmnist_compare_reads_the_tfrecords_as_its_input(tfrecord_run, server, tmp_path):
    output, first = tfrecord_run
    result = compare.run(
        [
            "--input",
            f"{output}/predictions-*.tfrecord",
            "--output",
            str(tmp_path),
            "--server",
            server,
            "--baseline",
            "1",
            "--candidate",
            "1",
            "--batch-size",
            str(BATCH),
        ]
    )
    comparison = result.comparison
    assert (comparison.files, comparison.compared, comparison.errors) == (first.summary.classified,) * 2 + (0,)
    assert comparison.agreement == 1.0
    assert comparison.accuracy["files"] == first.summary.evaluation.files  # labelled by the logged paths


def test_in_process_runs_write_the_same_prediction_logs(labelled_tree, model_base, tfrecord_run, tmp_path):
    job.run(
        [
            "--input",
            str(labelled_tree),
            "--output",
            str(tmp_path),
            "--in-process",
            str(model_base),
            "--batch-size",
            str(BATCH),
            "--format",
            "tfrecord",
        ]
    )
    local = {log.log_metadata.request_origin: log for log in _logs(tmp_path)}
    served = {log.log_metadata.request_origin: log for log in _logs(tfrecord_run[0])}
    assert local.keys() == served.keys()
    for path, log in local.items():
        twin = served[path].predict_log
        assert log.predict_log.request == twin.request  # the same replayable request, whichever path classified it
        assert log.predict_log.response.model_spec == twin.response.model_spec
        np.testing.assert_allclose(_probabilities(log), _probabilities(served[path]), atol=1e-5)
    assert _jsonl(tmp_path, "errors").keys() == _jsonl(tfrecord_run[0], "errors").keys()


def _readme_readers() -> list[str]:
    readme = (Path(__file__).resolve().parents[2] / "docs" / "batch.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    return [b for b in blocks if "predictions-*.tfrecord" in b and "PredictionLog.FromString" in b]


def test_the_readmes_readers_read_every_record(tfrecord_run, labelled_tree, tmp_path, monkeypatch, capsys):
    readers = _readme_readers()
    assert len(readers) == 2  # with TensorFlow, and without its runtime
    (tmp_path / "out").symlink_to(tfrecord_run[0])
    monkeypatch.chdir(tmp_path)  # the examples read out/predictions-*.tfrecord
    classes = {
        log.log_metadata.request_origin: log.predict_log.response.outputs[names.OUTPUT_CLASS_IDS].int64_val[0]
        for log in _logs(tfrecord_run[0])
    }
    with_tf, without_tf = readers
    exec(compile(with_tf, "README.md", "exec"), {})  # path, class name, confidence, version
    rows = [re.fullmatch(r"(.+\.png) (.+) (\S+) (\d+)", line).groups() for line in capsys.readouterr().out.splitlines()]
    assert {path: name for path, name, _, _ in rows} == {p: names.CLASS_NAMES[c] for p, c in classes.items()}
    assert len(rows) == len(classes) and all(0.1 <= float(c) <= 1 and v == "1" for _, _, c, v in rows)
    exec(compile(without_tf, "README.md", "exec"), {})  # path, class id
    rows = [line.rsplit(" ", 1) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == len(classes) and {path: int(class_id) for path, class_id in rows} == classes
    assert set(classes) == set(_good_files(labelled_tree))


# --- units -----------------------------------------------------------------------------------------


def _log_bytes(images: list[bytes], origin: str = "") -> bytes:
    log = prediction_log_pb2.PredictionLog()
    tensors.fill(log.predict_log.request.inputs[names.INPUT_IMAGE_BYTES], images)
    log.log_metadata.request_origin = origin
    return log.SerializeToString()


def test_a_logged_origin_names_the_replayed_image_and_its_folder_labels_it(labelled_tree):
    png = next(p for p in labelled_tree.rglob("*.png") if p.name not in BAD).read_bytes()
    read = readers.LoggedImages(Limits())
    (one,) = read.process(("log.tfrecord", _log_bytes([png], "/data/Bag/7.png")))
    assert one == Image("/data/Bag/7.png", png, names.CLASS_NAMES.index("Bag"))
    several = list(read.process(("log.tfrecord", _log_bytes([png, png], "client-a"))))
    assert [(i.path, i.label) for i in several] == [("client-a#0", None), ("client-a#1", None)]
    (unnamed,) = read.process(("log.tfrecord", _log_bytes([png])))
    assert re.fullmatch(r"log\.tfrecord#[0-9a-f]{12}-0", unnamed.path) and unnamed.label is None


def test_an_outcome_without_its_bytes_cannot_become_a_prediction_log():
    probabilities = (0.0, 0.9) + (0.0125,) * 8
    with pytest.raises(ValueError, match="a.png: no image bytes"):
        records.prediction_log(Classified("a.png", None, probabilities, names.MODEL_NAME, 3))
    kept = Classified("a.png", None, probabilities, names.MODEL_NAME, 3, b"png")
    assert kept == Classified("a.png", None, probabilities, names.MODEL_NAME, 3)  # the bytes are not the outcome
    log = prediction_log_pb2.PredictionLog.FromString(records.prediction_log(kept))
    assert log.predict_log.request.inputs[names.INPUT_IMAGE_BYTES].string_val == [b"png"]
    assert log.predict_log.response.outputs[names.OUTPUT_CLASS_IDS].int64_val == [1]
    assert log.predict_log.response.model_spec.version.value == 3
