"""A backfill is visible: a progress line every few seconds, its figures in Redis for the dashboard (the panel,
``/api/metrics``, the websocket's snapshots) and in ``/metrics``."""

import logging
import time
from pathlib import Path

import pytest
from django.test import Client
from pytest_django.fixtures import Settings

from appview.sync import backfill as backfill_module
from appview.sync.backfill import Scope, queue_dids
from pipeline import redis_store
from tests.backfill_helpers import RELAY, backfill, generated, local_network
from tests.test_prometheus_metrics import scrape

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_logs_its_progress_and_publishes_it_for_the_dashboard(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        client: Client) -> None:
    monkeypatch.setattr(backfill_module, "LOG_SECONDS", 0.2)
    settings.BACKFILL_BATCH_REPOS = 1
    with local_network(settings, monkeypatch) as network:
        repos = generated(network, tmp_path, accounts=10, records=30, seed=9)
        network.pds().delay = 0.1  # a run long enough for a few progress lines
        with caplog.at_level(logging.INFO, logger="appview.sync.backfill"):
            backfill(Scope(dids=tuple(repos), relay=RELAY), concurrency=2)
    lines = [record.getMessage() for record in caplog.records if "repositories done" in record.getMessage()]
    assert lines, caplog.text
    assert all(" records/s" in line and "ETA" in line and "failed" in line for line in lines)
    assert "backfill: 0/10 repositories done" not in lines[-1]

    snapshot = client.get("/api/metrics").json()["backfill"]
    assert snapshot["state"] == "finished"
    assert (snapshot["reposDone"], snapshot["reposTotal"], snapshot["reposFailed"], snapshot["records"]) == (
        10, 10, 0, 300)
    assert snapshot["recordsPerSecond"] > 0 and snapshot["etaSeconds"] is None
    assert 'id="backfill-card"' in client.get("/").content.decode()


def test_it_calls_a_run_that_stopped_reporting_stale(client: Client) -> None:
    assert client.get("/api/metrics").json()["backfill"]["state"] == "none"
    redis_store.connect().hset(redis_store.backfill_progress(), mapping={
        "state": "running", "reposDone": 5, "reposTotal": 9, "records": 70, "recordsPerSecond": 12.5,
        "etaSeconds": 40, "updatedAt": time.time() - 60})
    snapshot = client.get("/api/metrics").json()["backfill"]
    assert (snapshot["state"], snapshot["reposDone"], snapshot["etaSeconds"]) == ("stale", 5, None)
    assert snapshot["updatedSecondsAgo"] >= 60


def test_it_gives_prometheus_the_queue_and_the_run(client: Client) -> None:
    queue_dids(["did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb"])
    redis_store.connect().hset(redis_store.backfill_progress(), mapping={
        "state": "running", "reposDone": 3, "reposFailed": 1, "records": 900, "recordsPerSecond": 450.0,
        "etaSeconds": 8, "updatedAt": time.time()})
    metrics = scrape(client)
    assert metrics.value("appview_backfill_queue_repos") == 2
    assert metrics.value("appview_backfill_repos", state="pending") == 2
    assert metrics.value("appview_backfill_running") == 1
    assert metrics.value("appview_backfill_run_repos", state="failed") == 1
    assert (metrics.value("appview_backfill_records"), metrics.value("appview_backfill_eta_seconds")) == (900, 8)
