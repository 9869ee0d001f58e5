"""The dashboard in a real headless Chromium, served by daphne, fed by the real pipeline processes.

Screenshots go to test-output/<test name>/ (gitignored) for a person to look at.
"""

import base64
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from harness.processes import Pipeline, log_tail, wait_until
from harness.servers import BASE_DIR, free_port, shared_admin_url, with_database
from pipeline import redis_store

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DAPHNE = Path(sys.executable).parent / "daphne"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="needs Debian chromium and chromium-driver (apt-get install chromium chromium-driver)"),
]


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Path:
    directory = BASE_DIR / "test-output" / request.node.name
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def pipeline(output_dir: Path) -> Iterator[Pipeline]:
    """The run_* commands and daphne against this test's database and Redis key prefix."""
    database_url = with_database(shared_admin_url(), settings.DATABASES["default"]["NAME"])
    with Pipeline(database_url=database_url, redis_url=settings.REDIS_URL, output_dir=output_dir,
                  env={"ALLOWED_HOSTS": "127.0.0.1,localhost"}) as running:
        collected = running.manage("collectstatic", "--noinput", "--verbosity", "0")
        assert collected.returncode == 0, collected.stderr
        yield running


class WebServer:
    """daphne serving config.asgi, on a port that stays the same across restarts."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = pipeline.output_dir / "web.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(DAPHNE), "-b", "127.0.0.1", "-p", str(self.port), "config.asgi:application"],
                cwd=BASE_DIR, env=self.pipeline.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        wait_until(self._healthy, timeout=30, message=lambda: f"daphne to answer:\n{log_tail(self.log_path)}")

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"daphne exited with {self.process.returncode}:\n{log_tail(self.log_path)}")
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


@pytest.fixture
def web(pipeline: Pipeline) -> Iterator[WebServer]:
    server = WebServer(pipeline)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def chromium(*, width: int = 1280, height: int = 900, phone: bool = False,
             before_load: str | None = None) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
                     f"--window-size={width},{height}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            driver.set_page_load_timeout(30)
            if phone:
                # The window cannot be narrower than Chromium's minimum; a phone's viewport can.
                driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                       {"width": width, "height": height, "deviceScaleFactor": 2, "mobile": True})
            if before_load:
                driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": before_load})
            yield driver
        finally:
            driver.quit()


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], timeout: float, what: str) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, f"{what} within {timeout} s")


def text(driver: WebDriver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def events_processed(driver: WebDriver) -> int:
    return int(driver.find_element("id", "events-processed").get_attribute("data-value") or 0)


def chart_points(driver: WebDriver) -> int:
    """Points with traffic on the throughput chart."""
    return int(driver.find_element("id", "throughput-chart").get_attribute("data-points") or 0)


def save_screenshot(driver: WebDriver, path: Path) -> None:
    """The whole page, not only the window."""
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.stat().st_size > 10_000


def test_it_shows_the_live_pipeline_and_notices_the_firehose_stopping(
    pipeline: Pipeline, web: WebServer, output_dir: Path
) -> None:
    pipeline.relay("--rate", "150", "--wall-clock", "--seed", "5")
    firehose = pipeline.firehose()
    pipeline.worker("dashboard-worker")

    with chromium() as driver:
        driver.get(web.url + "/")
        wait_for(driver, lambda d: text(d, "firehose-label") == "Connected", 30, "Firehose Status to say Connected")
        wait_for(driver, lambda d: d.find_element("id", "link-state").get_attribute("data-mode") == "live", 10,
                 "the websocket to be live")
        first = wait_for(driver, events_processed, 30, "Events Processed above 0")
        wait_for(driver, lambda d: events_processed(d) > first, 10, f"Events Processed to rise above {first}")
        wait_for(driver, lambda d: chart_points(d) >= 3, 10, "the throughput chart to have points")
        wait_for(driver, lambda d: "dashboard-worker" in text(d, "workers"), 10, "the worker in the workers table")
        wait_for(driver, lambda d: "app.bsky." in text(d, "records"), 15, "records by collection")
        assert float(text(driver, "events-rate").replace(",", "")) > 0
        assert text(driver, "firehose-url") == pipeline.relay_url
        # run_firehose refreshes its status every 5 s: the cursor shows at the first refresh after events.
        wait_for(driver, lambda d: text(d, "firehose-cursor") != "—", 10, "the firehose cursor")
        assert driver.title == "AppView"
        assert driver.find_element("id", "stale-banner").is_displayed() is False
        assert [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"] == []
        time.sleep(3)  # a few seconds more history on the chart for the screenshot
        save_screenshot(driver, output_dir / "dashboard.png")

        # The chart's history survives a reload (the page inlines the whole snapshot, and the websocket sends it
        # first), then grows with the updates that follow, which carry only the newest points.
        before_reload = chart_points(driver)
        driver.refresh()
        assert chart_points(driver) >= before_reload - 1
        wait_for(driver, lambda d: d.find_element("id", "link-state").get_attribute("data-mode") == "live", 10,
                 "the websocket to be live again")
        after_reload = chart_points(driver)
        wait_for(driver, lambda d: chart_points(d) >= after_reload + 3, 10, "the chart to grow with the updates")

        with chromium(width=390, height=844, phone=True) as phone:
            phone.get(web.url + "/")
            wait_for(phone, lambda d: text(d, "firehose-label") == "Connected", 15, "the phone page to be live")
            # Nothing sticks out sideways at phone width.
            assert phone.execute_script("return document.documentElement.scrollWidth") <= 390
            save_screenshot(phone, output_dir / "dashboard-phone.png")

        firehose.terminate()
        stopped_at = time.monotonic()
        wait_for(driver, lambda d: text(d, "firehose-label") == "Disconnected", 15, "Firehose Status Disconnected")
        assert time.monotonic() - stopped_at < 15
        wait_for(driver, lambda d: d.title == "⚠ Disconnected · AppView", 3, "the page title to show the trouble")
        save_screenshot(driver, output_dir / "dashboard-disconnected.png")
    pipeline.check_alive()


# Makes every websocket fail as a proxy that refuses upgrades would, before the page's own script runs.
REFUSE_WEBSOCKETS = """
window.WebSocket = class {
  constructor() { setTimeout(() => this.onclose && this.onclose({ code: 1006 }), 50); }
  close() {}
};
"""


def test_it_falls_back_to_polling_and_reconnects_by_itself(web: WebServer, output_dir: Path) -> None:
    client = redis_store.connect()
    client.hset(redis_store.cluster_metrics(), "totalEvents", 1000)

    with chromium(before_load=REFUSE_WEBSOCKETS) as polling:
        polling.get(web.url + "/")
        wait_for(polling, lambda d: d.find_element("id", "link-state").get_attribute("data-mode") == "polling", 10,
                 "the page to poll /api/metrics")
        client.hset(redis_store.cluster_metrics(), "totalEvents", 2000)
        wait_for(polling, lambda d: events_processed(d) == 2000, 6, "a polled snapshot")
        assert polling.find_element("id", "stale-banner").is_displayed() is False

    with chromium() as driver:
        driver.get(web.url + "/")
        wait_for(driver, lambda d: d.find_element("id", "link-state").get_attribute("data-mode") == "live", 10,
                 "the websocket to be live")
        web.stop()
        wait_for(driver, lambda d: d.find_element("id", "stale-banner").is_displayed(), 8, "the stale banner")
        wait_for(driver, lambda d: d.title.startswith("⚠ Stale"), 3, "the page title to say Stale")
        assert "Stale: no update for" in text(driver, "stale-banner")
        save_screenshot(driver, output_dir / "dashboard-stale.png")

        web.start()
        client.hset(redis_store.cluster_metrics(), "totalEvents", 3000)
        wait_for(driver, lambda d: d.find_element("id", "link-state").get_attribute("data-mode") == "live", 40,
                 "the websocket to reconnect")
        wait_for(driver, lambda d: events_processed(d) == 3000, 5, "fresh snapshots after the reconnect")
        wait_for(driver, lambda d: not d.find_element("id", "stale-banner").is_displayed(), 5, "the banner to go")


def test_it_shows_a_backfill_run_as_it_publishes_itself_and_notices_when_it_stops_reporting(
        web: WebServer, output_dir: Path) -> None:
    client = redis_store.connect()

    def publish(**numbers: Any) -> None:
        client.hset(redis_store.backfill_progress(), mapping={
            "state": "running", "reposDone": 300, "reposTotal": 1200, "reposFailed": 0, "reposInProgress": 8,
            "reposRemaining": 900, "records": 91000, "recordsPerSecond": 15250.4, "etaSeconds": 125,
            "updatedAt": time.time(), **numbers})

    with chromium() as driver:
        driver.get(web.url + "/")
        wait_for(driver, lambda d: text(d, "backfill-state") == "no run yet", 10, "the panel with no run yet")
        publish()
        wait_for(driver, lambda d: text(d, "backfill-repos") == "300 / 1,200", 10, "the run's repositories")
        assert (text(driver, "backfill-state"), text(driver, "backfill-in-progress"), text(driver, "backfill-records"),
                text(driver, "backfill-rate")) == ("running", "8", "91,000", "15,250")
        assert text(driver, "backfill-eta") != "—"
        assert "bad-text" not in driver.find_element("id", "backfill-failed").get_attribute("class")
        bar = driver.find_element("id", "backfill-bar")
        track = bar.find_element("xpath", "..")
        assert abs(bar.size["width"] / track.size["width"] - 0.25) < 0.01
        one_line = driver.find_element("id", "backfill-in-progress").size["height"]
        assert driver.find_element("id", "backfill-repos").size["height"] == one_line  # "300 / 1,200" unbroken
        publish(reposFailed=3, updatedAt=time.time() - 3600)  # a run killed an hour ago
        wait_for(driver, lambda d: text(d, "backfill-state") == "not reporting", 10, "the run to show as stale")
        assert text(driver, "backfill-failed") == "3"
        assert "bad-text" in driver.find_element("id", "backfill-failed").get_attribute("class")
        assert text(driver, "backfill-eta") == "—"
        save_screenshot(driver, output_dir / "dashboard-backfill.png")
