"""``fmnist classify`` and the client with a version that serves the trust outputs (docs/trust.md).

A real embedded server serves the session's calibrated model (``_trusted_once``); the files are committed
out-of-distribution PNGs (tests/data/ood) and real Fashion-MNIST test images. What classify prints is checked
against the SavedModel's own ``predict_images``, called directly on the same bytes. The session's
uncalibrated model (``_pushed_once``, as an older export) shows that a version without the outputs answers
as before. (classify's other behaviour: tests/common/test_client.py.)
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import encode_png

from fmnist.common import names
from fmnist.common.client import PredictionClient
from fmnist.serving import classify

OOD_DIR = Path(__file__).resolve().parents[1] / "data" / "ood"


@pytest.fixture(scope="module")
def files(tmp_path_factory, dataset, trusted_base) -> dict[str, tuple[float, bool]]:
    """Four noise and four photo PNGs and eight garments → (ood score, unfamiliar) from the SavedModel."""
    folder = tmp_path_factory.mktemp("classify-files")
    paths = []
    for kind in ("noise", "photo"):
        for source in sorted(OOD_DIR.glob(f"{kind}_*.png"))[:4]:
            paths.append(folder / source.name)
            shutil.copyfile(source, paths[-1])
    for i in range(8):
        paths.append(folder / f"garment_{i}.png")
        paths[-1].write_bytes(encode_png(dataset.test.images[i]))
    signature = tf.saved_model.load(str(trusted_base / "1")).signatures[names.PREDICT_IMAGES]
    outputs = signature(**{names.INPUT_IMAGE_BYTES: tf.constant([p.read_bytes() for p in paths])})
    scores, flags = outputs[names.OUTPUT_OOD_SCORES].numpy(), outputs[names.OUTPUT_UNFAMILIAR].numpy()
    return {str(p): (float(s), bool(f)) for p, s, f in zip(paths, scores, flags, strict=True)}


def test_the_clients_prediction_carries_each_files_score_and_flag(trusted_server, files, server):
    with PredictionClient(trusted_server) as client:
        prediction = client.predict_encoded([Path(p).read_bytes() for p in files])
    assert prediction.ood_scores.dtype == np.float32 and prediction.unfamiliar.dtype == np.bool_
    np.testing.assert_allclose(prediction.ood_scores, [s for s, _ in files.values()], rtol=1e-3, atol=1e-3)
    assert prediction.unfamiliar.tolist() == [f for _, f in files.values()]
    with PredictionClient(server) as client:  # an older export: no such outputs, and None for both
        older = client.predict_encoded([Path(p).read_bytes() for p in files])
    assert older.ood_scores is None and older.unfamiliar is None and len(older) == len(files)


def test_classify_warns_once_per_unfamiliar_file_naming_it_and_its_score(trusted_server, files, capsys):
    assert classify.main([*files, "--server", trusted_server, "--batch-size", "5"], prog="fmnist classify") == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == len(files)  # every file still gets its answer
    warnings = captured.err.splitlines()
    flagged = [path for path, (_, flag) in files.items() if flag]
    assert all(files[p][1] for p in files if Path(p).name.startswith(("noise", "photo"))), files
    assert len(flagged) < len(files), "some garment should pass, or this test proves little"
    assert len(warnings) == len(flagged)
    for line, path in zip(warnings, flagged, strict=True):
        shown = re.fullmatch(
            f"fmnist classify: warning: {re.escape(path)} is unlike the images the model was trained on "
            r"\(ood_score (-?\d+\.\d\d), above its threshold\): its class is a guess",
            line,
        )
        assert shown, line
        assert float(shown[1]) == pytest.approx(files[path][0], abs=0.006)  # to 2 places, from another batch


def test_classify_json_records_carry_the_score_and_flag(trusted_server, files, server, capsys):
    assert classify.main([*files, "--server", trusted_server, "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in records] == list(files)
    for record in records:
        score, flag = files[record["path"]]
        assert record["ood_score"] == pytest.approx(score, rel=1e-3, abs=1e-3) and record["unfamiliar"] is flag

    assert classify.main([*files, "--server", server, "--json"]) == 0  # an older export: null, and no warning
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert len(records) == len(files) and all(r["ood_score"] is None and r["unfamiliar"] is None for r in records)
    assert captured.err == ""
