"""``fmnist batch`` as a person runs it: the real command in a subprocess, a real server on loopback.

Options, reused output folders, Ctrl-C, a server lost mid-job, a wrong model
name, progress and the closing listing; what the job computes is checked in
test_job.py.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from batch_outputs import read_rows
from conftest import encode_png, png_claiming

from fmnist.common import names
from fmnist.common.apis import prediction_log_pb2
from fmnist.serving.server import ServerConfig, start

FILES_PER_CLASS = 4


def _batch(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fmnist.cli", "batch", *args], capture_output=True, text=True, timeout=timeout
    )


def _popen_batch(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fmnist.cli", "batch", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _start_server(models: Path):
    return start(ServerConfig(port=0, model_name=names.MODEL_NAME, model_base_path=str(models / names.MODEL_NAME)))


@pytest.fixture(scope="module")
def images(tmp_path_factory, dataset) -> Path:
    """FILES_PER_CLASS PNGs in each class folder, and two directly in the root folder."""
    root = tmp_path_factory.mktemp("images")
    for i in range(FILES_PER_CLASS * names.NUM_CLASSES + 2):
        label = int(dataset.test.labels[i])
        folder = root / names.folder_name(label) if i >= 2 else root
        folder.mkdir(exist_ok=True)
        (folder / f"{i}.png").write_bytes(encode_png(dataset.test.images[i]))
    return root


@pytest.fixture(scope="module")
def many_images(tmp_path_factory, dataset) -> Path:
    """Enough files that a job with small batches is still running a few seconds in."""
    root = tmp_path_factory.mktemp("many")
    encoded = [encode_png(image) for image in dataset.test.images[:500]]
    for copy in range(12):
        folder = root / str(copy)
        folder.mkdir()
        for i, data in enumerate(encoded):
            (folder / f"{i}.png").write_bytes(data)
    return root


def _first_progress_line(process: subprocess.Popen) -> str:
    seen = ""
    while "progress:" not in seen:
        line = process.stderr.readline()
        assert line, f"the job ended before any progress: {seen}"
        seen += line
    return seen


@pytest.mark.parametrize(
    "typo, meant",
    [(("--fromat", "csv"), "--format"), (("--batch_size", "8"), "--batch-size"), (("--runer", "x"), "--runner")],
)
def test_a_mistyped_option_is_refused_with_exit_2_and_a_suggestion(typo, meant, tmp_path, server, images):
    result = _batch("--input", str(images), "--output", str(tmp_path / "out"), "--server", server, *typo)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"fmnist batch: error: unknown option {typo[0]} (did you mean {meant}?)",
        "see 'fmnist batch --help'",
    ]
    assert not (tmp_path / "out").exists()


def test_beam_options_still_pass_through(tmp_path, server, images):
    result = _batch(
        "--input",
        str(images),
        "--output",
        str(tmp_path),
        "--server",
        server,
        "--direct_num_workers=1",
        "--direct_running_mode",
        "in_memory",
    )
    assert result.returncode == 0, result.stderr


def test_a_run_shows_files_matched_progress_and_where_its_outputs_are(tmp_path, server, images):
    # '**/' matches no folder too, so the two files directly under images/ are in
    result = _batch(
        "--input",
        f"{images}/**/*.png",
        "--output",
        str(tmp_path),
        "--server",
        server,
        "--batch-size",
        "8",
        "--progress-seconds",
        "0",
    )
    assert result.returncode == 0, result.stderr
    total = FILES_PER_CLASS * names.NUM_CLASSES + 2
    assert f"matched {total} files" in result.stderr
    assert "progress: 100%" in result.stderr and f"{total}/{total} [" in result.stderr
    assert "Traceback" not in result.stderr
    listed = result.stdout.split("outputs:\n", 1)[1].split()
    assert sorted(Path(p).name for p in listed) == sorted(p.name for p in tmp_path.iterdir())
    assert {"summary.json", "_SUCCESS", "confusion_matrix.png"} <= {Path(p).name for p in listed}
    # the per-class line says what it counts: predictions, and the folders' labels beside them
    assert "per class, predicted / labelled: T-shirt/top " in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["inputs"] == total and summary["evaluation"]["files"] == total - 2


def test_an_output_holding_another_run_is_refused_unless_overwrite(tmp_path, server, images):
    common = ("--input", str(images), "--output", str(tmp_path), "--server", server)
    assert _batch(*common).returncode == 0
    first = sorted(p.name for p in tmp_path.iterdir())
    assert any(name.endswith(".jsonl") for name in first)

    refused = _batch(*common, "--format", "parquet")
    assert refused.returncode == 2
    assert f"--output {tmp_path} holds another run's results" in refused.stderr and "--overwrite" in refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == first  # nothing touched

    # What an interrupted run leaves (Beam's temp folders, empty or not), and a file that is not the job's.
    (tmp_path / "beam-temp-predictions-1234").mkdir()
    (tmp_path / "beam-temp-predictions-1234" / "shard").write_text("partial")
    (tmp_path / "beam-temp-errors-5678").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    replaced = _batch(*common, "--format", "parquet", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert not [name for name in left if name.endswith(".jsonl") or name.startswith("beam-temp-")], left
    assert "notes.txt" in left and any(name.endswith(".parquet") for name in left)
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = sum(pq.read_table(p).num_rows for p in tmp_path.glob("predictions-*.parquet"))
    assert summary["classified"] == rows == summary["inputs"]


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line_and_no_traceback(tmp_path, server, many_images):
    process = _popen_batch(
        "--input",
        str(many_images),
        "--output",
        str(tmp_path),
        "--server",
        server,
        "--batch-size",
        "2",
        "--progress-seconds",
        "0",
    )
    try:
        _first_progress_line(process)
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == "fmnist batch: interrupted"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert not (tmp_path / "_SUCCESS").exists()


@pytest.mark.slow
def test_a_server_lost_mid_job_is_one_line_naming_it_and_what_to_do(tmp_path, _pushed_once, many_images):
    lost = _start_server(_pushed_once)
    target = f"127.0.0.1:{lost.port}"
    process = _popen_batch(
        "--input",
        str(many_images),
        "--output",
        str(tmp_path),
        "--server",
        target,
        "--batch-size",
        "2",
        "--progress-seconds",
        "0",
        "--timeout",
        "2",
        "--retries",
        "1",
    )
    try:
        _first_progress_line(process)
        lost.stop()
        _out, err = process.communicate(timeout=120)
    finally:
        process.kill()
        lost.stop()
    assert process.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"fmnist batch: error: lost the server: {target}: UNAVAILABLE")
    assert "check that it is running" in last and last.endswith("then run the job again with --resume")
    assert "Traceback" not in err
    assert not (tmp_path / "_SUCCESS").exists()


def test_a_server_without_the_model_says_not_found_within_seconds(tmp_path, server, images):
    started = time.monotonic()
    result = _batch(
        "--input",
        str(images),
        "--output",
        str(tmp_path),
        "--server",
        server,
        "--model-name",
        "nope",
        "--timeout",
        "120",
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert f"the server at {server} has no version of model 'nope' (NOT_FOUND" in result.stderr
    assert elapsed < 60, "it waited for the start-up deadline instead of believing NOT_FOUND"


def test_a_server_with_no_version_pushed_says_how_to_push_one(tmp_path, images):
    empty = start(ServerConfig(port=0, model_name=names.MODEL_NAME, model_base_path=str(tmp_path / "models/m")))
    try:
        result = _batch(
            "--input", str(images), "--output", str(tmp_path / "out"), "--server", f"127.0.0.1:{empty.port}"
        )
    finally:
        empty.stop()
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert f"has no version of model '{names.MODEL_NAME}' (NOT_FOUND: " in line
    assert (
        "nothing is pushed under its model base path yet, so push a version with fmnist train --models-dir DIR" in line
    )
    assert "fmnist demo pushes to runs/demo/models/" in line


def test_several_servers_share_the_job_round_robin(tmp_path, _pushed_once, images):
    # The same weights as version 1 on one replica and as version 2 on the other: the summary says who answered.
    for version in ("1", "2"):
        shutil.copytree(_pushed_once / names.MODEL_NAME / "1", tmp_path / version / names.MODEL_NAME / version)
    replicas = [_start_server(tmp_path / version) for version in ("1", "2")]
    try:
        result = _batch(
            "--input",
            str(images),
            "--output",
            str(tmp_path / "out"),
            "--batch-size",
            "2",
            "--server",
            ",".join(f"127.0.0.1:{replica.port}" for replica in replicas),
        )
    finally:
        for replica in replicas:
            replica.stop()
    assert result.returncode == 0, result.stderr
    models = json.loads((tmp_path / "out" / "summary.json").read_text())["models"]
    assert {m["model_version"] for m in models} == {1, 2}
    assert sum(m["files"] for m in models) == FILES_PER_CLASS * names.NUM_CLASSES + 2


@pytest.fixture(scope="module")
def undecodable(tmp_path_factory, dataset) -> Path:
    """A class folder whose files are named by bytes UTF-8 cannot decode (a Latin-1 é), beside a plain one."""
    root = tmp_path_factory.mktemp("undecodable")
    bag = root / names.folder_name(8)
    bag.mkdir()
    for name, data in (
        (b"caf\xe9.png", encode_png(dataset.test.images[0])),
        (b"plain.png", encode_png(dataset.test.images[1])),
        (b"notes\xe9.txt", b"not an image"),
    ):
        Path(os.fsdecode(bytes(bag) + b"/" + name)).write_bytes(data)
    return root


def _named(root: Path, name: bytes) -> str:
    """The path Python, and so the job, gives the file ``name`` under ``root``'s class folder."""
    return os.fsdecode(bytes(root / names.folder_name(8)) + b"/" + name)


@pytest.mark.parametrize("mode", ["in_memory", "multi_processing"])
def test_a_file_name_utf8_cannot_hold_is_classified_and_its_json_path_reads_back_the_same(
    mode, tmp_path, server, undecodable
):
    result = _batch(
        "--input",
        str(undecodable),
        "--output",
        str(tmp_path),
        "--server",
        server,
        "--direct_num_workers=2",
        f"--direct_running_mode={mode}",
    )
    assert result.returncode == 0, result.stderr
    predicted = {row["path"] for row in read_rows(tmp_path, "predictions")}
    assert predicted == {_named(undecodable, b"caf\xe9.png"), _named(undecodable, b"plain.png")}
    [error] = read_rows(tmp_path, "errors")
    assert (error["path"], error["reason"]) == (_named(undecodable, b"notes\xe9.txt"), "not_an_image")
    assert Path(error["path"]).read_bytes() == b"not an image"  # the path read back opens the file
    assert "caf\\udce9.png" in (tmp_path / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("file_format", ["csv", "parquet", "tfrecord"])
def test_formats_that_hold_only_utf8_write_such_a_name_escaped(file_format, tmp_path, server, undecodable):
    result = _batch("--input", str(undecodable), "--output", str(tmp_path), "--server", server, "--format", file_format)
    assert result.returncode == 0, result.stderr
    escaped = f"{undecodable / names.folder_name(8)}/caf\\udce9.png"
    if file_format == "tfrecord":
        logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in _tfrecords(tmp_path, "predictions")]
        assert escaped in {log.log_metadata.request_origin for log in logs}
    else:
        assert escaped in {row["path"] for row in read_rows(tmp_path, "predictions")}
        errors = {row["path"] for row in read_rows(tmp_path, "errors")}
        assert errors == {f"{undecodable / names.folder_name(8)}/notes\\udce9.txt"}


def _tfrecords(output: Path, name: str) -> list[bytes]:
    """The records of every ``name-*.tfrecord`` shard (length, its CRC, the record, its CRC)."""
    found = []
    for shard in sorted(output.glob(f"{name}-*.tfrecord")):
        data = shard.read_bytes()
        while data:
            length = struct.unpack("<Q", data[:8])[0]
            found.append(data[12 : 12 + length])
            data = data[16 + length :]
    return found


@pytest.fixture(scope="module")
def linked(tmp_path_factory, dataset) -> Path:
    """top/ with a file, a link to a class folder elsewhere, a link to nothing, and a link back to top/ itself."""
    root = tmp_path_factory.mktemp("linked")
    (root / "elsewhere/Bag").mkdir(parents=True)
    (root / "top").mkdir()
    for i in range(3):
        (root / "elsewhere/Bag" / f"{i}.png").write_bytes(encode_png(dataset.test.images[i]))
    (root / "top/own.png").write_bytes(encode_png(dataset.test.images[3]))
    (root / "top/Bag").symlink_to("../elsewhere/Bag")
    (root / "top/gone.png").symlink_to("../elsewhere/nothing.png")
    (root / "top/again").symlink_to(".")
    return root


@pytest.mark.parametrize("pattern", ["{top}", "{top}/**/*.png"])
def test_links_to_folders_are_followed_and_a_link_to_nothing_is_an_error_saying_so(pattern, tmp_path, server, linked):
    top = linked / "top"
    result = _batch("--input", pattern.format(top=top), "--output", str(tmp_path), "--server", server)
    assert result.returncode == 0, result.stderr
    assert "matched 5 files" in result.stderr  # own.png, Bag/0-2.png through the link, gone.png; not again/...
    predicted = {row["path"] for row in read_rows(tmp_path, "predictions")}
    assert predicted == {str(top / "own.png")} | {str(top / "Bag" / f"{i}.png") for i in range(3)}
    [error] = read_rows(tmp_path, "errors")
    assert error == {
        "path": str(top / "gone.png"),
        "reason": "unreadable",
        "detail": "a symbolic link to ../elsewhere/nothing.png, which does not exist",
    }
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["inputs"] == summary["classified"] + summary["errors"] == 5


def test_globstar_over_class_folders_alone_matches_their_files(tmp_path, server, undecodable):
    # undecodable/ holds only its class folder, so undecodable/*.png (what **/ matching no folder gives) is empty
    result = _batch("--input", f"{undecodable}/**/*.png", "--output", str(tmp_path), "--server", server)
    assert result.returncode == 0, result.stderr
    assert "matched 2 files" in result.stderr


@pytest.mark.parametrize(
    "given, said",
    [
        ("{root}/nowhere", "no such folder or file: {root}/nowhere"),
        ("{root}/empty", "no image files under {root}/empty"),
        ("{root}/empty/**/*.png", "no file matches {root}/empty/**/*.png"),
    ],
)
def test_an_input_that_gives_no_file_is_a_usage_error_saying_why(given, said, tmp_path, server, images):
    (tmp_path / "empty/sub").mkdir(parents=True)
    result = _batch(
        "--input",
        str(images),
        "--input",
        given.format(root=tmp_path),
        "--output",
        str(tmp_path / "out"),
        "--server",
        server,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == f"fmnist batch: error: {said.format(root=tmp_path)}"
    assert not (tmp_path / "out").exists()


@pytest.fixture
def http1_port():
    """A port where an HTTP/1 server answers (what a REST port is), not gRPC."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("kind", ["refused", "unresolved", "http1"])
def test_a_server_that_is_not_there_fails_within_seconds_naming_why(kind, tmp_path, images, http1_port):
    target, said = {
        "refused": (f"127.0.0.1:{_closed_port()}", "connection refused by 127.0.0.1:"),
        "unresolved": ("nothing-here.invalid:8500", "the name nothing-here.invalid does not resolve"),
        "http1": (f"127.0.0.1:{http1_port}", "does not speak gRPC (its answer is not HTTP/2; is it the REST port?)"),
    }[kind]
    started = time.monotonic()
    result = _batch("--input", str(images), "--output", str(tmp_path / "out"), "--server", target)  # --timeout 30
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"fmnist batch: error: cannot reach the server at {target}: ") and said in line
    assert elapsed < 15, f"{elapsed:.1f}s: it waited out --timeout for a server that is not there"


@pytest.mark.parametrize(
    "output, said",
    [
        ("{file}/out", "--output {file}/out: {file} is a file, not a folder"),
        ("{file}", "--output {file}: {file} is a file, not a folder"),
        ("{gone}/out", "--output {gone}/out: {gone} is a symbolic link to nothing"),
        # sysfs takes no new file, whoever asks (root too): a permission error without chmod, which root overrides
        ("/sys/fmnist-out", "--output /sys/fmnist-out: cannot write in /sys: "),
    ],
)
def test_an_output_the_job_cannot_write_is_a_usage_error_before_any_work(output, said, tmp_path, server, images):
    (tmp_path / "file").write_text("a file")
    (tmp_path / "gone").symlink_to(tmp_path / "nothing")
    paths = {"file": tmp_path / "file", "gone": tmp_path / "gone"}
    result = _batch("--input", str(images), "--output", output.format(**paths), "--server", server)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].startswith(f"fmnist batch: error: {said.format(**paths)}")
    assert "matched" not in result.stderr and not (tmp_path / "nothing").exists()


@pytest.fixture(scope="module")
def limits_tree(tmp_path_factory, dataset) -> Path:
    """Good files beside PNGs cut short at two places (in IHDR, in IDAT) and one claiming 5000x5000 pixels."""
    root = tmp_path_factory.mktemp("limits")
    for folder, name, data in (
        ("Bag", "good.png", encode_png(dataset.test.images[0])),
        ("Bag", "cut-in-idat.png", encode_png(dataset.test.images[1])[:60]),
        ("Coat", "good.png", encode_png(dataset.test.images[2])),
        ("Coat", "cut-in-ihdr.png", encode_png(dataset.test.images[3])[:20]),
        ("Coat", "5000x5000.png", png_claiming(5000, 5000)),
    ):
        (root / folder).mkdir(exist_ok=True)
        (root / folder / name).write_bytes(data)
    return root


def _errors(output: Path) -> dict[str, dict]:
    return {Path(row["path"]).name: row for row in read_rows(output, "errors")}


def test_a_truncated_png_is_not_an_image_wherever_it_is_and_a_too_large_reason_names_its_option(
    tmp_path, server, limits_tree
):
    result = _batch("--input", str(limits_tree), "--output", str(tmp_path), "--server", server, "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    errors = _errors(tmp_path)
    assert {name: row["reason"] for name, row in errors.items()} == {
        "cut-in-idat.png": "not_an_image",
        "cut-in-ihdr.png": "not_an_image",
        "5000x5000.png": "too_large",
    }
    assert errors["cut-in-idat.png"]["detail"] == "truncated PNG: its 60 bytes end before its IEND chunk"
    assert "more than --max-image-pixels allows (4096x4096)" in errors["5000x5000.png"]["detail"]

    smaller = _batch(
        "--input", str(limits_tree / "Bag"), "--output", str(tmp_path / "small"), "--server", server,
        "--max-image-bytes", "100",
    )  # fmt: skip
    assert smaller.returncode == 0, smaller.stderr
    assert _errors(tmp_path / "small")["good.png"]["detail"] == "more than --max-image-bytes allows (100 bytes)"


def test_an_image_the_servers_limit_refuses_says_so_and_names_its_option(tmp_path, server, limits_tree):
    result = _batch(
        "--input", str(limits_tree / "Coat"), "--output", str(tmp_path), "--server", server,
        "--max-image-pixels", str(5000 * 5000),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    refused = _errors(tmp_path)["5000x5000.png"]
    assert refused["reason"] == "too_large"
    assert refused["detail"].startswith(
        "refused by the server's limit, which the job's raised one let through: its header claims 5000x5000 "
        "pixels, more than --max-image-pixels allows (4096x4096) by default, and fmnist serve takes the same option"
    )


def test_one_file_is_counted_in_the_singular(tmp_path, server, images):
    one = next(images.glob("*.png"))
    result = _batch("--input", str(one), "--output", str(tmp_path), "--server", server)
    assert result.returncode == 0, result.stderr
    assert f"matched 1 file; classifying via server {server}" in result.stderr
    assert result.stdout.startswith("1 file: 1 classified, 0 errors in ")
