"""GET /api/metrics and the dashboard page, through Django's test client against real Redis and PostgreSQL."""

import json
import time
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from appview.models import Actor
from dashboard.selectors import REPO_SYNC_CACHE_KEY
from pipeline import redis_store

SNAPSHOT_KEYS = {
    "eventsProcessed", "eventCounts", "errors", "errorRate", "firehoseStatus", "queue", "workers", "records",
    "databaseAvailable", "sync", "backfill", "throughput", "lastUpdate",
}

pytestmark = pytest.mark.django_db


def test_it_answers_zeros_and_disconnected_before_anything_has_run(client: Client) -> None:
    response = client.get("/api/metrics")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) == SNAPSHOT_KEYS
    assert body["eventsProcessed"] == 0
    assert body["eventCounts"] == {"#commit": 0, "#identity": 0, "#account": 0, "#sync": 0}
    assert body["errorRate"] == 0
    assert body["firehoseStatus"]["connected"] is False
    assert body["queue"]["length"] == 0
    assert body["workers"] == []
    assert set(body["throughput"]) == {"perSecond", "perMinute"}


def test_it_reports_what_the_pipeline_wrote(client: Client) -> None:
    redis = redis_store.connect()
    now = time.time()
    redis.hset(redis_store.cluster_metrics(), mapping={"totalEvents": 10, "#commit": 8, "#identity": 2, "errors": 1})
    redis.set(redis_store.firehose_status(), json.dumps({
        "connected": True, "url": "ws://127.0.0.1:5010", "currentCursor": "123", "reconnects": 1,
    }), ex=10)
    redis.xadd(redis_store.events_stream(), {"seq": 123}, id="1-123")
    redis.hset(redis_store.cluster_workers(), "w1", json.dumps({
        "name": "w1", "processed": 10, "errors": 1, "batchLatencyMs": 3.5, "heartbeat": now,
    }))
    redis.set(redis_store.throughput_bucket("received", "s", int(now) - 1), 4)

    body = client.get("/api/metrics").json()

    assert body["eventsProcessed"] == 10
    assert body["eventCounts"] == {"#commit": 8, "#identity": 2, "#account": 0, "#sync": 0}
    assert body["errorRate"] == 0.1
    assert body["firehoseStatus"]["connected"] is True
    assert body["firehoseStatus"]["url"] == "ws://127.0.0.1:5010"
    assert body["firehoseStatus"]["currentCursor"] == "123"
    assert body["firehoseStatus"]["reconnects"] == 1
    assert body["queue"]["length"] == 1
    assert [(w["name"], w["processed"], w["batchLatencyMs"]) for w in body["workers"]] == [("w1", 10, 3.5)]
    assert body["workers"][0]["heartbeatAgeSeconds"] < 5
    assert [received for t, received, _ in body["throughput"]["perSecond"] if t == int(now) - 1] == [4]


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_it_is_read_only(client: Client, method: str) -> None:
    assert getattr(client, method)("/api/metrics", data={}).status_code == 405
    assert getattr(client, method)("/", data={}).status_code == 405


def test_it_says_503_when_redis_is_unreachable(client: Client, unreachable_redis: None) -> None:
    response = client.get("/api/metrics")

    assert response.status_code == 503
    assert "ConnectionError" in response.json()["detail"]


def test_it_serves_the_page_even_when_redis_is_unreachable(client: Client, unreachable_redis: None) -> None:
    response = client.get("/")

    assert response.status_code == 200
    assert b'<script id="initial-snapshot" type="application/json">null</script>' in response.content


def test_it_serves_the_page_with_the_latest_snapshot_inlined(client: Client) -> None:
    redis_store.connect().hset(redis_store.cluster_metrics(), "totalEvents", 31337)

    response = client.get("/")

    assert response.status_code == 200
    html = response.content.decode()
    start = html.index('<script id="initial-snapshot" type="application/json">') + len(
        '<script id="initial-snapshot" type="application/json">'
    )
    inlined = json.loads(html[start:html.index("</script>", start)])
    assert inlined["eventsProcessed"] == 31337
    assert 'data-ws-path="/ws/metrics/"' in html
    assert 'data-api-url="/api/metrics"' in html
    for asset in ("dashboard/dashboard.css", "dashboard/dashboard.js", "dashboard/throughput-chart.js"):
        assert f"/static/{asset}" in html


def test_it_shows_the_relay_url_without_credentials_in_the_api_and_the_page(client: Client) -> None:
    redis_store.connect().set(redis_store.firehose_status(), json.dumps({
        "connected": True, "url": "wss://operator:hunter2@relay.example:8443/?token=t0ps3cret", "currentCursor": "9",
    }), ex=10)

    api = client.get("/api/metrics")
    page = client.get("/")

    assert api.json()["firehoseStatus"]["url"] == "wss://relay.example:8443/?token=redacted"
    for body in (api.content, page.content):
        assert b"hunter2" not in body and b"t0ps3cret" not in body and b"operator" not in body
    assert b"wss://relay.example:8443/?token=redacted" in page.content


def test_it_hides_worker_hosts_and_pids_when_dashboard_show_hosts_is_off(client: Client, settings: Any) -> None:
    redis_store.connect().hset(redis_store.cluster_workers(), "web-7.internal-31337", json.dumps({
        "name": "web-7.internal-31337", "host": "web-7.internal", "pid": 31337, "processed": 3,
        "heartbeat": time.time(),
    }))
    settings.DASHBOARD_SHOW_HOSTS = False

    response = client.get("/api/metrics")

    assert b"web-7" not in response.content and b"31337" not in response.content
    [worker] = response.json()["workers"]
    assert worker["host"] is None and worker["pid"] is None and worker["processed"] == 3
    assert worker["name"].startswith("worker-")


def test_it_shows_repositories_out_of_sync_commits_refused_by_reason_and_events_skipped(client: Client) -> None:
    Actor.objects.create(did="did:plc:resyncme", sync_status="desynchronized", resync_after=timezone.now())
    Actor.objects.create(did="did:plc:failedone", sync_status="error", resync_after=timezone.now())
    redis_store.connect().hset(redis_store.cluster_metrics(), mapping={
        "errors": 3, "errors:bad-signature": 2, "errors:missing-block": 1, "resyncs": 5, "resyncFailures": 1,
        "filtered": 7, "outOfScope": 11})

    cache.delete(REPO_SYNC_CACHE_KEY)  # the counts of a snapshot built by an earlier test
    sync = client.get("/api/metrics").json()["sync"]

    assert sync == {"repos": {"desynchronized": 1, "resyncing": 0, "error": 1, "queued": 2}, "resyncs": 5,
                    "resyncFailures": 1, "commitsRefused": {"bad-signature": 2, "missing-block": 1},
                    "filtered": 7, "outOfScope": 11}
