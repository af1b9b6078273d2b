"""The report in a real headless browser (Debian's chromium + chromedriver, driven by selenium)."""

from __future__ import annotations

import shutil

import pytest

from mixerlab.report import SweepReport
from tests.report_data import JOBS, make_sweep

pytestmark = pytest.mark.browser

CHROMEDRIVER = "/usr/bin/chromedriver"
# Root in a container: no sandbox; and nothing that reaches out (updates, sync, first-run pages).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--window-size=1400,2000")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not shutil.which("chromium") or not shutil.which(CHROMEDRIVER):
        pytest.fail("needs Debian's chromium and chromedriver: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))  # no selenium-manager download
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _column(driver, title: str) -> list[str]:
    from selenium.webdriver.common.by import By

    heads = [th.text.rstrip(" ▲▼") for th in driver.find_elements(By.CSS_SELECTOR, "#runs thead th")]
    col = heads.index(title) + 1
    return [td.text for td in driver.find_elements(By.CSS_SELECTOR, f"#runs tbody tr td:nth-child({col})")]


def test_report_loads_sorts_and_draws_its_plots_in_chromium(browser, tmp_path):
    from selenium.webdriver.common.by import By

    html_path, _ = SweepReport([make_sweep(tmp_path)]).write()
    browser.get(html_path.as_uri())

    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], errors
    assert len(browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")) == len(JOBS)

    initial = _column(browser, "top-1 %")
    header = browser.find_element(By.XPATH, "//table[@id='runs']//th[button[normalize-space()='top-1 %']]")
    header.find_element(By.TAG_NAME, "button").click()
    ascending = _column(browser, "top-1 %")
    assert ascending == ["91.00", "92.50", "93.00", "95.00", "—", "—"]  # empty cells last
    assert ascending != initial and header.get_attribute("aria-sort") == "ascending"
    header.find_element(By.TAG_NAME, "button").click()
    descending = _column(browser, "top-1 %")
    assert descending[:4] == ["95.00", "93.00", "92.50", "91.00"] and descending[4:] == ["—", "—"]

    plots = browser.find_elements(By.CSS_SELECTOR, "figure svg")
    assert len(plots) == 4  # the interval plot, two scatters, the curves
    for svg in plots:
        size = svg.size
        assert size["width"] > 100 and size["height"] > 100, size
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
