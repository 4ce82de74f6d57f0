"""What a batch job wrote, read back for the tests: rows of every shard whatever the format, keyed by path.

Usage: ``from batch_outputs import assert_same_outputs, by_path, read_rows``
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

# ood scores of one image in batches of other shapes: the pixel half is a sum of squares of whitened pixels in
# float32, which rounds at about 1e-4 of its size
SCORE_TOLERANCE = {"rel": 1e-3, "abs": 1e-3}


def read_rows(output: Path, name: str) -> list[dict]:
    """Rows of every ``name-*`` shard, whatever the format; CSV cells parsed back to their types."""
    rows = []
    for shard in sorted(output.glob(f"{name}-*")):
        if shard.suffix == ".parquet":
            rows += pq.read_table(shard).to_pylist()
        elif shard.suffix == ".csv":
            for row in csv.DictReader(shard.open(newline="")):
                rows.append({k: _cell(k, v) for k, v in row.items()})
        else:
            rows += [json.loads(line) for line in shard.read_text().splitlines()]
    return rows


def _cell(column: str, text: str) -> object:
    """A CSV cell as the JSON record holds it: numbers, top_k and booleans are JSON there, null an empty cell."""
    if column in ("ood_score", "unfamiliar"):
        return json.loads(text) if text else None
    return json.loads(text) if column in ("class_id", "confidence", "top_k", "model_version") else text


def by_path(rows: list[dict]) -> dict[str, dict]:
    keyed = {row["path"]: row for row in rows}
    assert len(keyed) == len(rows), "a file was written twice"
    return keyed


def assert_same_outputs(one: Path, other: Path) -> None:
    """Same files, classes, versions, unfamiliar flags and error reasons; probabilities and ood scores equal up
    to float32 rounding.

    Batches are composed differently by different runs, and the CPU kernels
    round differently by batch shape, so bit equality would be luck.
    """
    first, second = by_path(read_rows(one, "predictions")), by_path(read_rows(other, "predictions"))
    assert first.keys() == second.keys()
    for path, record in first.items():
        twin = second[path]
        for key in ("class_id", "class_name", "model_name", "model_version", "unfamiliar"):
            assert twin[key] == record[key], (path, key)
        if record["ood_score"] is None:  # a version without the trust outputs
            assert twin["ood_score"] is None, path
        else:
            assert twin["ood_score"] == pytest.approx(record["ood_score"], **SCORE_TOLERANCE), path
        assert [t["class_id"] for t in twin["top_k"]] == [t["class_id"] for t in record["top_k"]]
        got, want = [t["probability"] for t in twin["top_k"]], [t["probability"] for t in record["top_k"]]
        assert got == pytest.approx(want, abs=1e-5)
    reasons = [{p: r["reason"] for p, r in by_path(read_rows(out, "errors")).items()} for out in (one, other)]
    assert reasons[0] == reasons[1]
