"""Commands of the README that a test can run as written."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from fmnist.common import names
from fmnist.common.client import PredictionClient
from fmnist.serving.server import ServerConfig, start

ROOT = Path(__file__).resolve().parents[1]


def test_the_local_model_config_the_readme_writes_serves_the_pushed_model(_pushed_once, tmp_path):
    readme = (ROOT / "README.md").read_text()
    sed = next(line.split("#")[0].strip() for line in readme.splitlines() if line.startswith('sed "s|/models/|'))
    shutil.copytree(_pushed_once, tmp_path / "models")
    (tmp_path / "serving").mkdir()
    shutil.copy(ROOT / "serving" / "models.config", tmp_path / "serving")
    subprocess.run(["bash", "-c", sed], cwd=tmp_path, check=True)  # as a user runs it, in the project folder
    local = (tmp_path / "models.local.config").read_text()
    assert re.search(rf'base_path: "{tmp_path}/models/{names.MODEL_NAME}"', local)
    server = start(ServerConfig(port=0, model_config_file=str(tmp_path / "models.local.config")))
    try:
        with PredictionClient(f"127.0.0.1:{server.port}") as client:
            assert client.wait_until_available(timeout=30) == 1
    finally:
        server.stop()
