"""The Beam batch job (batch/): records against the SavedModel called directly, errors, summary, modes.

One labelled tree of real test images (PNG and JPEG, grey/RGB/RGBA, several
sizes) plus hostile files is classified once through a real embedded server
and once in-process; most tests read those two runs. Expected probabilities
come from the SavedModel's ``predict_images`` signature called on the same
bytes, so the job is checked against the graph, not against itself.
"""

from __future__ import annotations

import functools
import io
import json
import re
import socket
import tempfile
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline as beam_testing
from apache_beam.testing.util import assert_that, equal_to
from batch_outputs import assert_same_outputs as _assert_same_outputs
from batch_outputs import by_path as _by_path
from batch_outputs import read_rows as _read
from conftest import corrupt_png, encode_png, png_claiming
from PIL import Image
from test_inference import _Images

from fmnist.batch import job, launcher
from fmnist.batch.errors import ServerLost
from fmnist.batch.job_steps import InferBatches
from fmnist.batch.outcomes import Failed, Reason
from fmnist.batch.outcomes import Image as Encoded
from fmnist.batch.readers import input_patterns, read_at_most
from fmnist.common import errors as serving_errors
from fmnist.common import names
from fmnist.common.apis import get_model_metadata_pb2
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
    "Coat/corrupt.png": Reason.REJECTED,  # whole and well-formed, its pixels' compressed stream broken
    "Coat/truncated.png": Reason.NOT_AN_IMAGE,  # cut short: refused before sending, wherever it is
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
    (root / "Coat/corrupt.png").write_bytes(corrupt_png(encode_png(dataset.test.images[0])))
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
    assert type(launcher.make_pipeline([]).runner).__name__ == "FnApiRunner"
    assert (
        type(launcher.make_pipeline(["--runner", "BundleBasedDirectRunner"]).runner).__name__
        == "BundleBasedDirectRunner"
    )


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


@pytest.mark.parametrize("running_mode", ["in_memory", "multi_processing"])
def test_a_server_lost_during_the_job_reaches_the_launcher_as_its_type(running_mode, tree, tmp_path):
    """Beam hands the launcher a worker's exception as text, in this process or from another; the job's error
    is still the type of the status the worker got, from the note it left."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{probe.getsockname()[1]}"
    argv = ["--input", f"{tree}/Coat", "--output", str(tmp_path), "--server", target, "--retries", "0"]
    beam_args = ["--direct_num_workers=2", f"--direct_running_mode={running_mode}"]
    with pytest.raises(ServerLost) as raised:
        job.run([*argv, *beam_args], client_factory=_AlwaysReady)
    assert type(raised.value.error) is serving_errors.Unavailable and raised.value.error.target == target
    assert str(raised.value).endswith("then run the job again with --resume")
    assert not list(tmp_path.glob("_failed-*")) and not (tmp_path / "_SUCCESS").exists()
    assert not list(tmp_path.glob("beam-temp-*")), "a failed run leaves no scratch behind"


@pytest.mark.slow
def test_multi_process_run_gives_the_same_records_and_the_whole_jobs_progress(served, tree, server, tmp_path, capsys):
    extra = ("--direct_num_workers=2", "--direct_running_mode=multi_processing", "--progress-seconds=0")
    result = _job(tree, tmp_path, "--server", server, "--top-k", "4", extra=extra)
    _assert_same_outputs(served[0], tmp_path)
    assert result.summary.inputs == served[1].summary.inputs
    # both worker processes' files reach the launcher's one display
    total = result.summary.inputs
    assert f"{total}/{total} [" in capsys.readouterr().err


# --- units: the classification step, reading, input patterns --------------------------------------


def test_infer_batches_gives_a_failed_batchs_files_as_inference_failed_and_goes_on():
    batches = [[Encoded("a", b"a", None)], [Encoded("b", b"boom", None), Failed("u", Reason.UNREADABLE, "gone")]]
    with beam_testing.TestPipeline(runner="FnApiRunner") as pipeline:
        outcomes = pipeline | beam.Create(batches) | InferBatches(_Images(), max_request_bytes=1 << 20)
        failed = [Failed("b", Reason.INFERENCE_FAILED, "INTERNAL: internal here"), batches[1][1]]
        classified = outcomes | beam.Filter(lambda found: not isinstance(found[0], Failed))
        assert_that(classified | beam.Map(lambda found: [o.path for o in found]), equal_to([["a"]]), label="a")
        assert_that(outcomes | beam.Filter(lambda found: found[0].path == "b"), equal_to([failed]), label="b")


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

    def wait_until_available(self, timeout, grace=None):
        return 1

    def metadata(self):  # no signature: the job asks for the probabilities alone
        return get_model_metadata_pb2.GetModelMetadataResponse()

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
