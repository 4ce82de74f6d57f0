"""Pages in a real browser, shared by the tests that open HTML: Debian's headless Chromium, driven by Selenium.

Usage: ``from browser import browser, images_on_page, needs_chromium, screenshot`` (``browser`` is a module-scoped
fixture; mark the test module ``pytestmark = needs_chromium``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian's chromium and chromium-driver are not installed; .ci/run installs them",
)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for a driver online: it is given one
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,2400",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def images_on_page(browser) -> dict[str, bool]:
    """src → loaded, for every <img> of the page."""
    return dict(
        browser.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"
        )
    )


def table_rows(browser, heading: str) -> list[list[str]]:
    """The cells of each body row of the table right after the <h2> ``heading``."""
    from selenium.webdriver.common.by import By

    table = browser.find_element(By.XPATH, f"//h2[text()='{heading}']/following-sibling::table[1]")
    return [
        [cell.text for cell in row.find_elements(By.XPATH, "./td")]
        for row in table.find_elements(By.TAG_NAME, "tr")[1:]
    ]


def facts(browser, table_id: str) -> dict[str, str]:
    """A two-column table (th, td per row) as a dict."""
    from selenium.webdriver.common.by import By

    return {
        row.find_element(By.TAG_NAME, "th").text: row.find_element(By.TAG_NAME, "td").text
        for row in browser.find_elements(By.CSS_SELECTOR, f"#{table_id} tr")
    }


def screenshot(browser, path: Path) -> None:
    """Saved under the test's temp dir, and under $FMNIST_SCREENSHOTS too when set (to look at them)."""
    assert browser.save_screenshot(str(path))
    if os.environ.get("FMNIST_SCREENSHOTS"):
        Path(os.environ["FMNIST_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["FMNIST_SCREENSHOTS"]) / path.name)
