"""The trust outputs in the batch jobs: ``ood_score`` and ``unfamiliar`` in every record format, the summary,
the report and ``fmnist compare`` (docs/trust.md, docs/batch.md).

One tree holds the committed out-of-distribution PNGs (tests/data/ood: noise, shapes, digits, photo crops,
inverted garments) in an unlabelled folder, real Fashion-MNIST test images in class folders, and a text file.
It goes through ``fmnist batch`` served and in-process with the session's calibrated model
(``_trusted_once``); what the records say is checked against that SavedModel's own ``predict_images``,
called directly on the same bytes. The session's uncalibrated model (``_pushed_once``, as an older
export) shows that a version without the outputs keeps working, with null fields.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline as beam_testing
from batch_outputs import SCORE_TOLERANCE, assert_same_outputs, by_path, read_rows
from conftest import encode_png, two_versions_config

from fmnist.batch import compare, job, launcher, records, report, summary
from fmnist.batch.inference import ServerSettings
from fmnist.batch.outcomes import Classified, from_json, to_json
from fmnist.common import names, tensors
from fmnist.common.apis import predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc
from fmnist.common.client import PredictionClient
from fmnist.serving.server import ServerConfig, start

OOD_DIR = Path(__file__).resolve().parents[1] / "data" / "ood"
GARMENTS = 60  # Fashion-MNIST test images, in class folders
BATCH = 8


@pytest.fixture(scope="module")
def tree(tmp_path_factory, dataset) -> Path:
    """ood/: the 40 committed out-of-distribution PNGs; <class>/: GARMENTS test images; notes.txt: an error."""
    root = tmp_path_factory.mktemp("unfamiliar-tree")
    shutil.copytree(OOD_DIR, root / "ood")
    for i in range(GARMENTS):
        folder = root / names.folder_name(int(dataset.test.labels[i]))
        folder.mkdir(exist_ok=True)
        (folder / f"{i}.png").write_bytes(encode_png(dataset.test.images[i]))
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def direct(tree, trusted_base) -> dict[str, tuple[float, bool, int]]:
    """path → (ood score, unfamiliar, class id) from the SavedModel's predict_images called directly."""
    paths = sorted(str(p) for p in tree.rglob("*.png"))
    signature = tf.saved_model.load(str(trusted_base / "1")).signatures[names.PREDICT_IMAGES]
    outputs = signature(**{names.INPUT_IMAGE_BYTES: tf.constant([Path(p).read_bytes() for p in paths])})
    rows = zip(
        outputs[names.OUTPUT_OOD_SCORES].numpy().tolist(),
        outputs[names.OUTPUT_UNFAMILIAR].numpy().tolist(),
        outputs[names.OUTPUT_CLASS_IDS].numpy().tolist(),
        strict=True,
    )
    return dict(zip(paths, rows, strict=True))


def _run(tree: Path, output: Path, *source: str, test_pipeline=None) -> job.JobResult:
    argv = ["--input", str(tree), "--output", str(output), "--batch-size", str(BATCH), *source]
    return job.run(argv, test_pipeline)


@pytest.fixture(scope="module")
def served(tree, trusted_server, tmp_path_factory) -> tuple[Path, job.JobResult]:
    output = tmp_path_factory.mktemp("unfamiliar-served")
    return output, _run(tree, output, "--server", trusted_server)


@pytest.fixture(scope="module")
def in_process(tree, trusted_base, tmp_path_factory) -> tuple[Path, job.JobResult]:
    output = tmp_path_factory.mktemp("unfamiliar-in-process")
    pipeline = beam_testing.TestPipeline(runner="FnApiRunner")
    return output, _run(tree, output, "--in-process", str(trusted_base), test_pipeline=pipeline)


def _is_ood(path: str) -> bool:
    return Path(path).parent.name == "ood"


def test_records_carry_the_models_score_and_flag_and_the_flag_tells_the_ood_images_apart(served, direct):
    records_ = by_path(read_rows(served[0], "predictions"))
    assert records_.keys() == direct.keys()
    for path, (score, flagged, _) in direct.items():
        assert isinstance(records_[path]["ood_score"], float) and isinstance(records_[path]["unfamiliar"], bool)
        assert records_[path]["ood_score"] == pytest.approx(score, **SCORE_TOLERANCE), path
        assert records_[path]["unfamiliar"] == flagged, path
    ood = {Path(p).name: r["unfamiliar"] for p, r in records_.items() if _is_ood(p)}
    garments = [r["unfamiliar"] for p, r in records_.items() if not _is_ood(p)]
    assert len(ood) == 40 and len(garments) == GARMENTS
    for kind in ("noise", "photo", "inverted"):  # far from every garment: all flagged (docs/trust.md)
        assert all(flag for name, flag in ood.items() if name.startswith(kind)), (kind, ood)
    assert np.mean(list(ood.values())) >= 0.8, ood
    assert np.mean(garments) <= 0.15  # the threshold flags about 5 % of held-out garments


def test_the_summary_counts_unfamiliar_files_apart_from_the_classes_and_the_accuracy(served):
    output, result = served
    rows = read_rows(output, "predictions")
    flagged = [r for r in rows if r["unfamiliar"]]
    familiar = [r for r in rows if not r["unfamiliar"]]
    assert flagged and familiar, "both kinds are needed for this test to tell anything"
    written = json.loads((output / summary.SUMMARY_FILE).read_text())
    assert written["unfamiliar"] == len(flagged)
    guessed = Counter(r["class_name"] for r in flagged)
    assert written["unfamiliar_per_class"] == {name: guessed[name] for name in names.CLASS_NAMES}
    kept = Counter(r["class_name"] for r in familiar)
    assert written["counts_per_class"] == {name: kept[name] for name in names.CLASS_NAMES}
    assert written["classified"] == len(rows) == sum(written["counts_per_class"].values()) + written["unfamiliar"]
    assert written["inputs"] == written["classified"] + written["errors"]

    def labelled(rows: list[dict]) -> list[tuple[int, int]]:
        return [(names.class_id_from_folder(Path(r["path"]).parent.name), r["class_id"]) for r in rows]

    vouched = [pair for pair in labelled(familiar) if pair[0] is not None]
    apart = [pair for pair in labelled(flagged) if pair[0] is not None]
    evaluation = written["evaluation"]
    assert evaluation["files"] == len(vouched) and evaluation["unfamiliar_files"] == len(apart)
    assert evaluation["accuracy"] == pytest.approx(np.mean([t == p for t, p in vouched]), abs=1e-4)
    if apart:
        assert evaluation["unfamiliar_accuracy"] == pytest.approx(np.mean([t == p for t, p in apart]), abs=1e-4)
    assert sum(map(sum, evaluation["confusion_matrix"])) == len(vouched)
    printed = summary.render(result.summary)
    assert f"unfamiliar: {len(flagged)} (unlike the training images, so their classes are guesses" in printed


def test_the_report_shows_the_most_unfamiliar_files_highest_score_first(served):
    output, _ = served
    rows = read_rows(output, "predictions")
    want = [r["path"] for r in sorted((r for r in rows if r["unfamiliar"]), key=lambda r: (-r["ood_score"], r["path"]))]
    page = (output / report.REPORT_FILE).read_text()
    assert "id='most_unfamiliar'>" in page, "no gallery of unfamiliar files"
    cards = re.split("<h2>|</body>", page.split("id='most_unfamiliar'>", 1)[1], maxsplit=1)[0]
    assert re.findall(r"<div class='path'>([^<]*)</div>", cards) == want[: report.GALLERY_SIZE]
    scores = [float(s) for s in re.findall(r"ood_score (-?[\d.]+)", cards)]
    assert scores == sorted(scores, reverse=True) and len(scores) == min(len(want), report.GALLERY_SIZE)
    assert f"<tr><th>Unfamiliar</th><td>{len(want)}:" in page


def test_in_process_runs_give_the_same_scores_flags_and_counts(served, in_process):
    assert_same_outputs(served[0], in_process[0])
    assert in_process[1].summary.unfamiliar == served[1].summary.unfamiliar


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_csv_and_parquet_records_hold_the_same_scores_and_flags(file_format, served, tree, trusted_server, tmp_path):
    _run(tree, tmp_path, "--server", trusted_server, "--format", file_format)
    jsonl, other = (by_path(read_rows(out, "predictions")) for out in (served[0], tmp_path))
    assert other.keys() == jsonl.keys()
    for path, record in jsonl.items():
        assert other[path]["unfamiliar"] is record["unfamiliar"], path
        assert other[path]["ood_score"] == pytest.approx(record["ood_score"], **SCORE_TOLERANCE), path
    if file_format == "parquet":
        schema = pq.read_schema(next(tmp_path.glob("predictions-*.parquet")))
        assert (schema.field("ood_score").type, schema.field("unfamiliar").type) == (
            records.PREDICTION_SCHEMA.field("ood_score").type,
            records.PREDICTION_SCHEMA.field("unfamiliar").type,
        )


def test_prediction_logs_answer_with_the_trust_outputs_as_the_server_does(served, tree, trusted_server, tmp_path):
    _run(tree, tmp_path, "--server", trusted_server, "--format", records.TFRECORD)
    shards = sorted(str(p) for p in tmp_path.glob("predictions-*.tfrecord"))
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(shards)]
    jsonl = by_path(read_rows(served[0], "predictions"))
    assert len(logs) == len(jsonl)
    with grpc.insecure_channel(trusted_server) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for log in logs:
            logged = log.predict_log.response
            record = jsonl[log.log_metadata.request_origin]
            assert set(logged.outputs) == {*names.OUTPUTS, *names.TRUST_OUTPUTS}
            assert list(logged.outputs[names.OUTPUT_UNFAMILIAR].bool_val) == [record["unfamiliar"]]
            score = tensors.to_ndarray(logged.outputs[names.OUTPUT_OOD_SCORES], np.float32)
            assert score.shape == (1,) and score[0] == pytest.approx(record["ood_score"], **SCORE_TOLERANCE)
            request = predict_pb2.PredictRequest.FromString(log.predict_log.request.SerializeToString())
            replayed = stub.Predict(request, timeout=30)
            for alias in names.TRUST_OUTPUTS:  # same type, shape and field as a served answer
                mine, theirs = logged.outputs[alias], replayed.outputs[alias]
                assert (mine.dtype, mine.tensor_shape) == (theirs.dtype, theirs.tensor_shape)
                assert [f.name for f, _ in mine.ListFields()] == [f.name for f, _ in theirs.ListFields()]


def test_the_job_asks_for_the_trust_outputs_only_where_the_signature_has_them(trusted_server, server):
    def asked(target: str) -> tuple[str, ...]:
        return launcher.served_outputs(ServerSettings(target), PredictionClient)

    assert asked(trusted_server) == (names.OUTPUT_PROBABILITIES, *names.TRUST_OUTPUTS)
    assert asked(server) == (names.OUTPUT_PROBABILITIES,)  # asking it for them would be INVALID_ARGUMENT


@pytest.mark.parametrize("source", ["--server", "--in-process"])
def test_a_version_without_the_outputs_keeps_working_with_null_fields(source, tree, server, model_base, tmp_path):
    result = _run(tree / "ood", tmp_path, source, server if source == "--server" else str(model_base))
    rows = read_rows(tmp_path, "predictions")
    assert len(rows) == 40 and all(r["ood_score"] is None and r["unfamiliar"] is None for r in rows)
    written = json.loads((tmp_path / summary.SUMMARY_FILE).read_text())
    assert written["unfamiliar"] is None and written["unfamiliar_per_class"] is None
    assert sum(written["counts_per_class"].values()) == 40
    assert "unfamiliar" not in summary.render(result.summary)
    page = (tmp_path / report.REPORT_FILE).read_text()
    assert "most_unfamiliar" not in page and "<th>Unfamiliar</th>" not in page


def test_fmnist_compare_counts_the_files_each_side_flags(tree, _pushed_once, trusted_base, direct, tmp_path):
    """Version 1 is an older export without the outputs, version 2 the calibrated one."""
    models = tmp_path / "models"
    shutil.copytree(_pushed_once, models)
    shutil.copytree(trusted_base / "1", models / names.MODEL_NAME / "2")
    config = two_versions_config(models)
    running = start(ServerConfig(port=0, model_config_file=str(config)))
    try:
        argv = ["--input", str(tree), "--output", str(tmp_path / "out"), "--server", f"127.0.0.1:{running.port}"]
        result = compare.run([*argv, "--baseline", "1", "--candidate", "2", "--batch-size", str(BATCH)])
    finally:
        running.stop()
    flagged = sum(flag for _, flag, _ in direct.values())
    written = json.loads((tmp_path / "out" / compare.COMPARISON_FILE).read_text())
    assert written["unfamiliar"] == {names.BASELINE: None, names.CANDIDATE: flagged}
    assert result.comparison.compared == len(direct)
    assert f"unfamiliar: baseline (its version serves no flag), candidate {flagged}" in compare.render(
        result.comparison, result.gate
    )


def test_checkpoints_keep_the_score_and_flag_and_refuse_half_of_them():
    scored = Classified("a.png", None, (0.1,) * 10, "m", 2, None, 7.25, True)
    assert from_json(to_json(scored)) == scored
    plain = Classified("b.png", 3, (0.1,) * 10, "m", 1)
    assert "ood_score" not in to_json(plain) and from_json(to_json(plain)) == plain
    half = json.loads(to_json(scored))
    del half["unfamiliar"]
    with pytest.raises(ValueError, match="not an outcome"):
        from_json(json.dumps(half))
