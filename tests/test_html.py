"""The HTML pages a person opens, in a real browser: Debian's headless Chromium, driven by Selenium.

Each test checks that every image on the page loaded and that the numbers
shown are the ones in the JSON beside the page, and saves a screenshot under
its temp dir.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from fmnist import names
from pipeline import evaluator, exporter, model_card, trainer

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="Debian's chromium and chromium-driver are not installed; .ci/run installs them")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for a driver online: it is given one
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,2400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def _images(browser) -> dict[str, bool]:
    """src → loaded, for every <img> of the page."""
    return dict(browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"))


def _table_rows(browser, heading: str) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    table = browser.find_element(By.XPATH, f"//h2[text()='{heading}']/following-sibling::table[1]")
    return [[cell.text for cell in row.find_elements(By.XPATH, "./td")] for row in table.find_elements(By.TAG_NAME, "tr")[1:]]


def test_the_model_card_shows_its_figures_and_the_versions_own_numbers(browser, tmp_path, dataset):
    config = exporter.ExporterConfig(models_dir=str(tmp_path / "models"), run_dir=str(tmp_path / "run"),
                                     train=trainer.TrainConfig(epochs=1, limit=2000, verbose=0),
                                     eval=evaluator.EvalConfig(min_accuracy=0.5))
    result = exporter.run(config, load_data=lambda data_dir=None: dataset, clock=lambda: 7)
    extra = result.version_dir / names.ASSETS_EXTRA
    metrics = json.loads((extra / names.METRICS_FILE).read_text())

    browser.get((extra / model_card.HTML_FILE).as_uri())
    assert browser.title == f"Model card: {names.MODEL_NAME} version 7"
    images = _images(browser)
    assert set(images) == {p.name for p in extra.glob("*.png")} and all(images.values()), images
    rows = {row[0]: row[1:] for row in _table_rows(browser, "Performance on held-out data")}
    for name, m in metrics["per_class"].items():
        assert rows[name] == [f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['support']:,}"], name
    assert rows["all classes: accuracy"][0] == f"{metrics['accuracy']:.4f}"
    signatures = {row[0] for row in _table_rows(browser, "Signatures (from saved_model.pb)")}
    assert signatures == set(names.SIGNATURES)
    assert browser.save_screenshot(str(tmp_path / "model_card.png"))
    Path(os.environ.get("FMNIST_SCREENSHOTS", tmp_path)).mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "model_card.png", Path(os.environ.get("FMNIST_SCREENSHOTS", tmp_path)) / "model_card.png")
