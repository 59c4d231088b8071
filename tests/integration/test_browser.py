"""The leaderboard as a researcher sees it: the MLflow UI of a real ``mlflow server`` and the
static HTML report, both opened in headless Chromium (Debian's chromium + chromedriver): the
report's intervals read from its cells, a row's link followed into the MLflow UI, the McNemar
matrix of the best rows. ``test_readme_screenshot_of_the_demo_report`` rewrites the README's
picture of the report (``docs/report.png``) when asked to (see its docstring)."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dashboards.leaderboard import compare_rows, load, row_names
from dashboards.report import render
from tests.boards import ROWS, write_board
from tests.integration.cluster import MlflowServer

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT_VIEWPORT = (1280, 1350)  # the window of the README's docs/report.png
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


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The test board (tests.boards) in a sqlite store, served by a real ``mlflow server``."""
    root = tmp_path_factory.mktemp("served")
    uri = write_board(root)
    server = MlflowServer(root)
    server.start()
    yield uri, server
    server.stop()


def test_mlflow_ui_shows_the_leaderboard_runs_and_metrics(browser, served, tmp_path):
    uri, server = served
    experiment = MlflowClient(uri).get_experiment_by_name("leaderboard").experiment_id
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


INTERVAL = re.compile(r"^(\d+\.\d) \[(\d+\.\d), (\d+\.\d)\]$")


def open_report(browser, index: Path, size: tuple[int, int] = (1280, 1000)) -> None:
    browser.set_window_size(*size)
    browser.get(index.as_uri())
    wait_until(lambda: browser.execute_script("return document.readyState") == "complete")


def row_element(browser, name: str):
    """The leaderboard table's row named ``name``."""
    rows = browser.find_elements("xpath", f"//table[contains(@class, 'leaderboard')]//tr"
                                          f"[td[@class='name' and text()='{name}']]")
    assert len(rows) == 1, f"{len(rows)} rows named {name!r}"
    return rows[0]


def test_report_shows_intervals_run_links_and_the_mcnemar_matrix(browser, served, tmp_path):
    uri, server = served
    index = render(uri, tmp_path / "report", mlflow_ui=server.uri)
    open_report(browser, index)
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, "
        "i.naturalWidth])")
    assert len(images) >= 6
    for source, complete, width in images:
        assert complete and width > 0, f"{source} did not load"
    # the table scrolls on its own: the page itself never gets wider than the window
    assert browser.execute_script("return document.documentElement.scrollWidth <= "
                                  "document.documentElement.clientWidth")
    wrapper = browser.find_element("xpath", "//table[contains(@class, 'leaderboard')]/..")
    assert wrapper.value_of_css_property("overflow-x") == "auto"

    frame = load(uri)
    names = row_names(frame)
    emr = frame[frame["run_id"].map(names) == "EMR λ=0.5"].iloc[0]
    row = row_element(browser, "EMR λ=0.5")
    # an interval read from a cell, as shown: AutoAttack 34/50 with its Wilson interval
    cell = row.find_element("css selector", "td.acc[data-column='autoattack']").text
    value, low, high = map(float, INTERVAL.match(cell).groups())
    assert (value, low, high) == (68.0, round(100 * emr["autoattack_ci_low"], 1),
                                  round(100 * emr["autoattack_ci_high"], 1)) == (68.0, 54.2, 79.2)

    # the McNemar matrix of the five best trusted rows, significant cells marked
    top = [names[r] for r in frame[~frame["flagged"]]["run_id"][:5]]
    matrix = browser.find_element("css selector", "table.mcnemar")
    assert [h.text for h in matrix.find_elements("css selector", "thead th.name")] == top
    body = matrix.find_elements("css selector", "tbody tr")
    assert [r.find_element("css selector", "th").text for r in body] == top
    smd = frame[frame["run_id"].map(names) == "SMD"].iloc[0]
    expected = compare_rows(uri, emr["run_id"], smd["run_id"], attack="autoattack")
    cell = body[0].find_elements("css selector", "td")[top.index("SMD")]
    assert cell.get_attribute("class") == "significant" and expected.significant()
    assert cell.text.split("\n") == [f"{100 * expected.difference:+.1f} ★",
                                     f"p = {expected.p_value:.2g}"] == ["+18.0 ★", "p = 0.0039"]
    runner_up = body[0].find_elements("css selector", "td")[1]
    assert runner_up.get_attribute("class") == "not-significant"
    assert "p = 0.12" in runner_up.text and "★" not in runner_up.text
    browser.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the row's link, followed: the MLflow UI opens on that row's run in the leaderboard
    experiment = MlflowClient(uri).get_experiment_by_name("leaderboard").experiment_id
    link = row.find_element("css selector", "a.mlflow-run")
    href = link.get_attribute("href")
    found = re.fullmatch(rf"{re.escape(server.uri)}/#/experiments/(\w+)/runs/(\w+)", href)
    assert found and found.groups() == (experiment, emr["run_id"]), href
    link.click()
    wait_until(lambda: browser.current_url == href, what="the run's page")
    run_name = MlflowClient(uri).get_run(emr["run_id"]).info.run_name
    wait_until(lambda: run_name in browser.page_source and emr["run_id"] in browser.page_source,
               what=f"the MLflow UI page of run {run_name}")


def test_readme_screenshot_of_the_report(browser, tmp_path, monkeypatch):
    """The README's picture of the report (``docs/report.png``): a fixed viewport
    (:data:`SCREENSHOT_VIEWPORT`), the page no wider than the window, stored with a palette of
    256 colours under 300 KB.

    Every run renders the test board into a temporary picture; the repository's picture is
    rewritten from the demo's store only when asked, after ``bash scripts/demo.sh``::

        ROBUST_SWEEPS_README_SCREENSHOT=1 .venv/bin/python -m pytest -p no:cacheprovider \\
            tests/integration/test_browser.py -k readme_screenshot

    (``=1`` reads the demo's folder, ``demo-results/``; ``=PATH`` the folder of a demo run with
    ``sweeps/demo.py --home PATH``.)
    """
    from PIL import Image

    wanted = os.environ.get("ROBUST_SWEEPS_README_SCREENSHOT")
    if wanted:
        home = ROOT / "demo-results" if wanted == "1" else Path(wanted).resolve()
        assert (home / "mlflow.db").is_file(), f"no demo store in {home}: run the demo first"
        monkeypatch.chdir(home.parent)  # the page names the store relative to the demo folder
        uri, target = f"sqlite:///{home.name}/mlflow.db", ROOT / "docs" / "report.png"
    else:
        (tmp_path / "board").mkdir()
        uri, target = write_board(tmp_path / "board"), tmp_path / "readme" / "report.png"
    index = render(uri, tmp_path / "report",
                   title="Demo leaderboard: PGD-AT, TRADES and EMR on MNIST")
    open_report(browser, index, SCREENSHOT_VIEWPORT)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= \
        browser.execute_script("return window.innerWidth")
    browser.save_screenshot(str(tmp_path / "report.png"))
    target.parent.mkdir(exist_ok=True, parents=True)
    Image.open(tmp_path / "report.png").convert("RGB").quantize(256).save(target, optimize=True)
    with Image.open(target) as saved:
        assert saved.size[0] == browser.execute_script("return window.innerWidth")
    assert target.stat().st_size < 300_000
