"""``fmnist demo`` end to end, small: every artifact it promises, and the version swap."""

from __future__ import annotations

import json

import pytest

from fmnist import cli
from fmnist.batch import summary as batch_summary
from fmnist.common import names
from fmnist.pipeline import exporter, plots


@pytest.mark.slow
def test_demo_trains_serves_batches_and_swaps_versions(tmp_path, capsys):
    workdir = tmp_path / "demo"
    code = cli.main(
        [
            "demo",
            "--workdir",
            str(workdir),
            "--epochs",
            "1",
            "--limit",
            "3000",
            "--count",
            "60",
            "--min-accuracy",
            "0.5",
            "--max-regression",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out

    model_base = workdir / "models" / names.MODEL_NAME
    assert sorted(p.name for p in model_base.iterdir()) == ["1", "2"]
    for version in ("1", "2"):
        extra = model_base / version / names.ASSETS_EXTRA
        for name in (names.WARMUP_FILE, names.CONFIG_FILE, names.METRICS_FILE, *exporter.PLOTS):
            assert (extra / name).is_file(), f"{version}/{name}"
    for plot in exporter.PLOTS:
        assert (workdir / "run-1" / plot).is_file(), plot
    assert (workdir / "run-1" / exporter.DIAGRAM).is_file() == plots.can_draw_diagrams()

    samples = list((workdir / "samples").rglob("*.png"))
    assert len(samples) == 61  # 60 images and the deliberately truncated one
    output = workdir / "batch-output"
    summary = json.loads((output / batch_summary.SUMMARY_FILE).read_text())
    assert summary["inputs"] == 61 and summary["classified"] == 60 and summary["errors"] == 1
    assert summary["evaluation"]["accuracy"] > 0.5
    evaluation = summary["evaluation"]
    assert f"on the {evaluation['files']} labelled files not flagged unfamiliar" in out
    assert evaluation["files"] + evaluation["unfamiliar_files"] == 60
    assert (output / batch_summary.CONFUSION_FILE).is_file()
    assert (output / "_SUCCESS").is_file()
    records = [json.loads(line) for path in output.glob("predictions*") for line in path.read_text().splitlines()]
    errors = [json.loads(line) for path in output.glob("errors*") for line in path.read_text().splitlines()]
    assert len(records) == 60 and len(errors) == 1 and errors[0]["path"].endswith("truncated.png")
    assert {r["model_version"] for r in records} == {1}

    assert "a request now answers from version 2" in out
    assert "2: 'AVAILABLE'" in out and "1: 'END'" in out
