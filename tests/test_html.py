"""The HTML pages a person opens, in a real browser: Debian's headless Chromium, driven by Selenium.

Each test checks that every image on the page loaded and that the numbers
shown are the ones in the JSON beside the page, and saves a screenshot under
its temp dir.
"""

from __future__ import annotations

import json

from browser import (
    browser,  # noqa: F401  (a fixture, found by its name)
    facts,
    images_on_page,
    needs_chromium,
    screenshot,
    table_rows,
)

from fmnist.batch import job, report
from fmnist.common import names
from fmnist.pipeline import evaluator, exporter, model_card, trainer

pytestmark = needs_chromium


def test_the_model_card_shows_its_figures_and_the_versions_own_numbers(browser, tmp_path, dataset):
    config = exporter.ExporterConfig(
        models_dir=str(tmp_path / "models"),
        run_dir=str(tmp_path / "run"),
        train=trainer.TrainConfig(epochs=1, limit=2000, verbose=0),
        eval=evaluator.EvalConfig(min_accuracy=0.5),
    )
    result = exporter.run(config, load_data=lambda data_dir=None: dataset, clock=lambda: 7)
    extra = result.version_dir / names.ASSETS_EXTRA
    metrics = json.loads((extra / names.METRICS_FILE).read_text())

    browser.get((extra / model_card.HTML_FILE).as_uri())
    assert browser.title == f"Model card: {names.MODEL_NAME} version 7"
    images = images_on_page(browser)
    assert set(images) == {p.name for p in extra.glob("*.png")} and all(images.values()), images
    rows = {row[0]: row[1:] for row in table_rows(browser, "Performance on held-out data")}
    for name, m in metrics["per_class"].items():
        assert rows[name] == [f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['support']:,}"], name
    assert rows["all classes: accuracy"][0] == f"{metrics['accuracy']:.4f}"
    signatures = {row[0] for row in table_rows(browser, "Signatures (from saved_model.pb)")}
    assert signatures == set(names.SIGNATURES)
    screenshot(browser, tmp_path / "model_card.png")


def test_the_batch_report_shows_the_summarys_numbers_and_every_image(browser, tmp_path, models_dir, dataset):
    from conftest import encode_png

    images = tmp_path / "images"
    for i in range(40):
        folder = images / names.folder_name(int(dataset.test.labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.png").write_bytes(encode_png(dataset.test.images[i]))
    (images / "notes.txt").write_text("not an image")
    output = tmp_path / "out"
    result = job.run(
        [
            "--input",
            str(images),
            "--output",
            str(output),
            "--in-process",
            str(models_dir / names.MODEL_NAME),
            "--batch-size",
            "8",
        ]
    )
    summary = json.loads((output / "summary.json").read_text())

    browser.get((output / report.REPORT_FILE).as_uri())
    images_shown = images_on_page(browser)
    assert images_shown and all(images_shown.values()), images_shown
    from selenium.webdriver.common.by import By

    shown = facts(browser, "summary")
    assert shown["Files"] == f"{summary['inputs']:,}" and shown["Errors"] == f"{summary['errors']:,}"
    assert shown["Accuracy"].startswith(f"{summary['evaluation']['accuracy']:.2%}")
    per_class = {
        cells[0].text: [c.text for c in cells[1:]]
        for cells in (
            row.find_elements(By.TAG_NAME, "td") for row in browser.find_elements(By.CSS_SELECTOR, "#per-class tr")
        )
        if cells
    }
    for name, predicted in summary["counts_per_class"].items():
        assert per_class[name][:2] == [f"{predicted:,}", f"{summary['evaluation']['labelled_per_class'][name]:,}"]
    # the galleries: the least sure files, and every mistake up to the gallery's size
    least_sure = browser.find_elements(By.CSS_SELECTOR, "#least_sure .card")
    assert len(least_sure) == report.GALLERY_SIZE
    mistakes = summary["evaluation"]["files"] - round(
        summary["evaluation"]["accuracy"] * summary["evaluation"]["files"]
    )
    assert len(browser.find_elements(By.CSS_SELECTOR, "#surest_mistakes .card")) == min(mistakes, report.GALLERY_SIZE)
    assert result.summary.inputs == 41
    screenshot(browser, tmp_path / "batch_report.png")
