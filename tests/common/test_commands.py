"""``fmnist classify`` and ``fmnist batch --server`` as commands: start-up without TensorFlow, one verdict per file.

The commands run as real subprocesses (``python -m fmnist.cli``) against the
embedded server on a loopback port. Which processes import TensorFlow's
runtime is observed, not inferred: a ``sitecustomize`` put on the children's
PYTHONPATH (Beam's worker processes inherit it) notes every process that
starts and every one that imports ``tensorflow.python``, which only the real
``tensorflow/__init__`` does. The in-process batch mode, which does import
TensorFlow, is the check that the watch sees an import when there is one.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import png_claiming
from PIL import Image

from fmnist.common import imagefile

ROOT = Path(__file__).resolve().parents[2]

_WATCH = '''
import os, sys

_LOG = os.environ["FMNIST_TEST_IMPORT_LOG"]
open(os.path.join(_LOG, f"started-{os.getpid()}"), "w").close()


class _Watch:
    """Notes this process's import of TensorFlow's runtime, then lets the import go ahead."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow.python":
            open(os.path.join(_LOG, f"tensorflow-{os.getpid()}"), "w").close()
        return None


sys.meta_path.insert(0, _Watch())
'''


@dataclass(frozen=True)
class Watched:
    """A finished command, with the processes it started and those of them that imported TensorFlow."""

    result: subprocess.CompletedProcess
    started: frozenset[str]
    imported_tensorflow: frozenset[str]


def _watched(args: list[str], log: Path, hook: Path) -> Watched:
    log.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hook), str(ROOT)]), FMNIST_TEST_IMPORT_LOG=str(log))
    result = subprocess.run(
        [sys.executable, "-m", "fmnist.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    marks = [p.name.split("-") for p in log.iterdir()]
    return Watched(
        result,
        frozenset(pid for kind, pid in marks if kind == "started"),
        frozenset(pid for kind, pid in marks if kind == "tensorflow"),
    )


@pytest.fixture(scope="module")
def hook(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hook")
    (folder / "sitecustomize.py").write_text(_WATCH)
    return folder


def _encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


GOOD = ("Sneaker/0.png", "Bag/1.jpg", "Coat/2.gif", "Dress/3.bmp")
BAD = {  # what both commands must refuse before sending, and why
    "odd/photo.webp": imagefile.UNSUPPORTED_FORMAT,  # the graph would decode it, past its bomb check
    "odd/scan.tiff": imagefile.UNSUPPORTED_FORMAT,
    "odd/empty.png": imagefile.EMPTY,
    "odd/notes.txt": imagefile.NOT_AN_IMAGE,
    "odd/bomb.png": imagefile.TOO_LARGE,
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory, dataset) -> Path:
    root = tmp_path_factory.mktemp("images")
    for i, name in enumerate(GOOD):
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes(_encoded(dataset.test.images[i], name.split(".")[1].replace("jpg", "jpeg")))
    (root / "odd").mkdir()
    (root / "odd/photo.webp").write_bytes(_encoded(dataset.test.images[4], "webp"))
    (root / "odd/scan.tiff").write_bytes(_encoded(dataset.test.images[5], "tiff"))
    (root / "odd/empty.png").write_bytes(b"")
    (root / "odd/notes.txt").write_text("not an image")
    (root / "odd/bomb.png").write_bytes(png_claiming(100_000, 100_000))
    return root


@pytest.fixture(scope="module")
def served_batch(tree, server, hook, tmp_path_factory) -> tuple[Path, Watched]:
    """``fmnist batch --server`` over the tree with two worker processes, watched."""
    work = tmp_path_factory.mktemp("served-batch")
    args = [
        "batch",
        "--input",
        str(tree),
        "--output",
        str(work / "out"),
        "--server",
        server,
        "--direct_num_workers=2",
        "--direct_running_mode=multi_processing",
    ]
    return work / "out", _watched(args, work / "log", hook)


def _jsonl(output: Path, name: str) -> dict[str, dict]:
    rows = [json.loads(line) for shard in sorted(output.glob(f"{name}-*")) for line in shard.read_text().splitlines()]
    return {row["path"]: row for row in rows}


# --- start-up: no TensorFlow runtime where only protos are needed ---------------------------------


@pytest.mark.parametrize("module", ["fmnist.common.client", "fmnist.serving.classify", "fmnist.batch.job"])
def test_importing_the_client_or_the_batch_job_does_not_start_tensorflow(module):
    code = (
        f"import sys, {module}; from fmnist.common.apis import predict_pb2; "
        "print(sorted({'tensorflow.python', 'tensorflow'} & set(sys.modules)), predict_pb2.__file__)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded, proto_file = result.stdout.split()
    assert loaded == "[]"  # neither the runtime nor the stand-in package is left behind
    assert Path(proto_file).parent.parts[-2:] == ("tensorflow_serving", "apis")  # the installed modules, not copies


def test_tensorflow_imports_after_the_client_and_shares_its_protos():
    code = """
import numpy as np
from fmnist.common import apis, client, tensors
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

assert int(tf.constant(1) + 1) == 2
assert tensor_pb2 is apis.tensor_pb2
request = apis.predict_pb2.PredictRequest()
request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.arange(6, dtype=np.float32).reshape(2, 3)))
assert tensors.to_ndarray(request.inputs["images"], np.float32).tolist() == [[0, 1, 2], [3, 4, 5]]
assert tf.make_ndarray(request.inputs["images"]).shape == (2, 3)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.split() == ["ok"], result.stderr


@pytest.mark.slow
def test_a_served_batch_job_imports_tensorflow_in_no_process_workers_included(served_batch):
    output, watched = served_batch
    assert watched.result.returncode == 0, watched.result.stderr
    assert (output / "_SUCCESS").exists()
    assert len(watched.started) >= 3  # the launcher and its two workers (Beam may start helpers too)
    assert watched.imported_tensorflow == frozenset()


@pytest.mark.slow
def test_in_process_batch_imports_tensorflow_when_it_needs_it_with_its_banner_kept_off_stderr(
    tree, model_base, hook, tmp_path
):
    args = ["batch", "--input", str(tree), "--output", str(tmp_path / "out"), "--in-process", str(model_base)]
    watched = _watched(args, tmp_path / "log", hook)
    assert watched.result.returncode == 0, watched.result.stderr
    assert watched.imported_tensorflow  # the watch sees an import when there is one
    assert "cuda" not in watched.result.stderr.lower() and "absl" not in watched.result.stderr


# --- one verdict per file, one record per file ----------------------------------------------------


@pytest.mark.slow
def test_classify_refuses_what_the_batch_job_refuses_with_the_same_reason_and_detail(
    tree, server, hook, served_batch, tmp_path
):
    paths = [str(tree / name) for name in (*GOOD, *BAD)]
    watched = _watched(["classify", *paths, "--server", server], tmp_path / "log", hook)
    assert watched.result.returncode == 1
    assert watched.imported_tensorflow == frozenset()
    assert [line.split(": ")[0] for line in watched.result.stdout.splitlines()] == [str(tree / g) for g in GOOD]
    refused = {}
    for line in watched.result.stderr.splitlines():
        prog, path, reason, detail = line.split(": ", 3)
        assert prog == "fmnist classify"
        refused[path] = (reason, detail)
    errors = {path: (row["reason"], row["detail"]) for path, row in _jsonl(served_batch[0], "errors").items()}
    assert refused == errors
    assert {path: reason for path, (reason, _) in refused.items()} == {str(tree / b): r for b, r in BAD.items()}


def test_a_bomb_is_refused_naming_the_projects_limit_not_pils():
    limit = "more than --max-image-pixels allows (4096x4096)"
    plain, sixteen_bit = png_claiming(100_000, 100_000), png_claiming(100_000, 100_000, bit_depth=16)
    for png in (plain, sixteen_bit):  # the fast path's PNG, and one PIL would have to read
        assert imagefile.check(png, imagefile.Limits()) == (
            imagefile.TOO_LARGE,
            f"its header claims 100000x100000 pixels, {limit}",
        )
    # A format the sniffer does not read: PIL reads the header and raises its own bomb error, past twice its limit.
    assert imagefile.check(b"P5\n100000 100000\n255\n" + bytes(64), imagefile.Limits()) == (
        imagefile.TOO_LARGE,
        f"its header claims more than {2 * Image.MAX_IMAGE_PIXELS} pixels, {limit}",
    )
    reason, detail = imagefile.check(png_claiming(300, 200), imagefile.Limits(max_pixels=50_000))
    assert (reason, detail) == (
        imagefile.TOO_LARGE,
        "its header claims 300x200 pixels, more than --max-image-pixels allows (50000 pixels)",
    )


@pytest.mark.slow
def test_classify_json_lines_are_the_batch_jobs_records(tree, server, hook, served_batch, tmp_path):
    paths = [str(tree / name) for name in GOOD]
    watched = _watched(["classify", *paths, "--server", server, "--json", "--top-k", "3"], tmp_path / "log", hook)
    assert watched.result.returncode == 0, watched.result.stderr
    printed = {row["path"]: row for row in map(json.loads, watched.result.stdout.splitlines())}
    written = {path: row for path, row in _jsonl(served_batch[0], "predictions").items() if path in printed}
    assert printed.keys() == written.keys() == set(paths)
    for path, record in printed.items():
        twin = written[path]
        assert list(record) == list(twin)  # same fields, same order
        probabilities = [entry.pop("probability") for entry in record["top_k"] + twin["top_k"]]
        assert probabilities[:3] == pytest.approx(probabilities[3:], abs=1e-5)  # other batches, other rounding
        assert record.pop("confidence") == pytest.approx(twin.pop("confidence"), abs=1e-5)
        assert record == twin  # class_id, class_name, top-k ids and names, model_name, model_version
        assert record["model_version"] == 1
