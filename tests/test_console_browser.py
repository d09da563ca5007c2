"""The console in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven through Selenium over a live service, one scenario run once.
Screenshots of each page go to ``test-screenshots/console-browser/`` at the top of the
repository (or ``$PROCPLAT_TEST_SCREENSHOTS``), for a person to look at."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import LiveServer, new_world, settings_for, start_server
from tests.test_raster_export_service import write_rgbn
from tests.test_tasks_api import big_text

SCREENSHOTS = Path(os.environ.get(
    "PROCPLAT_TEST_SCREENSHOTS",
    Path(__file__).resolve().parent.parent / "test-screenshots" / "console-browser",
))
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def live(dask_address: str, tmp_path: Path) -> Iterator[LiveServer]:
    server = start_server(settings_for(tmp_path / "data", dask_address))
    yield server
    server.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[tuple[WebDriver, Path]]:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,1100"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False,
    })
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(downloads)})
    try:
        yield driver, downloads
    finally:
        driver.quit()


class Shots:
    def __init__(self, driver: WebDriver) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for old in SCREENSHOTS.glob("*.png"):
            old.unlink()
        self.driver = driver
        self.count = 0

    def take(self, name: str) -> None:
        self.count += 1
        self.driver.save_screenshot(str(SCREENSHOTS / f"{self.count:02d}-{name}.png"))


def _text(driver: WebDriver, element_id: str) -> str:
    """The element's text, read in one script call (the task page reloads when its task
    ends, so a found element may be gone a moment later)."""
    text = driver.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.textContent : '';",
        element_id)
    return str(text).strip()


@pytest.mark.timeout(900)  # seconds on a quiet machine; a loaded one needs far more
def test_a_person_works_through_the_console_in_chromium(
    live: LiveServer, browser: tuple[WebDriver, Path], tmp_path: Path
) -> None:
    driver, downloads = browser
    wait = WebDriverWait(driver, 240, poll_frequency=0.1)
    shots = Shots(driver)
    world = new_world(live)
    world.upload("slow/big.txt", big_text(60_000_000, seed=5))
    raster = write_rgbn(tmp_path / "field.tif", 512)

    # sign in and open the dataset
    driver.get(f"{live.url}/ui/")
    driver.find_element(By.ID, "signin-link").click()
    driver.find_element(By.ID, "token").send_keys(world.token)
    shots.take("signin")
    driver.find_element(By.ID, "signin").click()
    wait.until(lambda d: _text(d, "signed-in-as") == world.username)
    shots.take("datasets")
    driver.find_element(By.LINK_TEXT, world.ds).click()
    wait.until(lambda d: world.org in d.title)

    # upload a GeoTIFF from the browser
    driver.find_element(By.ID, "upload-file").send_keys(str(raster))
    driver.find_element(By.ID, "upload").click()
    wait.until(lambda d: "uploaded field.tif" in _text(d, "message"))
    shots.take("dataset-after-upload")
    driver.find_element(By.LINK_TEXT, "field.tif").click()
    wait.until(lambda d: d.execute_script(
        "const i = document.getElementById('file-thumb'); return i && i.complete && i.naturalWidth"))
    shots.take("file-with-thumbnail")
    driver.back()

    # a bad parameter: the message is beside its field
    driver.find_element(By.ID, "run-raster-export").click()
    driver.find_element(By.ID, "field-path").send_keys("field.tif")
    driver.find_element(By.ID, "field-bandFilter").send_keys("R G!")
    driver.find_element(By.ID, "submit").click()
    beside = wait.until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, ".field.invalid #error-bandFilter")))
    assert "not valid" in beside.text
    shots.take("form-error-beside-field")

    # submit, watch progress reach 100% and the log grow
    driver.find_element(By.ID, "field-bandFilter").clear()
    driver.find_element(By.ID, "field-bands").send_keys("1,2,3")
    driver.find_element(By.ID, "submit").click()
    wait.until(ec.presence_of_element_located((By.ID, "task-state")))
    log_sizes = {len(_text(driver, "task-log").splitlines())}
    shots.take("task-running")
    deadline = time.monotonic() + 600
    while (state := _text(driver, "task-state")) not in ("Succeeded", "Failed"):
        log_sizes.add(len(_text(driver, "task-log").splitlines()))
        assert time.monotonic() < deadline, "the task did not end"
        time.sleep(0.1)
    assert state == "Succeeded"
    wait.until(lambda d: _text(d, "task-percent") == "100%")
    wait.until(lambda d: d.find_element(By.ID, "task-progress").get_attribute("value") == "100")
    wait.until(ec.presence_of_element_located((By.ID, "artifact-download")))  # reloaded
    final_lines = len(_text(driver, "task-log").splitlines())
    assert final_lines >= 2 and final_lines > min(log_sizes)  # the log grew while watched
    wait.until(lambda d: d.execute_script(
        "const i = document.getElementById('task-thumb'); return i && i.complete && i.naturalWidth"))
    shots.take("task-succeeded-with-thumbnail")

    # download the artifact and check its sha256
    sha256 = _text(driver, "artifact-sha256")
    name = _text(driver, "artifact-name")
    driver.find_element(By.ID, "artifact-download").click()
    target = downloads / name
    wait.until(lambda _d: target.is_file() and not list(downloads.glob("*.crdownload")))
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha256

    # cancel a long task and see it stop
    driver.find_element(By.ID, "tasks-link").click()
    shots.take("task-list")
    driver.find_element(By.ID, "dataset-link").click()
    driver.find_element(By.ID, "run-bulk-download").click()
    driver.find_element(By.ID, "field-paths").send_keys("slow")
    driver.find_element(By.ID, "submit").click()
    driver.find_element(By.ID, "task-cancel").click()
    wait.until(lambda d: _text(d, "message") == "cancelled")
    wait.until(lambda d: _text(d, "task-state") == "Deleted")
    shots.take("task-cancelled")
    assert shots.count >= 8
