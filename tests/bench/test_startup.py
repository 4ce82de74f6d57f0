"""bench/startup.py against the fmnist.* layout: each tree runs its own code; an older baseline is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BEFORE_LAYOUT = "48bd590"  # the script's old default baseline: serving.*, pipeline.*, ... at the top

pytestmark = pytest.mark.skipif(
    subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{BEFORE_LAYOUT}^{{commit}}"]).returncode != 0,
    reason="needs the repository's git history (the baselines are commits)",
)


@pytest.fixture
def startup(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # as `python bench/startup.py` has it
    import startup

    return startup


def test_a_baseline_before_the_package_layout_is_refused_with_one_line():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "startup.py"), "--baseline", BEFORE_LAYOUT],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"startup.py: error: baseline {BEFORE_LAYOUT}: it predates the fmnist.* package layout (a462ff5): "
        "its modules are not fmnist.*"
    ]


def test_each_tree_imports_its_own_client_without_tensorflow(startup, tmp_path):
    """The default baseline and this checkout: ``import fmnist.common.client`` finds each tree's own
    (import_seconds checks the module's file), though the editable install maps fmnist.* to this checkout."""
    measured = startup.trees(startup.BEFORE, tmp_path)
    assert measured["before"].root != measured["after"].root
    for tree in measured.values():
        assert 0 < startup.import_seconds(tree) < 60
