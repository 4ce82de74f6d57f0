"""The Beam batch job (batch/): records against the SavedModel called directly, errors, summary, modes.

One labelled tree of real test images (PNG and JPEG, grey/RGB/RGBA, several
sizes) plus hostile files is classified once through a real embedded server
and once in-process; most tests read those two runs. Expected probabilities
come from the SavedModel's ``predict_images`` signature called on the same
bytes, so the job is checked against the graph, not against itself.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
import socket
import tempfile
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.testing import test_pipeline as beam_testing
from conftest import encode_png, png_claiming
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fmnist.batch import job
from fmnist.batch.inference import BatchFailed, ImageBatches, Scores, classify
from fmnist.batch.io import _read_at_most as read_at_most
from fmnist.batch.io import input_patterns
from fmnist.batch.outcomes import Classified, Failed, Reason
from fmnist.batch.outcomes import Image as Encoded
from fmnist.common import errors, names
from fmnist.common.client import ServingError
from fmnist.serving.server import ServerConfig, start

GOOD = 48  # labelled test images
BATCH = 8  # small, so the corrupt file shares a request with good ones


def _encode(pixels: np.ndarray, fmt: str, mode: str, size: tuple[int, int]) -> bytes:
    image = Image.fromarray(pixels).convert(mode)
    if size != image.size:
        image = image.resize(size)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


# path relative to the tree → reason; the corrupt one sits among good files of its class.
BAD = {
    "Coat/truncated.png": Reason.REJECTED,
    "Bag/empty.png": Reason.EMPTY,
    "notes/readme.txt": Reason.NOT_AN_IMAGE,
    "notes/huge.png": Reason.TOO_LARGE,
    "notes/scan.tiff": Reason.UNSUPPORTED_FORMAT,
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory, dataset) -> Path:
    """GOOD labelled images in class folders (mixed formats, modes, sizes) plus the BAD files."""
    root = tmp_path_factory.mktemp("images")
    variants = [
        ("PNG", "L", (28, 28)),
        ("JPEG", "RGB", (56, 56)),
        ("PNG", "RGBA", (20, 20)),
        ("JPEG", "L", (40, 30)),
        ("GIF", "L", (28, 28)),
        ("BMP", "RGB", (32, 32)),
    ]
    for i in range(GOOD):
        fmt, mode, size = variants[i % len(variants)]
        folder = root / names.folder_name(int(dataset.test.labels[i]))
        folder.mkdir(exist_ok=True)
        (folder / f"{i}.{fmt.lower()}").write_bytes(_encode(dataset.test.images[i], fmt, mode, size))
    (root / "notes").mkdir()
    for folder in ("Coat", "Bag"):
        (root / folder).mkdir(exist_ok=True)
    (root / "Coat/truncated.png").write_bytes(encode_png(dataset.test.images[0])[:60])
    (root / "Bag/empty.png").write_bytes(b"")
    (root / "notes/readme.txt").write_text("not an image")
    (root / "notes/huge.png").write_bytes(png_claiming(100_000, 100_000))
    Image.new("RGB", (28, 28)).save(root / "notes/scan.tiff")
    return root


@pytest.fixture(scope="module")
def expected(tree, model_base, dataset) -> dict[str, tuple[np.ndarray, int | None]]:
    """path → (probabilities from the SavedModel called directly, true label or None) for every good file."""
    paths = sorted(p for p in tree.rglob("*") if p.is_file() and str(p.relative_to(tree)) not in BAD)
    signature = tf.saved_model.load(str(model_base / "1")).signatures[names.PREDICT_IMAGES]
    outputs = signature(**{names.INPUT_IMAGE_BYTES: tf.constant([p.read_bytes() for p in paths])})
    probabilities = outputs[names.OUTPUT_PROBABILITIES].numpy()
    return {
        str(p): (row, names.class_id_from_folder(p.parent.name)) for p, row in zip(paths, probabilities, strict=True)
    }


def _read(output: Path, name: str) -> list[dict]:
    """Rows of every ``name-*`` shard, whatever the format; CSV cells parsed back to their types."""
    rows = []
    for shard in sorted(output.glob(f"{name}-*")):
        if shard.suffix == ".parquet":
            rows += pq.read_table(shard).to_pylist()
        elif shard.suffix == ".csv":
            for row in csv.DictReader(shard.open(newline="")):
                rows.append(
                    {
                        k: json.loads(v) if k in ("class_id", "confidence", "top_k", "model_version") else v
                        for k, v in row.items()
                    }
                )
        else:
            rows += [json.loads(line) for line in shard.read_text().splitlines()]
    return rows


def _by_path(rows: list[dict]) -> dict[str, dict]:
    by_path = {row["path"]: row for row in rows}
    assert len(by_path) == len(rows), "a file was written twice"
    return by_path


def _assert_same_outputs(one: Path, other: Path) -> None:
    """Same files, classes, versions and error reasons; probabilities equal up to float32 rounding.

    Batches are composed differently by different runs, and the CPU kernels
    round differently by batch shape, so bit equality would be luck.
    """
    first, second = _by_path(_read(one, "predictions")), _by_path(_read(other, "predictions"))
    assert first.keys() == second.keys()
    for path, record in first.items():
        twin = second[path]
        for key in ("class_id", "class_name", "model_name", "model_version"):
            assert twin[key] == record[key], (path, key)
        assert [t["class_id"] for t in twin["top_k"]] == [t["class_id"] for t in record["top_k"]]
        got, want = [t["probability"] for t in twin["top_k"]], [t["probability"] for t in record["top_k"]]
        assert got == pytest.approx(want, abs=1e-5)
    reasons = [{p: r["reason"] for p, r in _by_path(_read(out, "errors")).items()} for out in (one, other)]
    assert reasons[0] == reasons[1]


def _job(tree: Path, output: Path, *source: str, extra: tuple[str, ...] = (), test_pipeline=None) -> job.JobResult:
    # The same files twice (folder + glob): overlapping inputs must not double-count.
    argv = ["--input", str(tree), "--input", f"{tree}/Coat/*", "--output", str(output), "--batch-size", str(BATCH)]
    return job.run([*argv, *source, *extra], test_pipeline)


@pytest.fixture(scope="module")
def served(tree, server, tmp_path_factory) -> tuple[Path, job.JobResult]:
    output = tmp_path_factory.mktemp("served-out")
    return output, _job(tree, output, "--server", server, "--top-k", "4")


@pytest.fixture(scope="module")
def in_process(tree, model_base, tmp_path_factory) -> tuple[Path, job.JobResult]:
    output = tmp_path_factory.mktemp("in-process-out")
    pipeline = beam_testing.TestPipeline(runner="FnApiRunner")  # Beam-style injection; the served runs build their own
    return output, _job(tree, output, "--in-process", str(model_base), "--top-k", "4", test_pipeline=pipeline)


def test_served_records_match_the_saved_model(served, expected):
    output, _ = served
    records = _by_path(_read(output, "predictions"))
    assert set(records) == set(expected)
    for path, (probabilities, _) in expected.items():
        record = records[path]
        assert record["class_id"] == int(np.argmax(probabilities))
        assert record["class_name"] == names.CLASS_NAMES[record["class_id"]]
        assert record["confidence"] == pytest.approx(float(probabilities.max()), abs=1e-5)
        top = record["top_k"]
        assert [t["class_id"] for t in top] == list(np.argsort(-probabilities, kind="stable")[:4])
        assert [t["probability"] for t in top] == pytest.approx(sorted(probabilities, reverse=True)[:4], abs=1e-5)
        assert (record["model_name"], record["model_version"]) == (names.MODEL_NAME, 1)
    assert (output / "_SUCCESS").exists()


def test_bad_files_land_in_errors_and_counts_add_up(served, tree, expected, server):
    output, _ = served
    errors = _by_path(_read(output, "errors"))
    assert {path: row["reason"] for path, row in errors.items()} == {str(tree / p): r for p, r in BAD.items()}
    assert all(row["detail"] for row in errors.values())
    summary = json.loads((output / "summary.json").read_text())
    assert summary["inputs"] == len(expected) + len(BAD) == summary["classified"] + summary["errors"]
    assert summary["classified"] == len(_read(output, "predictions"))
    assert summary["errors_by_reason"] == {r: list(BAD.values()).count(r) for r in set(BAD.values())}
    predicted = [int(np.argmax(p)) for p, _ in expected.values()]
    assert summary["counts_per_class"] == {n: predicted.count(i) for i, n in enumerate(names.CLASS_NAMES)}
    assert summary["elapsed_seconds"] > 0 and summary["files_per_second"] > 0
    assert summary["source"] == f"server {server}"


def test_labelled_folders_give_accuracy_recall_and_a_confusion_matrix(served, expected):
    output, result = served
    labelled = [(label, int(np.argmax(p))) for p, label in expected.values() if label is not None]
    evaluation = json.loads((output / "summary.json").read_text())["evaluation"]
    assert evaluation["files"] == len(labelled) == GOOD
    assert evaluation["accuracy"] == pytest.approx(np.mean([t == p for t, p in labelled]), abs=1e-4)
    matrix = np.zeros((names.NUM_CLASSES, names.NUM_CLASSES), int)
    for true, predicted in labelled:
        matrix[true, predicted] += 1
    assert evaluation["confusion_matrix"] == matrix.tolist()
    for i, name in enumerate(names.CLASS_NAMES):
        want = matrix[i, i] / matrix[i].sum() if matrix[i].sum() else None
        assert evaluation["per_class_recall"][name] == (pytest.approx(want, abs=1e-4) if want is not None else None)
    assert (output / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")
    assert result.summary.evaluation.accuracy == evaluation["accuracy"]


def test_beam_metrics_count_images_errors_and_batch_latency(served, expected):
    _, result = served
    metrics = result.pipeline.metrics().query()
    counters = {c.key.metric.name: c.committed for c in metrics["counters"] if c.key.metric.namespace == "fmnist.batch"}
    assert counters["images"] == len(expected)
    assert counters["errors"] == len(BAD)
    assert counters[f"errors_{Reason.TOO_LARGE}"] == 1
    latency = [d.committed for d in metrics["distributions"] if d.key.metric.name == "batch_latency_ms"]
    assert latency and latency[0].count >= len(expected) // BATCH


def test_in_process_and_served_agree_on_every_file(served, in_process):
    served_out, _ = served
    local_out, local = in_process
    _assert_same_outputs(served_out, local_out)
    assert local.summary.source.startswith("in-process ")


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_csv_and_parquet_hold_the_same_records_as_jsonl(file_format, served, tree, server, tmp_path):
    _job(tree, tmp_path, "--server", server, "--top-k", "4", extra=("--format", file_format))
    jsonl = _by_path(_read(served[0], "predictions"))
    other = _by_path(_read(tmp_path, "predictions"))
    assert other.keys() == jsonl.keys()
    for path, record in jsonl.items():
        assert other[path]["class_id"] == record["class_id"]
        assert [t["class_name"] for t in other[path]["top_k"]] == [t["class_name"] for t in record["top_k"]]
    assert {r["reason"] for r in _read(tmp_path, "errors")} == set(BAD.values())
    assert list(tmp_path.glob(f"predictions-*.{file_format}"))


def test_server_stopped_before_the_job_fails_naming_it(models_dir, tree, tmp_path, capsys):
    stopped = start(
        ServerConfig(port=0, model_name=names.MODEL_NAME, model_base_path=str(models_dir / names.MODEL_NAME))
    )
    target = f"127.0.0.1:{stopped.port}"
    stopped.stop()
    argv = ["--input", str(tree), "--output", str(tmp_path), "--server", target, "--timeout", "0.5"]
    assert job.main(argv, prog="fmnist batch") == 1
    error = capsys.readouterr().err
    assert "fmnist batch: error:" in error and target in error
    assert not (tmp_path / "_SUCCESS").exists()


def test_no_runner_given_never_starts_prism_and_progress_is_shown(tree, model_base, tmp_path, monkeypatch, capfd):
    from apache_beam.runners.portability import prism_runner

    started = []
    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", lambda *a, **k: started.append(a) or 1 / 0)
    argv = [
        "--input",
        f"{tree}/notes",
        "--output",
        str(tmp_path),
        "--in-process",
        str(model_base),
        "--progress-seconds",
        "0",
    ]
    assert job.main(argv) == 0
    assert started == []
    err = capfd.readouterr().err
    # the whole job's done/total, elapsed, time left and rate
    assert re.search(r"progress: 100%.* 3/3 \[\d\d:\d\d<00:00, +[\d.]+(file/s|s/file)\]", err), err
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # Pipeline() makes a temp dir that only run() removes
    assert type(job.make_pipeline([]).runner).__name__ == "FnApiRunner"
    assert type(job.make_pipeline(["--runner", "BundleBasedDirectRunner"]).runner).__name__ == "BundleBasedDirectRunner"


def test_server_lost_during_the_job_fails_it_naming_the_server(tree, tmp_path):
    """The launcher's check passes (a client that says the model is there), then every worker request is refused."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{probe.getsockname()[1]}"
    argv = [
        "--input",
        f"{tree}/Coat",
        "--output",
        str(tmp_path),
        "--server",
        target,
        "--retries",
        "0",
        "--timeout",
        "2",
    ]
    with pytest.raises(Exception, match=f"{target}: UNAVAILABLE"):
        job.run(argv, client_factory=_AlwaysReady)
    assert not (tmp_path / "_SUCCESS").exists()


@pytest.mark.slow
def test_multi_process_run_gives_the_same_records_and_the_whole_jobs_progress(served, tree, server, tmp_path, capsys):
    extra = ("--direct_num_workers=2", "--direct_running_mode=multi_processing", "--progress-seconds=0")
    result = _job(tree, tmp_path, "--server", server, "--top-k", "4", extra=extra)
    _assert_same_outputs(served[0], tmp_path)
    assert result.summary.inputs == served[1].summary.inputs
    # both worker processes' files reach the launcher's one display
    total = result.summary.inputs
    assert f"{total}/{total} [" in capsys.readouterr().err


# --- units: batching and bisection, input patterns, arguments -------------------------------------


def _fake_model(calls: list[int]):
    """Scores each image by its first byte; rejects a request holding a b"!" image, as the graph would."""

    def predict(encoded: list[bytes]) -> Scores:
        calls.append(len(encoded))
        if any(data.startswith(b"!") for data in encoded):
            raise errors.InvalidArgument("Invalid PNG data", target="fake:1")
        probabilities = np.zeros((len(encoded), names.NUM_CLASSES), np.float32)
        probabilities[np.arange(len(encoded)), [data[0] % names.NUM_CLASSES for data in encoded]] = 1.0
        return Scores(probabilities, "m", 7)

    return predict


def _rejected(error: Exception) -> bool:
    return isinstance(error, ServingError) and error.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_rejected_batch_is_bisected_so_its_good_images_are_still_classified():
    images = [Encoded(f"f{i}", bytes([i]) * 10, None) for i in range(16)]
    images[5] = Encoded("bad", b"!" * 10, None)
    calls: list[int] = []
    outcomes = classify(images, _fake_model(calls), _rejected, max_request_bytes=1 << 20)
    assert [o.path for o in outcomes] == [i.path for i in images]
    assert outcomes[5] == Failed("bad", Reason.REJECTED, "Invalid PNG data")
    assert all(
        isinstance(o, Classified) and o.class_id == i % 10 and o.model_version == 7
        for i, o in enumerate(outcomes)
        if i != 5
    )
    assert len(calls) <= 2 * 4 + 1  # bisection: about 2·log2(16), not 16 singles


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=30),
    bad=st.sets(st.integers(0, 29)),
    max_bytes=st.integers(1, 120),
)
def test_every_image_gets_exactly_one_outcome_in_order(sizes, bad, max_bytes):
    images = [Encoded(f"f{i}", (b"!" if i in bad else bytes([i])) * n, None) for i, n in enumerate(sizes)]
    calls: list[int] = []
    outcomes = classify(images, _fake_model(calls), _rejected, max_request_bytes=max_bytes)
    assert [o.path for o in outcomes] == [i.path for i in images]
    assert [isinstance(o, Failed) for o in outcomes] == [i in bad for i in range(len(images))]


def test_requests_are_split_by_bytes_and_other_errors_fail_the_job():
    images = [Encoded(f"f{i}", bytes([i]) * 100, None) for i in range(5)]
    calls: list[int] = []
    classify(images, _fake_model(calls), _rejected, max_request_bytes=250)
    assert calls == [2, 2, 1]

    def down(encoded):
        raise errors.Unavailable("connection refused", target="host:1")

    with pytest.raises(ServingError, match="host:1"):
        classify(images, down, _rejected, max_request_bytes=1 << 20)


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class _Images(ModelHandler):
    """A handler of encoded images that logs each request.

    b"bad" is rejected, b"boom" fails the model, b"gone" the server.
    """

    target = "host:1"

    def __init__(self):
        super().__init__()
        self.requests: list[list[bytes]] = []

    def load_model(self):
        return _Images  # anything RunInference can hold a weak reference to

    def run_inference(self, batch, model, inference_args=None):
        self.requests.append(list(batch))
        for marker, code in (
            (b"bad", grpc.StatusCode.INVALID_ARGUMENT),
            (b"boom", grpc.StatusCode.INTERNAL),
            (b"gone", grpc.StatusCode.UNAVAILABLE),
        ):
            if marker in batch:
                raise _RpcError(code, f"{code.name.lower()} here")
        return [PredictionResult(e, {names.OUTPUT_PROBABILITIES: np.eye(10)[len(e) % 10]}, "m:3") for e in batch]


def test_image_batches_bisect_a_rejected_batch_and_keep_read_failures_in_order():
    images = _Images()
    handler = ImageBatches(images, max_request_bytes=1 << 20)
    unreadable = Failed("u", Reason.UNREADABLE, "gone")
    batch = [Encoded("a", b"a", None), unreadable, Encoded("b", b"bad", None), Encoded("c", b"cc", None)]
    [outcomes] = handler.run_inference([batch], _Images)
    assert images.requests == [[b"a", b"bad", b"cc"], [b"a"], [b"bad", b"cc"], [b"bad"], [b"cc"]]
    assert [o.path for o in outcomes] == ["u", "a", "b", "c"]
    assert (
        outcomes[0] is unreadable
        and outcomes[2].reason == Reason.REJECTED
        and outcomes[2].detail == "invalid_argument here"
    )
    assert (outcomes[1].class_id, outcomes[1].model_name, outcomes[1].model_version, outcomes[3].class_id) == (
        1,
        "m",
        3,
        2,
    )


def test_image_batches_tell_a_failed_batch_from_a_lost_server():
    handler = ImageBatches(_Images(), max_request_bytes=1 << 20)
    with pytest.raises(BatchFailed, match="INTERNAL: internal here"):
        handler.run_inference([[Encoded("a", b"boom", None)]], _Images)
    with pytest.raises(ServingError, match="host:1: UNAVAILABLE: unavailable here"):
        handler.run_inference([[Encoded("a", b"gone", None)]], _Images)


def test_a_batch_the_model_fails_on_goes_to_the_errors_output_and_the_job_goes_on(tree, tmp_path):
    """RunInference's dead-letter output: each file of the failed batch becomes an error record; nothing is lost."""
    coat = tree / "Coat"
    files = sorted(str(p) for p in coat.iterdir() if p.is_file())
    images = _Images()
    images.run_inference = functools.partial(_failing_on, images, Path(files[0]).read_bytes())
    argv = ["--input", str(coat), "--output", str(tmp_path), "--server", "h:1", "--batch-size", "2"]
    result = job.run(argv, client_factory=_AlwaysReady, handler=images)
    errors = [json.loads(line) for shard in tmp_path.glob("errors-*") for line in shard.read_text().splitlines()]
    failed = [e for e in errors if e["reason"] == Reason.INFERENCE_FAILED]
    assert 1 <= len(failed) <= 2 and {e["detail"] for e in failed} == {"RuntimeError: the model crashed"}
    assert files[0] in {e["path"] for e in failed}
    assert result.summary.inputs == len(files) == result.summary.classified + result.summary.errors
    assert result.summary.errors_by_reason[Reason.INFERENCE_FAILED] == len(failed)


def _failing_on(images, poison, batch, model, inference_args=None):
    if poison in batch:
        raise RuntimeError("the model crashed")
    return _Images.run_inference(images, batch, model, inference_args)


class _AlwaysReady:
    def __init__(self, target, **settings):
        pass

    def wait_until_available(self, timeout, not_found_grace=None):
        return 1

    def close(self):
        pass


def test_reading_stops_one_byte_past_the_limit_and_follows_a_file_that_grew_since_matched():
    data = bytes(range(256)) * 40
    assert read_at_most(io.BytesIO(data), 101, matched_size=len(data)) == data[:101]
    assert read_at_most(io.BytesIO(data), 1 << 20, matched_size=300) == data
    assert read_at_most(io.BytesIO(data), 1000, matched_size=300) == data[:1000]
    assert read_at_most(io.BytesIO(data[:300]), 1 << 20, matched_size=300) == data[:300]
    assert read_at_most(io.BytesIO(b""), 1 << 20, matched_size=300) == b""  # shrank to nothing


def test_input_patterns_read_folders_recursively_and_keep_globs_and_files(tree):
    assert input_patterns(str(tree)) == [f"{tree}/**"]
    assert input_patterns(f"{tree}/") == [f"{tree}/**"]
    assert input_patterns(f"{tree}/Coat/*.png") == [f"{tree}/Coat/*.png"]
    assert input_patterns(f"{tree}/notes/readme.txt") == [f"{tree}/notes/readme.txt"]
    # ** also matches no folder at all, as with a shell's globstar
    assert input_patterns("i/**/*.png") == ["i/**/*.png", "i/*.png"]
    assert input_patterns("**/a/**/*.png") == ["**/a/**/*.png", "**/a/*.png", "a/**/*.png", "a/*.png"]


def test_unknown_arguments_are_left_for_beam_and_bad_ones_are_refused(capsys):
    beam = ["--runner", "FlinkRunner", "--flink_master=x:8081"]
    config, beam_args = job.parse_args(["--input", "a", "--output", "o", "--server", "h:1", "--format", "csv", *beam])
    assert (config.inputs, config.server.target, config.file_format) == (("a",), "h:1", "csv")
    assert beam_args == beam
    for bad in (["--top-k", "11"], ["--batch-size", "0"], ["--in-process", "/nonexistent"]):
        with pytest.raises(SystemExit):
            job.parse_args(
                ["--input", "a", "--output", "o", *(bad if bad[0] == "--in-process" else ["--server", "h:1", *bad])]
            )


def test_cli_error_line_drops_beams_worker_decoration():
    from fmnist.batch.job import _last_line

    beam_error = RuntimeError(
        "Traceback (most recent call last):\n  File ...\n"
        "fmnist.common.errors.Unavailable: 127.0.0.1:5: UNAVAILABLE: failed to connect "
        "[while running 'RunInference/BeamML_RunInference']"
    )
    assert _last_line(beam_error) == "127.0.0.1:5: UNAVAILABLE: failed to connect"
