"""``fmnist batch --resume``: an interrupted or failed run, finished later, gives what one whole run gives.

Real parts throughout: the embedded server on loopback (one whose batching
waits 25 ms per request, so a run of a thousand files lasts long enough to
interrupt), real PNG files, the real command in a subprocess for Ctrl-C, and
Beam's local runner. An uninterrupted run of the same files is the reference.
"""

from __future__ import annotations

import io as bytes_io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from batch_outputs import by_path as _by_path
from batch_outputs import read_rows as _read
from conftest import encode_png

from fmnist.batch import TFServingModelHandler, compare, job, options, records
from fmnist.batch import output as batch_output
from fmnist.batch.errors import stopped_by
from fmnist.batch.outcomes import Classified, Failed, from_json, to_json
from fmnist.batch.output import (
    CHECKPOINT_TEMP_PREFIX,
    CHECKPOINTS,
    checkpoint_name,
    is_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from fmnist.common import errors as serving_errors
from fmnist.common import names, tensors
from fmnist.common.apis import predict_pb2, prediction_log_pb2
from fmnist.serving.server import ServerConfig, start

DISTINCT = 500  # test images, each written twice (two copies of the class folders)
BAD = {"notes/readme.txt": "not_an_image", "notes/empty.png": "empty"}  # never sent to the server
SLOW_BATCHING = "max_batch_size { value: 64 } batch_timeout_micros { value: 25000 } num_batch_threads { value: 2 }\n"


@pytest.fixture(scope="module")
def images(tmp_path_factory, dataset) -> Path:
    """2 × DISTINCT labelled PNGs in class folders, and the BAD files."""
    root = tmp_path_factory.mktemp("images")
    encoded = [encode_png(image) for image in dataset.test.images[:DISTINCT]]
    for copy in ("a", "b"):
        for i, data in enumerate(encoded):
            folder = root / copy / names.folder_name(int(dataset.test.labels[i]))
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}.png").write_bytes(data)
    (root / "notes").mkdir()
    (root / "notes/readme.txt").write_text("not an image")
    (root / "notes/empty.png").write_bytes(b"")
    return root


INPUTS = 2 * DISTINCT + len(BAD)


@pytest.fixture(scope="module")
def slow_server(model_base, tmp_path_factory) -> str:
    """A server of the same model whose batching holds every request 25 ms for company: about 300 files/s."""
    config = tmp_path_factory.mktemp("batching") / "batching.config"
    config.write_text(SLOW_BATCHING)
    running = start(
        ServerConfig(
            port=0,
            model_name=names.MODEL_NAME,
            model_base_path=str(model_base),
            enable_batching=True,
            batching_parameters_file=str(config),
        )
    )
    yield f"127.0.0.1:{running.port}"
    running.stop()


@pytest.fixture(scope="module")
def reference(images, server, tmp_path_factory) -> dict[str, dict]:
    """path → record of one uninterrupted run over ``images``."""
    output = tmp_path_factory.mktemp("reference")
    job.run(["--input", str(images), "--output", str(output), "--server", server, "--batch-size", "16"])
    return _by_path(_read(output, "predictions"))


def _checkpointed(output: Path) -> dict[str, object]:
    """path → outcome, over every complete checkpoint in ``output``."""
    return {o.path: o for f in (output / CHECKPOINTS).glob("*.jsonl") for o in read_checkpoint(str(f))}


def _assert_whole(output: Path, reference: dict[str, dict], images: Path, *, resumed: int) -> None:
    """The outputs of one uninterrupted run: every input once, the reference's classes, counts that add up."""
    records = _by_path(_read(output, "predictions"))
    errors = _by_path(_read(output, "errors"))
    assert records.keys() == reference.keys()
    assert {p: r["class_id"] for p, r in records.items()} == {p: r["class_id"] for p, r in reference.items()}
    for path, record in records.items():
        assert [t["class_id"] for t in record["top_k"]] == [t["class_id"] for t in reference[path]["top_k"]]
        assert record["confidence"] == pytest.approx(reference[path]["confidence"], abs=1e-5)
    assert {p: e["reason"] for p, e in errors.items()} == {str(images / p): r for p, r in BAD.items()}
    summary = json.loads((output / "summary.json").read_text())
    assert summary["inputs"] == INPUTS == len(records) + len(errors) == summary["classified"] + summary["errors"]
    assert summary["classified"] == len(records) and summary["errors_by_reason"] == {r: 1 for r in BAD.values()}
    assert summary["evaluation"]["files"] == 2 * DISTINCT
    assert summary["resumed"] == resumed
    assert f"{resumed:,} files done by an interrupted run" in (output / "report.html").read_text()
    assert (output / "_SUCCESS").exists() and not (output / CHECKPOINTS).exists()
    assert not list(output.glob("beam-temp-*"))


def _popen_batch(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fmnist.cli", "batch", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _batch(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fmnist.cli", "batch", *args], capture_output=True, text=True, timeout=timeout
    )


def _interrupt_once_checkpointed(output: Path, *args: str, checkpoints: int = 5) -> subprocess.CompletedProcess:
    """Run the command, Ctrl-C it once ``checkpoints`` batches are saved; its exit status and output."""
    process = _popen_batch("--output", str(output), *args)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True)  # never blocks the job
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while len(list((output / CHECKPOINTS).glob("*.jsonl"))) < checkpoints:
            assert process.poll() is None, f"the job ended before it was interrupted: {''.join(stderr)}"
            assert time.monotonic() < deadline, "no checkpoints after 120 s"
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        stdout = process.stdout.read()
        process.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, "".join(stderr))


class _Unavailable(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "failed to connect to all addresses"


class _Counting(TFServingModelHandler):
    """The job's real handler, counting the images it sends (its class holds the count: workers make their own)."""

    sent: list[int] = []

    def request(self, batch, model, inference_args=None):
        _Counting.sent.append(len(batch))
        return super().request(batch, model, inference_args)


class _FailsAfter(TFServingModelHandler):
    """The job's real handler until ``requests`` requests have been sent; then the server is gone (UNAVAILABLE)."""

    requests = 10
    made: list[int] = []  # requests sent, all workers together

    def request(self, batch, model, inference_args=None):
        _FailsAfter.made.append(1)
        if len(_FailsAfter.made) > self.requests:
            raise _Unavailable()
        return super().request(batch, model, inference_args)


def _handler(argv: list[str], handler_class: type[TFServingModelHandler]) -> TFServingModelHandler:
    """The handler the job would make from ``argv``, of ``handler_class``."""
    return options.parse_job_args(argv)[0].server.handler(handler_class)


def _run_resumed(argv: list[str], handler_class=TFServingModelHandler) -> tuple[job.JobResult, str]:
    """``job`` with ``--resume`` in this process: its result and what it told the user."""
    config, beam_args = options.parse_job_args([*argv, "--resume"])
    shown = bytes_io.StringIO()
    return job.run_config(
        config, beam_args, handler=config.server.handler(handler_class), stream=shown
    ), shown.getvalue()


# --- an interrupted run, resumed -------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_then_resume_classifies_only_the_rest_and_gives_the_uninterrupted_runs_records(
    images, slow_server, reference, tmp_path
):
    argv = ["--input", str(images), "--server", slow_server, "--batch-size", "4"]
    stopped = _interrupt_once_checkpointed(tmp_path, *argv, "--progress-seconds", "0")
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == "fmnist batch: interrupted"
    assert not list(tmp_path.glob("predictions-*")) and not list(tmp_path.glob("errors-*"))
    assert not (tmp_path / "_SUCCESS").exists()
    saved = _checkpointed(tmp_path)
    assert 0 < len(saved) < INPUTS

    _Counting.sent.clear()
    result, shown = _run_resumed([*argv, "--output", str(tmp_path)], _Counting)
    done = len(saved)
    assert f"resuming: {done:,} of {INPUTS:,} files already classified" in shown
    # only the files the interrupted run had not saved went to the server
    assert sum(_Counting.sent) == 2 * DISTINCT - sum(isinstance(o, Classified) for o in saved.values())
    _assert_whole(tmp_path, reference, images, resumed=done)
    assert result.summary.inputs == INPUTS


@pytest.mark.slow
def test_ctrl_c_then_resume_on_the_command_line_in_parquet(images, slow_server, reference, tmp_path):
    argv = ["--input", str(images), "--server", slow_server, "--batch-size", "4", "--format", "parquet"]
    stopped = _interrupt_once_checkpointed(tmp_path, *argv)
    assert stopped.returncode == 130, stopped.stderr
    assert not list(tmp_path.glob("predictions-*"))
    done = len(_checkpointed(tmp_path))

    refused = _batch(*argv, "--output", str(tmp_path))
    assert refused.returncode == 2
    assert f"--output {tmp_path} holds an interrupted run" in refused.stderr
    assert "--resume" in refused.stderr and "--overwrite" in refused.stderr

    resumed = _batch(*argv, "--output", str(tmp_path), "--resume", "--progress-seconds", "0")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {done:,} of {INPUTS:,} files already classified" in resumed.stderr
    remaining = INPUTS - done
    assert f"{remaining}/{remaining} [" in resumed.stderr  # the progress counts what is left to do
    assert (
        f"{INPUTS:,} files: " in resumed.stdout and f"{done} of them resumed from an interrupted run" in resumed.stdout
    )
    assert list(tmp_path.glob("predictions-*.parquet"))
    _assert_whole(tmp_path, reference, images, resumed=done)


def test_a_resumed_tfrecord_run_logs_every_files_bytes_in_its_request(images, server, tmp_path):
    """PredictionLogs hold each image in their request, so checkpoints of a tfrecord run keep the bytes too."""
    argv = [
        "--input",
        str(images / "a"),
        "--output",
        str(tmp_path),
        "--server",
        server,
        "--batch-size",
        "8",
        "--format",
        "tfrecord",
        "--retries",
        "0",
    ]
    _FailsAfter.made.clear()
    with pytest.raises(Exception, match="UNAVAILABLE"):
        job.run(argv, handler=_handler(argv, _FailsAfter))
    assert any(isinstance(o, Classified) for o in _checkpointed(tmp_path).values())
    _run_resumed(argv)
    logged = {}
    for shard in tmp_path.glob("predictions-*.tfrecord"):
        for record in _tfrecords(shard):
            log = prediction_log_pb2.PredictionLog.FromString(record)
            logged[log.log_metadata.request_origin] = log.predict_log.request.inputs[
                names.INPUT_IMAGE_BYTES
            ].string_val[0]
    assert set(logged) == {str(p) for p in (images / "a").rglob("*.png")}
    assert all(logged[path] == Path(path).read_bytes() for path in logged)


def _tfrecords(path: Path) -> list[bytes]:
    """The records of a TFRecord file (length, its CRC, data, its CRC), without TensorFlow."""
    data, records, at = path.read_bytes(), [], 0
    while at < len(data):
        length = int.from_bytes(data[at : at + 8], "little")
        records.append(data[at + 12 : at + 12 + length])
        at += 12 + length + 4
    return records


def test_a_server_lost_mid_job_then_resume_gives_the_same_records(images, server, reference, tmp_path):
    argv = [
        "--input",
        str(images),
        "--output",
        str(tmp_path),
        "--server",
        server,
        "--batch-size",
        "8",
        "--format",
        "csv",
        "--retries",
        "0",
    ]
    _FailsAfter.made.clear()
    with pytest.raises(Exception, match="UNAVAILABLE"):
        job.run(argv, handler=_handler(argv, _FailsAfter))
    assert not list(tmp_path.glob("predictions-*")) and not (tmp_path / "_SUCCESS").exists()
    saved = _checkpointed(tmp_path)
    # the requests answered before the loss, less the one or two in flight when it came
    assert 8 * (_FailsAfter.requests - 2) <= sum(isinstance(o, Classified) for o in saved.values())
    assert len(saved) < INPUTS

    assert job.main(argv) == 2  # refused without --resume
    _Counting.sent.clear()
    result, shown = _run_resumed(argv, _Counting)
    assert f"resuming: {len(saved):,} of {INPUTS:,} files already classified" in shown
    assert sum(_Counting.sent) == 2 * DISTINCT - sum(isinstance(o, Classified) for o in saved.values())
    _assert_whole(tmp_path, reference, images, resumed=len(saved))
    assert result.summary.resumed == len(saved)


def test_the_lost_server_line_says_to_resume_for_batch_and_to_overwrite_for_compare():
    lost = serving_errors.from_code(grpc.StatusCode.UNAVAILABLE, "failed to connect", target="127.0.0.1:5")
    assert str(stopped_by(lost, job.RERUN)).endswith("then run the job again with --resume")
    assert str(stopped_by(lost, compare.RERUN)).endswith("then run the job again with --overwrite")


def test_a_run_stopped_after_its_pipeline_ended_is_finished_without_classifying_anything(
    tmp_path, server, labelled_tree, monkeypatch
):
    argv = ["--input", str(labelled_tree), "--output", str(tmp_path), "--server", server, "--batch-size", "4"]

    def stopped(output):
        raise RuntimeError("stopped before the report")

    with monkeypatch.context() as patched:
        patched.setattr(batch_output, "read_gallery", stopped)
        with pytest.raises(RuntimeError, match="stopped before the report"):
            job.run(argv)
    written = _by_path(_read(tmp_path, "predictions"))  # the pipeline had finished its outputs
    assert len(written) == 40 and not (tmp_path / "_SUCCESS").exists()
    assert len(_checkpointed(tmp_path)) == 42

    _Counting.sent.clear()
    result, shown = _run_resumed(argv, _Counting)
    assert "resuming: 42 of 42 files already classified" in shown and "progress: " in shown
    assert _Counting.sent == []
    records = _by_path(_read(tmp_path, "predictions"))  # written again, once
    assert records == written
    assert len(_read(tmp_path, "errors")) == 2 and (tmp_path / "_SUCCESS").exists()
    assert (result.summary.inputs, result.summary.resumed) == (42, 42)
    assert not (tmp_path / CHECKPOINTS).exists()


# --- request logs --------------------------------------------------------------------------------


def _write_log(path: Path, images: list[bytes], per_request: int) -> None:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for start_at in range(0, len(images), per_request):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = names.MODEL_NAME
            request.model_spec.signature_name = names.PREDICT_IMAGES
            tensors.fill(request.inputs[names.INPUT_IMAGE_BYTES], images[start_at : start_at + per_request])
            logged = prediction_log_pb2.PredictionLog()
            logged.predict_log.request.CopyFrom(request)
            writer.write(logged.SerializeToString())


def test_request_logs_resume_too(dataset, server, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    pngs = [encode_png(image) for image in dataset.test.images[:120]]
    _write_log(logs / f"a{names.REQUEST_LOG_SUFFIX}", [*pngs[:60], b"not an image"], per_request=6)
    _write_log(logs / f"b{names.REQUEST_LOG_SUFFIX}", pngs[60:], per_request=5)
    pattern = f"{logs}/*{names.REQUEST_LOG_SUFFIX}"
    whole = job.run(["--input", pattern, "--output", str(tmp_path / "whole"), "--server", server, "--batch-size", "4"])
    reference = _by_path(_read(tmp_path / "whole", "predictions"))
    assert len(reference) == 120 and whole.summary.errors == 1

    argv = [
        "--input",
        pattern,
        "--output",
        str(tmp_path / "out"),
        "--server",
        server,
        "--batch-size",
        "4",
        "--retries",
        "0",
    ]
    _FailsAfter.made.clear()
    with pytest.raises(Exception, match="UNAVAILABLE"):
        job.run(argv, handler=_handler(argv, _FailsAfter))
    saved = _checkpointed(tmp_path / "out")
    assert 0 < len(saved) < 121 and all("#" in path for path in saved)
    _Counting.sent.clear()
    result, shown = _run_resumed(argv, _Counting)
    assert f"resuming: {len(saved):,} of the files and logged images already classified" in shown
    assert sum(_Counting.sent) == 120 - sum(isinstance(o, Classified) for o in saved.values())
    records = _by_path(_read(tmp_path / "out", "predictions"))
    assert {p: r["class_id"] for p, r in records.items()} == {p: r["class_id"] for p, r in reference.items()}
    assert [e["reason"] for e in _read(tmp_path / "out", "errors")] == ["not_an_image"]
    assert (result.summary.inputs, result.summary.classified, result.summary.resumed) == (121, 120, len(saved))
    assert not (tmp_path / "out" / CHECKPOINTS).exists()


# --- what is refused, and what --resume does with other outputs ------------------------------------


def test_resume_with_overwrite_is_a_usage_error(tmp_path, server, labelled_tree):
    result = _batch(
        "--input", str(labelled_tree), "--output", str(tmp_path / "out"), "--server", server, "--resume", "--overwrite"
    )
    assert result.returncode == 2
    assert "--resume keeps what an interrupted run did, --overwrite removes it" in result.stderr
    assert not (tmp_path / "out").exists()


def _fake_interrupted(output: Path, tree: Path, version: int) -> list[str]:
    """An interrupted run's checkpoints in ``output``: two batches of ``tree``'s PNGs, said to be from ``version``."""
    pngs = sorted(str(p) for p in tree.rglob("*.png"))[:6]
    outcomes = [
        Classified(p, None, tuple(float(i == n % 10) for i in range(10)), names.MODEL_NAME, version)
        for n, p in enumerate(pngs)
    ]
    write_checkpoint(str(output / CHECKPOINTS), outcomes[:3])
    write_checkpoint(str(output / CHECKPOINTS), outcomes[3:])
    return pngs


def test_an_interrupted_output_is_refused_without_resume_and_overwrite_starts_again(
    tmp_path, server, labelled_tree, capsys
):
    _fake_interrupted(tmp_path, labelled_tree, version=99)
    (tmp_path / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = ["--input", str(labelled_tree), "--output", str(tmp_path), "--server", server]
    assert job.main(argv, prog="fmnist batch") == 2
    error = capsys.readouterr().err
    assert f"--output {tmp_path} holds an interrupted run (2 checkpoints in {CHECKPOINTS}/)" in error
    assert "add --resume to finish it, or --overwrite to start again" in error
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing touched

    assert job.main([*argv, "--overwrite"]) == 0
    assert not (tmp_path / CHECKPOINTS).exists() and (tmp_path / "notes.txt").exists()
    records = _read(tmp_path, "predictions")
    assert len(records) == 40 and {r["model_version"] for r in records} == {1}  # nothing taken from the checkpoints


def test_resume_on_a_new_output_runs_whole_and_on_a_finished_one_does_nothing(tmp_path, server, labelled_tree):
    argv = ["--input", str(labelled_tree), "--output", str(tmp_path / "out"), "--server", server, "--resume"]
    first = _batch(*argv)
    assert first.returncode == 0, first.stderr
    assert "resuming" not in first.stderr and "42 files: 40 classified, 2 errors" in first.stdout
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    assert not (tmp_path / "out" / CHECKPOINTS).exists()

    again = _batch(*argv)
    assert again.returncode == 0, again.stderr
    assert f"nothing to resume: --output {tmp_path / 'out'} holds a finished run" in again.stderr
    listed = again.stdout.split("outputs:\n", 1)[1].split()
    assert sorted(listed) == sorted(str(p) for p in written)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == written  # nothing rewritten


def test_resume_on_results_without_checkpoints_is_refused(tmp_path, server, labelled_tree, capsys):
    (tmp_path / "predictions-00000-of-00001.jsonl").write_text("{}\n")
    argv = ["--input", str(labelled_tree), "--output", str(tmp_path), "--server", server, "--resume"]
    assert job.main(argv, prog="fmnist batch") == 2
    error = capsys.readouterr().err
    assert (
        "holds another run's results" in error and f"--resume has nothing to finish there (no {CHECKPOINTS}/)" in error
    )


# --- the checkpoints themselves --------------------------------------------------------------------


def test_half_written_and_damaged_checkpoints_are_ignored_and_removed(tmp_path, server, labelled_tree):
    output = tmp_path / "out"
    folder = output / CHECKPOINTS
    taken = _fake_interrupted(output, labelled_tree, version=99)  # two good checkpoints: 6 files
    pngs = sorted(str(p) for p in labelled_tree.rglob("*.png"))
    fake = [Classified(p, None, (1.0,) + (0.0,) * 9, names.MODEL_NAME, 77) for p in pngs[6:12]]
    # a checkpoint being written when the run stopped: half its lines, under its temporary name
    (folder / f"{CHECKPOINT_TEMP_PREFIX}0123abcd").write_text("".join(to_json(o) + "\n" for o in fake[:3])[:-40])
    # a checkpoint cut short at a line's end (a disk that lost its tail): its name no longer matches
    damaged = Path(write_checkpoint(str(folder), fake[3:6]))
    damaged.write_text("".join(to_json(o) + "\n" for o in fake[3:5]))
    # the same file in two checkpoints: the newer wins, and it is written once
    newer = Path(write_checkpoint(str(folder), [Classified(taken[0], None, (0.0,) * 9 + (1.0,), names.MODEL_NAME, 98)]))
    os.utime(newer, (time.time() + 60, time.time() + 60))
    # a file no longer among the inputs
    write_checkpoint(str(folder), [Failed(str(labelled_tree / "gone.png"), "empty", "0 bytes")])

    argv = ["--input", str(labelled_tree), "--output", str(output), "--server", server, "--batch-size", "4"]
    result, shown = _run_resumed(argv)
    assert f"ignoring a damaged checkpoint, {damaged}" in shown
    assert "resuming: 1 file in the checkpoints, no longer among the inputs, left out" in shown
    assert "resuming: 6 of 42 files already classified" in shown
    records = _by_path(_read(output, "predictions"))
    assert len(records) == 40 and len(_read(output, "errors")) == 2
    versions = {path: r["model_version"] for path, r in records.items()}
    assert versions[taken[0]] == 98 and {versions[p] for p in taken[1:]} == {99}
    assert {versions[p] for p in pngs[6:12]} == {1}  # the half-written and the damaged ones: classified again
    assert records[taken[1]]["class_id"] == 1  # the record is the checkpoint's outcome, ranked as any other
    assert (result.summary.inputs, result.summary.resumed) == (42, 6)
    assert not folder.exists()


def test_a_checkpoint_is_written_whole_under_its_batch_digest_and_read_back_exactly():
    outcomes = [
        Classified("b.png", 3, tuple(i / 7 for i in range(10)), "m", 12),
        Failed("a.png", "empty", "0 bytes"),
        Classified("c#d1-0", None, (0.1,) * 10, "m", 12),
    ]
    assert [from_json(to_json(o)) for o in outcomes] == outcomes  # probabilities bit for bit
    assert checkpoint_name(["a", "b"]) == checkpoint_name(["b", "a"]) != checkpoint_name(["a", "c"])
    for bad in (
        '{"path": "a"}',
        "[1]",
        '{"path": "a", "reason": 3, "detail": ""}',
        '{"path": "a", "reason": "x"',
        '{"path": "a", "label": null, "probabilities": [], "model_name": "m", "model_version": 1}',
    ):
        with pytest.raises(ValueError):
            from_json(bad)


def test_outcomes_of_files_with_undecodable_or_non_ascii_names_travel_as_json_lines():
    # Python keeps a file name's undecodable bytes as lone surrogates, which UTF-8 (and orjson) cannot hold.
    outcomes = [Classified("caf\u00e9/\udcff.png", 1, (0.5,) * 10, "m", 2), Failed("\udcfe.png", "empty", "0 bytes")]
    lines = [to_json(o) for o in outcomes]
    assert [from_json(line) for line in lines] == outcomes
    assert all(line.encode() and "\n" not in line for line in lines)  # each writable as one UTF-8 line
    block = records.BlockFormat("jsonl")([records.prediction_record(outcomes[0], 3), records.error_record(outcomes[1])])
    assert [json.loads(line)["path"] for line in block.encode().splitlines()] == [o.path for o in outcomes]


def test_a_checkpoint_read_back_must_be_whole(tmp_path):
    outcomes = [Failed(f"f{i}", "empty", "0 bytes") for i in range(3)]
    path = Path(write_checkpoint(str(tmp_path), outcomes))
    assert path.name == checkpoint_name(["f0", "f1", "f2"]) and is_checkpoint(path.name)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    assert read_checkpoint(str(path)) == outcomes
    whole = path.read_text()
    for cut in (whole[:-5], "\n".join(whole.splitlines()[:2]) + "\n", whole + whole.splitlines()[0] + "\n", ""):
        path.write_text(cut)
        with pytest.raises(ValueError):
            read_checkpoint(str(path))
