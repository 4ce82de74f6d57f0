"""``fmnist images``: labelled PNG folders from the dataset."""

from __future__ import annotations

import numpy as np
from PIL import Image

from fmnist import cli
from fmnist.common import names


def test_images_command_writes_one_folder_per_class(tmp_path, dataset):
    assert cli.main(["images", "--split", "test", "--count", "30", "--out", str(tmp_path)]) == 0
    files = sorted(tmp_path.rglob("*.png"))
    assert len(files) == 30
    assert {p.parent.name for p in files} <= {names.folder_name(i) for i in range(names.NUM_CLASSES)}
    for path in files:
        index = int(path.stem.rsplit("_", 1)[1])
        assert names.class_id_from_folder(path.parent.name) == dataset.test.labels[index]
        np.testing.assert_array_equal(np.asarray(Image.open(path)), dataset.test.images[index])


def test_cli_help_and_unknown_command(capsys):
    assert cli.main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert cli.main(["nope"]) == 2
