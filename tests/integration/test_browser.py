"""The leaderboard as a researcher sees it: the MLflow UI of a real ``mlflow server`` and the
static HTML report, both opened in headless Chromium (Debian's chromium + chromedriver)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dashboards.report import render
from tests.boards import ROWS, write_board
from tests.integration.cluster import MlflowServer

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1600,1000"]


@pytest.fixture()
def browser(tmp_path):
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        message = ("Debian's chromium and chromium-driver are not installed "
                   "(apt-get install chromium chromium-driver)")
        if os.environ.get("ROBUST_SWEEPS_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def wait_until(condition, timeout_s: float = 90.0, what: str = "the page"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}")


METRICS = ("autoattack_accuracy", "clean_accuracy", "worst_case_accuracy")


def show_columns(browser, names) -> None:
    """Tick metric columns in the runs table's column selector (hidden by default)."""
    from selenium.webdriver.common.keys import Keys

    opener = wait_until(lambda: browser.find_elements(
        "xpath", "//*[contains(text(), 'Show more columns')]"), what="the column selector")
    browser.execute_script("arguments[0].click()", opener[0])
    search = wait_until(lambda: browser.find_elements(
        "css selector", "input[placeholder='Search columns']"), what="the column search")[0]
    for name in names:
        search.send_keys(Keys.CONTROL, "a")
        search.send_keys(name)
        option = wait_until(lambda n=name: browser.find_elements(
            "xpath", f"//*[text()='{n}']"), what=f"the {name} option")
        browser.execute_script("arguments[0].click()", option[0])
    search.send_keys(Keys.ESCAPE)


def test_mlflow_ui_shows_the_leaderboard_runs_and_metrics(browser, tmp_path):
    uri = write_board(tmp_path)
    experiment = MlflowClient(uri).get_experiment_by_name("leaderboard").experiment_id
    server = MlflowServer(tmp_path)
    server.start()
    try:
        browser.set_window_size(2600, 1000)
        browser.get(f"{server.uri}/#/experiments/{experiment}/runs")
        names = [f"{defense}-trial{i}" for i, (defense, *_) in enumerate(ROWS)]
        wait_until(lambda: all(name in browser.page_source for name in names),
                   what="the leaderboard runs")
        show_columns(browser, METRICS)

        def headers():
            return [e.text for e in browser.find_elements("css selector", ".ag-header-cell")]

        wait_until(lambda: all(any(m in h for h in headers()) for m in METRICS),
                   what="the metric column headers")
        grid = browser.find_element("css selector", ".ag-center-cols-container").text
        # EMR's row (tests.boards): AutoAttack 34/50, clean 45/50
        assert "0.68" in grid and "0.9" in grid
        browser.save_screenshot(str(tmp_path / "mlflow_leaderboard.png"))
        assert (tmp_path / "mlflow_leaderboard.png").stat().st_size > 10_000
    finally:
        server.stop()


def test_report_opens_from_disk_with_every_image_loaded(browser, tmp_path):
    uri = write_board(tmp_path)
    index = render(uri, tmp_path / "report")
    browser.get(index.as_uri())
    wait_until(lambda: browser.execute_script("return document.readyState") == "complete")
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, "
        "i.naturalWidth])")
    assert len(images) >= 5
    for source, complete, width in images:
        assert complete and width > 0, f"{source} did not load"
    assert "emr" in browser.find_element("css selector", "table.leaderboard").text
    browser.save_screenshot(str(tmp_path / "report.png"))
