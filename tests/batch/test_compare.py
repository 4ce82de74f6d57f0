"""``fmnist compare`` against a real embedded server serving two versions, labelled ``stable`` and ``canary``.

Version 1 is the session's pushed model; version 2 a model trained on fewer
images with another seed, so the two disagree on real files. What the job
reports is checked against the server called directly, file by file; the gate
through the real command in a subprocess; the report in headless Chromium.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from browser import (
    browser,  # noqa: F401  (a fixture, found by its name)
    facts,
    images_on_page,
    needs_chromium,
    screenshot,
    table_rows,
)
from conftest import corrupt_png, encode_png, two_versions_config

from fmnist.batch import compare, report
from fmnist.batch.comparison import GALLERY_SIZE
from fmnist.batch.errors import ServerLost
from fmnist.batch.outcomes import Reason
from fmnist.common import errors as serving_errors
from fmnist.common import names
from fmnist.common.client import Prediction, PredictionClient
from fmnist.serving.server import ServerConfig, start

FILES_PER_CLASS = 5
BATCH = 8  # small, so the corrupt file shares a request with good ones
BAD = {"notes.txt": Reason.NOT_AN_IMAGE, "Coat/corrupt.png": Reason.REJECTED}


@pytest.fixture(scope="module")
def model_config(tmp_path_factory, _pushed_once, dataset) -> Path:
    """A model config serving versions 1 (``stable``) and 2 (``canary``, another recipe) of one base path."""
    from fmnist.pipeline import pusher, trainer

    models = tmp_path_factory.mktemp("compare-models")
    shutil.copytree(_pushed_once, models, dirs_exist_ok=True)
    other = trainer.run(trainer.TrainConfig(epochs=1, limit=600, seed=7, verbose=0), dataset.train)
    assert pusher.push(other.model, models / names.MODEL_NAME, clock=lambda: 2).name == "2"
    return two_versions_config(models, {"stable": 1, "canary": 2})


@pytest.fixture(scope="module")
def server(model_config):
    running = start(ServerConfig(port=0, model_config_file=str(model_config)))
    yield f"127.0.0.1:{running.port}"
    running.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory, dataset) -> Path:
    """FILES_PER_CLASS test images in each class folder, plus a text file and a PNG only the model can tell is
    broken."""
    root = tmp_path_factory.mktemp("compare-images")
    counts = Counter()
    for pixels, label in zip(dataset.test.images, dataset.test.labels, strict=False):
        if counts[int(label)] < FILES_PER_CLASS:
            folder = root / names.folder_name(int(label))
            folder.mkdir(exist_ok=True)
            (folder / f"{sum(counts.values())}.png").write_bytes(encode_png(pixels))
            counts[int(label)] += 1
    (root / "notes.txt").write_text("not an image")
    (root / "Coat/corrupt.png").write_bytes(corrupt_png(encode_png(dataset.test.images[0])))
    return root


@pytest.fixture(scope="module")
def answers(images, server) -> dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """path → per version (1, 2): (class, version that answered, label) from the server, one request per file."""
    answers = {}
    with PredictionClient(server) as client:
        for path in sorted(p for p in images.rglob("*.png") if str(p.relative_to(images)) not in BAD):
            label = names.class_id_from_folder(path.parent.name)
            answers[str(path)] = tuple(
                (int(p.class_ids[0]), p.version, label)
                for p in (client.predict_encoded([path.read_bytes()], version=v) for v in (1, 2))
            )
    return answers


@pytest.fixture(scope="module")
def compared(images, server, tmp_path_factory) -> tuple[Path, compare.CompareResult]:
    output = tmp_path_factory.mktemp("compare-out")
    result = compare.run(
        [
            "--input",
            str(images),
            "--output",
            str(output),
            "--server",
            server,
            "--baseline",
            "stable",
            "--candidate",
            "canary",
            "--batch-size",
            str(BATCH),
        ]
    )
    return output, result


def _disagreements(output: Path) -> list[dict]:
    return [
        json.loads(line)
        for shard in sorted(output.glob("disagreements-*.jsonl"))
        for line in shard.read_text().splitlines()
    ]


def test_agreement_and_flips_are_what_each_version_answers_file_by_file(compared, answers):
    output, result = compared
    comparison = json.loads((output / compare.COMPARISON_FILE).read_text())
    pairs = Counter((one[0], two[0]) for one, two in answers.values())
    flips = {(names.CLASS_NAMES[b], names.CLASS_NAMES[c]): n for (b, c), n in pairs.items() if b != c}
    assert flips, "the two models should disagree somewhere, or this test proves little"
    assert comparison["files"] == len(answers) + len(BAD)
    assert comparison["compared"] == len(answers) and comparison["errors"] == len(BAD)
    agreed = sum(n for (b, c), n in pairs.items() if b == c)
    assert comparison["agreement"] == pytest.approx(agreed / len(answers), abs=1e-6)
    assert {(f["baseline"], f["candidate"]): f["files"] for f in comparison["flips"]} == flips
    assert [f["files"] for f in comparison["flips"]] == sorted(flips.values(), reverse=True)
    assert comparison == json.loads(compare.to_json(result.comparison, result.gate))


def test_every_disagreeing_file_is_written_with_both_answers(compared, answers):
    output, _ = compared
    records = {r["path"]: r for r in _disagreements(output)}
    assert set(records) == {path for path, (one, two) in answers.items() if one[0] != two[0]}
    for path, record in records.items():
        (baseline, _, label), (candidate, _, _) = answers[path]
        assert record["label"] == names.CLASS_NAMES[label]
        assert (record["baseline_class"], record["baseline_version"]) == (names.CLASS_NAMES[baseline], 1)
        assert (record["candidate_class"], record["candidate_version"]) == (names.CLASS_NAMES[candidate], 2)
        assert 0.1 <= record["baseline_confidence"] <= 1 and 0.1 <= record["candidate_confidence"] <= 1


def test_files_either_version_refuses_are_errors_with_their_reason(compared, images):
    output, _ = compared
    errors = {
        r["path"]: r["reason"]
        for shard in output.glob("errors-*.jsonl")
        for r in map(json.loads, shard.read_text().splitlines())
    }
    assert errors == {str(images / path): reason for path, reason in BAD.items()}
    comparison = json.loads((output / compare.COMPARISON_FILE).read_text())
    assert comparison["errors_by_reason"] == dict(sorted(Counter(BAD.values()).items()))


def test_labels_resolve_through_the_model_config_to_the_versions_they_name(compared, answers):
    output, _ = compared
    comparison = json.loads((output / compare.COMPARISON_FILE).read_text())
    assert comparison["requested"] == {"baseline": "label 'stable'", "candidate": "label 'canary'"}
    assert comparison["versions"] == {
        side: [{"model_name": names.MODEL_NAME, "model_version": version, "files": len(answers)}]
        for side, version in (("baseline", 1), ("candidate", 2))
    }


def test_labelled_folders_give_each_versions_accuracy_and_the_delta(compared, answers):
    output, _ = compared
    accuracy = json.loads((output / compare.COMPARISON_FILE).read_text())["accuracy"]
    right = [sum(answer[side][0] == answer[side][2] for answer in answers.values()) / len(answers) for side in (0, 1)]
    assert accuracy["files"] == len(answers)
    assert (accuracy["baseline"], accuracy["candidate"]) == pytest.approx(tuple(right), abs=1e-6)
    assert accuracy["delta"] == pytest.approx(right[1] - right[0], abs=1e-6)


def test_version_numbers_compare_the_same_as_their_labels(compared, images, server, tmp_path):
    _, by_label = compared
    by_number = compare.run(
        [
            "--input",
            str(images),
            "--output",
            str(tmp_path),
            "--server",
            server,
            "--baseline",
            "1",
            "--candidate",
            "2",
            "--batch-size",
            str(BATCH),
        ]
    )
    assert by_number.comparison.requested == {"baseline": "version 1", "candidate": "version 2"}
    for field in ("files", "compared", "errors", "agreement", "flips", "versions", "accuracy"):
        assert getattr(by_number.comparison, field) == getattr(by_label.comparison, field), field


def test_file_names_utf8_cannot_hold_are_compared_and_read_back_the_same(images, server, tmp_path):
    """A Latin-1 é in a file name: Python holds it as a lone surrogate, which Beam's UTF-8 coder refuses."""
    folder = tmp_path / "in" / "Bag"
    folder.mkdir(parents=True)
    for name in (b"caf\xe9.png", b"ok.png"):
        shutil.copy(next((images / "Bag").glob("*.png")), os.fsdecode(bytes(folder) + b"/" + name))
    Path(os.fsdecode(bytes(folder) + b"/notes\xe9.txt")).write_text("not an image")
    argv = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--server", server]
    result = compare.run([*argv, "--baseline", "1", "--candidate", "2"])
    assert (result.comparison.files, result.comparison.compared, result.comparison.errors) == (3, 2, 1)
    [error] = [json.loads(line) for line in next((tmp_path / "out").glob("errors-*")).read_text().splitlines()]
    assert error["path"] == os.fsdecode(bytes(folder) + b"/notes\xe9.txt") and Path(error["path"]).is_file()


def _compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fmnist.cli", "compare", *args], capture_output=True, text=True, timeout=180
    )


def test_the_gate_decides_the_exit_code(images, server, compared, tmp_path):
    comparison = compared[1].comparison
    disagreement = 1 - comparison.agreement
    common = ["--input", str(images), "--server", server, "--baseline", "stable", "--candidate", "canary"]

    passed = _compare(*common, "--output", str(tmp_path / "pass"), "--max-disagreement", f"{disagreement + 0.01:.4f}")
    assert passed.returncode == 0, passed.stderr
    assert f"agreement {comparison.agreement:.2%}" in passed.stdout and "gate: passed" in passed.stdout
    assert str(tmp_path / "pass" / compare.COMPARISON_FILE) in passed.stdout

    too_different = _compare(
        *common, "--output", str(tmp_path / "flips"), "--max-disagreement", f"{disagreement / 2:.4f}"
    )
    assert too_different.returncode == compare.FAILS_GATE
    assert (
        too_different.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"fmnist compare: the candidate fails the gate: disagreement {disagreement:.2%} is above --max-disagreement"
        )
    )
    assert json.loads((tmp_path / "flips" / compare.COMPARISON_FILE).read_text())["gate"]["passed"] is False

    worse = _compare(
        *common,
        "--output",
        str(tmp_path / "worse"),
        "--min-accuracy-delta",
        f"{comparison.accuracy['delta'] + 0.01:.4f}",
    )
    assert worse.returncode == compare.FAILS_GATE
    assert "fails the gate: accuracy delta" in worse.stderr


def test_a_label_the_server_does_not_know_fails_the_job_before_it_starts(images, server, tmp_path):
    failed = _compare(
        "--input",
        str(images),
        "--output",
        str(tmp_path),
        "--server",
        server,
        "--baseline",
        "stable",
        "--candidate",
        "nightly",
    )
    assert failed.returncode == 1
    assert failed.stderr.strip() == (
        f"fmnist compare: error: the server at {server} cannot answer the candidate, label 'nightly' of "
        f"'{names.MODEL_NAME}': INVALID_ARGUMENT: Unrecognized servable version label: nightly"
    )
    assert not list(tmp_path.iterdir())


def test_an_earlier_comparison_in_the_output_is_refused_unless_overwriting(compared, images, server, tmp_path):
    output = tmp_path / "out"
    shutil.copytree(compared[0], output)
    (output / "mine.txt").write_text("not the job's")
    argv = ["--input", str(images), "--output", str(output), "--server", server, "--baseline", "1", "--candidate", "1"]
    refused = _compare(*argv)
    assert refused.returncode == 2 and "holds another run's results" in refused.stderr
    result = compare.run([*argv, "--overwrite"])
    assert result.comparison.agreement == 1.0 and not _disagreements(output)  # a version agrees with itself
    assert (output / "mine.txt").exists()


@needs_chromium
def test_the_report_shows_the_comparisons_numbers_and_every_disagreement(browser, compared, tmp_path):
    from selenium.webdriver.common.by import By

    output, _ = compared
    comparison = json.loads((output / compare.COMPARISON_FILE).read_text())
    browser.get((output / report.REPORT_FILE).as_uri())
    shown = images_on_page(browser)
    assert shown and all(shown.values()), shown
    table = facts(browser, "comparison")
    assert (table["Files"], table["Compared"], table["Errors"]) == tuple(
        f"{comparison[k]:,}" for k in ("files", "compared", "errors")
    )
    assert table["Agreement"].startswith(f"{comparison['agreement']:.2%}")
    assert table["Baseline"] == f"label 'stable' → {names.MODEL_NAME} v1 ({comparison['compared']:,} files)"
    assert table["Candidate"] == f"label 'canary' → {names.MODEL_NAME} v2 ({comparison['compared']:,} files)"
    assert table["Accuracy delta"].startswith(f"{comparison['accuracy']['delta']:+.2%}")
    assert table_rows(browser, "Flips") == [
        [f["baseline"], f["candidate"], f"{f['files']:,}"] for f in comparison["flips"]
    ]
    cards = browser.find_elements(By.CSS_SELECTOR, "#disagreements .card")
    assert len(cards) == min(len(_disagreements(output)), GALLERY_SIZE)
    screenshot(browser, tmp_path / "compare_report.png")


class _LosesTheServer:
    """A client answering the launcher's two probes (one per version), then UNAVAILABLE: the server is lost once
    the job has started. Its class holds the calls: the workers of this process make clients of their own."""

    calls: list[int] = []

    def __init__(self, target, **settings):
        self.target = target

    def wait_until_available(self, timeout, grace=None):
        return 1

    def predict_encoded(self, encoded, version=None, version_label=None):
        _LosesTheServer.calls.append(len(encoded))
        if len(_LosesTheServer.calls) > 2:
            raise serving_errors.Unavailable("failed to connect", target=self.target)
        return Prediction(np.full((1, 10), 0.1, np.float32), np.zeros(1, np.int64), ["T-shirt/top"], "m", 1)

    def close(self):
        pass


def test_a_server_lost_mid_comparison_is_its_type_and_says_to_run_again_with_overwrite(images, tmp_path):
    _LosesTheServer.calls.clear()
    argv = ["--input", str(images), "--output", str(tmp_path), "--server", "h:1", "--baseline", "1", "--candidate", "2"]
    with pytest.raises(ServerLost, match="then run the job again with --overwrite$") as raised:
        compare.run(argv, client_factory=_LosesTheServer)
    assert type(raised.value.error) is serving_errors.Unavailable and raised.value.error.target == "h:1"
    assert str(raised.value).startswith("lost the server: h:1: UNAVAILABLE: failed to connect;")
    assert not (tmp_path / "_SUCCESS").exists()
