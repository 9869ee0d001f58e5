"""GET /metrics (Prometheus text format) through Django's test client, against the real Redis and PostgreSQL,
parsed with prometheus-client's own parser."""

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from appview.models import Actor
from harness.events import push
from pipeline import redis_store
from pipeline.status import publish_status
from tests.worker_helpers import likes, make_worker, push_raw

pytestmark = pytest.mark.django_db(transaction=True)

# Every series an operator's dashboard relies on, present from the start (those of families with labels
# appear once something has the label: workers, requests).
ALWAYS = {
    "appview_events_indexed", "appview_events_indexed_by_type", "appview_indexing_errors", "appview_cluster_metrics",
    "appview_stream_length", "appview_stream_pending", "appview_stream_undelivered", "appview_dead_letters",
    "appview_consumer_lag_events", "appview_consumer_lag_seconds", "appview_workers",
    "appview_firehose_connected", "appview_firehose_paused", "appview_firehose_reconnects",
    "appview_firehose_events_received", "appview_firehose_errors", "appview_index_latency_seconds",
    "appview_repos_out_of_sync", "appview_backfill_queue_repos", "appview_store_up",
    "appview_http_requests", "appview_http_request_duration_seconds",
}


class Scrape:
    def __init__(self, text: str) -> None:
        self.families = {family.name: family for family in text_string_to_metric_families(text)}

    def samples(self, name: str) -> list[Sample]:
        return [sample for family in self.families.values() for sample in family.samples if sample.name == name]

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the one sample with that name and those labels (others ignored), or None."""
        found = [s.value for s in self.samples(name) if all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(found) <= 1, f"{name} {labels}: {found}"
        return found[0] if found else None


def scrape(client: Client, **headers: str) -> Scrape:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return Scrape(response.content.decode())


def test_it_serves_every_series_in_the_text_format_before_anything_ran(client: Client) -> None:
    client.get("/healthz")

    metrics = scrape(client)

    assert set(metrics.families) >= ALWAYS, ALWAYS - set(metrics.families)
    assert metrics.value("appview_events_indexed_total") == 0
    assert {s.labels["type"]: s.value for s in metrics.samples("appview_events_indexed_by_type_total")} == {
        "#commit": 0, "#identity": 0, "#account": 0, "#sync": 0}
    assert metrics.value("appview_indexing_errors_total") == 0
    assert metrics.value("appview_consumer_lag_seconds") == 0
    assert metrics.value("appview_firehose_connected") == 0
    assert metrics.value("appview_backfill_queue_repos") == 0
    assert metrics.value("appview_store_up", store="redis") == metrics.value("appview_store_up", store="postgres") == 1
    assert metrics.value("appview_http_requests_total", kind="health", nsid="", status="2xx") >= 1


def test_it_moves_the_series_when_events_flow(client: Client) -> None:
    redis = redis_store.connect()
    before = scrape(client)
    publish_status(redis, connected=True, url="ws://127.0.0.1:5010", cursor=25, reconnects=2, eventsReceived=26)
    push(redis, likes(1, 25))
    push_raw(redis, 26, b"\xff\x00 not cbor")
    redis.hset(redis_store.cluster_metrics(), "verify:bad-signature", 2)  # a per-reason counter of a worker
    time.sleep(0.05)

    waiting = scrape(client)

    assert waiting.value("appview_stream_length") == 26
    assert waiting.value("appview_stream_undelivered") == waiting.value("appview_consumer_lag_events") == 26
    assert waiting.value("appview_consumer_lag_seconds") >= 0.05
    assert waiting.value("appview_firehose_connected") == 1
    assert waiting.value("appview_firehose_cursor") == 25
    assert waiting.value("appview_firehose_reconnects_total") == 2
    assert waiting.value("appview_firehose_events_received_total") == 26
    assert waiting.value("appview_cluster_metrics_total", field="verify:bad-signature") == 2

    worker = make_worker("prometheus-worker", batch_size=100)
    assert worker.step() == 26  # one batch, acknowledged, with a heartbeat

    indexed = scrape(client)

    assert indexed.value("appview_events_indexed_total") == 26
    assert indexed.value("appview_events_indexed_by_type_total", type="#commit") == 26
    assert indexed.value("appview_indexing_errors_total") == 1
    assert indexed.value("appview_cluster_metrics_total", field="totalEvents") == 26
    assert indexed.value("appview_cluster_metrics_total", field="#sync") == 0
    assert indexed.value("appview_stream_pending") == indexed.value("appview_consumer_lag_events") == 0
    assert indexed.value("appview_consumer_lag_seconds") == 0
    assert indexed.value("appview_worker_processed_total", worker="prometheus-worker") == 26
    assert indexed.value("appview_worker_errors_total", worker="prometheus-worker") == 1
    assert 0 <= indexed.value("appview_worker_heartbeat_age_seconds", worker="prometheus-worker") < 5
    assert indexed.value("appview_workers", state="live") == 1
    # Every event, in the buckets of its arrival-to-commit time (cluster:latency keeps no sum: no _sum, _count).
    assert indexed.value("appview_index_latency_seconds_bucket", le="+Inf") == 26
    assert 0 < indexed.value("appview_index_latency_seconds_bucket", le="5") <= 26
    assert (indexed.value("appview_http_request_duration_seconds_count", kind="metrics", nsid="")
            > (before.value("appview_http_request_duration_seconds_count", kind="metrics", nsid="") or 0))
    worker._finish()


def test_it_counts_and_times_requests_by_route_kind_with_bounded_labels(client: Client) -> None:
    def requests(metrics: Scrape, kind: str, nsid: str = "", status: str = "2xx") -> float:
        return metrics.value("appview_http_requests_total", kind=kind, nsid=nsid, status=status) or 0

    before = scrape(client)
    client.get("/")
    client.get("/api/metrics")
    client.get("/admin/login/")
    client.get("/xrpc/app.bsky.actor.getProfile", {"actor": "did:plc:nobody0000000000000000000"})
    client.get("/xrpc/com.example.madeUp" + "x" * 50)
    client.get("/no/such/page")

    after = scrape(client)

    assert requests(after, "dashboard") == requests(before, "dashboard") + 1
    assert requests(after, "api") == requests(before, "api") + 1
    assert requests(after, "admin") == requests(before, "admin") + 1
    assert (requests(after, "xrpc", "app.bsky.actor.getProfile", "4xx")
            == requests(before, "xrpc", "app.bsky.actor.getProfile", "4xx") + 1)
    assert requests(after, "xrpc", "unknown", "4xx") + requests(after, "xrpc", "unknown", "5xx") >= 1
    assert requests(after, "other", "", "4xx") == requests(before, "other", "", "4xx") + 1
    # A name a client made up never becomes a label.
    assert not any("madeUp" in str(sample.labels) for family in after.families.values() for sample in family.samples)
    assert (after.value("appview_http_request_duration_seconds_count", kind="xrpc", nsid="app.bsky.actor.getProfile")
            >= 1)


def test_it_counts_repositories_out_of_sync_by_state(client: Client) -> None:
    Actor.objects.bulk_create([
        Actor(did=f"did:plc:resync{n:019d}", sync_status=["active", "desynchronized", "error"][n % 3],
              resync_after=timezone.now() if n % 3 else None)
        for n in range(99)
    ])

    scraped = scrape(client)

    assert scraped.value("appview_repos_out_of_sync", state="desynchronized") == 33
    assert scraped.value("appview_repos_out_of_sync", state="error") == 33
    assert scraped.value("appview_repos_out_of_sync", state="resyncing") == 0
    assert scraped.value("appview_repos_out_of_sync", state="queued") == 66


@pytest.fixture
def metrics_token(settings: Any) -> str:
    settings.METRICS_TOKEN = "a-long-random-metrics-token"
    return settings.METRICS_TOKEN


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Bearer a-long-random-metrics-toke",
                                           "Basic YS1sb25nLXJhbmRvbS1tZXRyaWNzLXRva2Vu", "a-long-random-metrics-token"])
def test_it_answers_401_without_the_metrics_token(client: Client, metrics_token: str,
                                                  authorization: str | None) -> None:
    response = client.get("/metrics", headers={"Authorization": authorization} if authorization else {})

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"appview_" not in response.content


def test_it_answers_with_the_metrics_token(client: Client, metrics_token: str) -> None:
    metrics = scrape(client, Authorization=f"Bearer {metrics_token}")
    assert metrics.value("appview_events_indexed_total") == 0


def test_it_says_which_store_is_down_instead_of_failing(client: Client, unreachable_redis: None) -> None:
    metrics = scrape(client)

    assert metrics.value("appview_store_up", store="redis") == 0
    assert metrics.value("appview_store_up", store="postgres") == 1
    assert metrics.value("appview_stream_length") is None


def test_it_serves_every_series_the_sample_grafana_dashboard_uses(client: Client) -> None:
    dashboard = json.loads((Path(settings.BASE_DIR) / "docs" / "grafana-dashboard.json").read_text())
    used = {re.sub(r"_(total|bucket|count|sum)$", "", name)
            for panel in dashboard["panels"] for target in panel.get("targets", [])
            for name in re.findall(r"\bappview_\w+", target["expr"])}
    # The cursor and freshness series exist once run_firehose has said them.
    publish_status(redis_store.connect(), connected=True, url="ws://127.0.0.1:5010", cursor=7,
                   lastEventTime="2025-04-16T21:30:26.611Z")

    served = set(scrape(client).families)

    assert len(used) > 20
    assert used <= served, used - served


def test_it_counts_requests_served_asynchronously_as_under_daphne(client: Client, async_client: Any) -> None:
    def healthz_requests() -> float:
        return scrape(client).value("appview_http_requests_total", kind="health", nsid="", status="2xx") or 0

    before = healthz_requests()
    response = async_to_sync(async_client.get)("/healthz")

    assert response.status_code == 200
    assert healthz_requests() == before + 1
