"""The dashboard's reads: what the pipeline writes to Redis and PostgreSQL, turned into one snapshot.

The keys are written here the way run_firehose and run_worker write them (SPEC section 3): that is the
test data, against the real Redis and PostgreSQL.
"""

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection

from appview.models import RowCountDelta
from dashboard import selectors
from pipeline import redis_store

NOW = 1_750_000_000.0


def write_status(**fields: object) -> None:
    status = {"connected": True, "url": "wss://relay.example", "currentCursor": "31000000123", **fields}
    redis_store.connect().set(redis_store.firehose_status(), json.dumps(status), ex=10)


def write_worker(name: str, **fields: object) -> None:
    beat = {"name": name, "host": "h1", "pid": 42, "processed": 10, "errors": 1, "batchLatencyMs": 12.5,
            "lastBatchSize": 100, "heartbeat": NOW - 2, "startedAt": "2025-06-15T00:00:00+00:00", **fields}
    redis_store.connect().hset(redis_store.cluster_workers(), name, json.dumps(beat))


@pytest.mark.django_db
def test_it_gives_zeros_and_disconnected_when_nothing_has_run() -> None:
    snapshot = selectors.build_snapshot(now=NOW)

    assert snapshot["eventsProcessed"] == 0
    assert snapshot["eventCounts"] == {"#commit": 0, "#identity": 0, "#account": 0, "#sync": 0}
    assert snapshot["errors"] == 0
    assert snapshot["errorRate"] == 0.0
    assert snapshot["firehoseStatus"]["connected"] is False
    assert snapshot["firehoseStatus"]["url"] is None
    assert snapshot["firehoseStatus"]["currentCursor"] is None
    assert snapshot["firehoseStatus"]["freshnessSeconds"] is None
    assert snapshot["queue"] == {"length": 0, "pending": 0, "undelivered": 0, "deadLetters": 0,
                                 "estimatedSecondsToClear": 0.0}
    assert snapshot["workers"] == []
    assert snapshot["records"]["app.bsky.feed.post"] == 0
    assert all(n == 0 for n in snapshot["records"].values())
    assert len(snapshot["throughput"]["perSecond"]) == 15 * 60
    assert len(snapshot["throughput"]["perMinute"]) == 24 * 60
    assert all(point[1:] == [0, 0] for point in snapshot["throughput"]["perSecond"])
    assert snapshot["lastUpdate"] == datetime.fromtimestamp(NOW, UTC).isoformat(timespec="milliseconds")


@pytest.mark.django_db
def test_it_reads_the_cluster_counters_and_error_rate() -> None:
    redis_store.connect().hset(redis_store.cluster_metrics(), mapping={
        "totalEvents": 2000, "#commit": 1900, "#identity": 60, "#account": 30, "#sync": 10, "errors": 5,
        "somethingElse": 7,
    })

    snapshot = selectors.build_snapshot(now=NOW)

    assert snapshot["eventsProcessed"] == 2000
    assert snapshot["eventCounts"] == {"#commit": 1900, "#identity": 60, "#account": 30, "#sync": 10}
    assert snapshot["errors"] == 5
    assert snapshot["errorRate"] == pytest.approx(0.0025)


@pytest.mark.django_db
def test_it_reads_the_firehose_status_and_how_far_behind_the_relay_it_was() -> None:
    last_event = datetime.fromtimestamp(NOW - 3.25, UTC).isoformat()
    # Written a second ago: the event was 2.25 s old then.
    updated = datetime.fromtimestamp(NOW - 1, UTC).isoformat().replace("+00:00", "Z")
    write_status(reconnects=3, lastEventTime=last_event, paused=True, eventsReceived=99, errors=2, updatedAt=updated)

    status = selectors.build_snapshot(now=NOW)["firehoseStatus"]

    assert status == {
        "connected": True, "url": "wss://relay.example", "currentCursor": "31000000123",
        "freshnessSeconds": 2.2, "reconnects": 3, "paused": True, "eventsReceived": 99, "errors": 2,
    }


@pytest.mark.django_db
def test_it_shows_disconnected_when_run_firehose_says_so_or_its_status_is_garbage() -> None:
    write_status(connected=False)
    assert selectors.build_snapshot(now=NOW)["firehoseStatus"]["connected"] is False

    redis_store.connect().set(redis_store.firehose_status(), b"{not json", ex=10)
    status = selectors.build_snapshot(now=NOW)["firehoseStatus"]
    assert status["connected"] is False
    assert status["url"] is None


@pytest.mark.django_db
def test_it_measures_the_queue_from_the_stream_and_its_consumer_group() -> None:
    client = redis_store.connect()
    stream = redis_store.events_stream()
    for seq in range(1, 11):
        client.xadd(stream, {"seq": seq, "t": "#commit"}, id=f"1-{seq}")
    client.xgroup_create(stream, redis_store.CONSUMER_GROUP, id="0")
    # A worker took 4 entries and acknowledged 1: 3 pending, 6 never delivered.
    taken = client.xreadgroup(redis_store.CONSUMER_GROUP, "w1", {stream: ">"}, count=4)
    client.xack(stream, redis_store.CONSUMER_GROUP, taken[0][1][0][0])
    client.xadd(redis_store.dead_letters_stream(), {"seq": 0, "error": "boom"})
    # The workers indexed 3 events per second over the last 10 complete seconds.
    for second in range(int(NOW) - 10, int(NOW)):
        client.set(redis_store.throughput_bucket("indexed", "s", second), 3)

    queue = selectors.build_snapshot(now=NOW)["queue"]

    assert queue == {"length": 10, "pending": 3, "undelivered": 6, "deadLetters": 1,
                     "estimatedSecondsToClear": 3.0}


@pytest.mark.django_db
def test_it_says_the_queue_is_not_draining_when_nothing_is_indexed() -> None:
    client = redis_store.connect()
    for seq in range(1, 6):
        client.xadd(redis_store.events_stream(), {"seq": seq}, id=f"1-{seq}")

    queue = selectors.build_snapshot(now=NOW)["queue"]

    # No consumer group yet: every entry is waiting, and at zero events/s it never clears.
    assert queue["undelivered"] == 5
    assert queue["estimatedSecondsToClear"] is None


@pytest.mark.django_db
def test_it_lists_workers_with_their_heartbeat_age_and_marks_silent_ones_stale() -> None:
    write_worker("worker-b")
    write_worker("worker-a", heartbeat=NOW - 120, processed=5, errors=0, batchLatencyMs=None)
    redis_store.connect().hset(redis_store.cluster_workers(), "broken", b"not json")

    workers = selectors.build_snapshot(now=NOW)["workers"]

    assert [w["name"] for w in workers] == ["worker-a", "worker-b"]
    assert workers[0]["heartbeatAgeSeconds"] == 120.0
    assert workers[0]["stale"] is True
    assert workers[0]["batchLatencyMs"] is None
    assert workers[1] == {
        "name": "worker-b", "host": "h1", "pid": 42, "heartbeatAgeSeconds": 2.0, "stale": False,
        "processed": 10, "errors": 1, "batchLatencyMs": 12.5, "lastBatchSize": 100,
        "startedAt": "2025-06-15T00:00:00+00:00",
    }


@pytest.mark.django_db
def test_it_reads_throughput_history_per_second_and_per_minute() -> None:
    client = redis_store.connect()
    second, minute = int(NOW), int(NOW // 60)
    client.set(redis_store.throughput_bucket("received", "s", second - 1), 50)
    client.set(redis_store.throughput_bucket("indexed", "s", second - 1), 40)
    client.set(redis_store.throughput_bucket("received", "s", second - 900), 7)
    client.set(redis_store.throughput_bucket("received", "s", second), 999)  # still being counted
    client.set(redis_store.throughput_bucket("received", "m", minute - 1), 3000)
    client.set(redis_store.throughput_bucket("indexed", "m", minute - 1440), 60)

    throughput = selectors.build_snapshot(now=NOW)["throughput"]

    per_second, per_minute = throughput["perSecond"], throughput["perMinute"]
    assert per_second[-1] == [second - 1, 50, 40]
    assert per_second[0] == [second - 900, 7, 0]
    assert per_minute[-1] == [(minute - 1) * 60, 3000, 0]
    assert per_minute[0] == [(minute - 1440) * 60, 0, 60]
    assert [p[0] for p in per_second] == sorted(p[0] for p in per_second)


@pytest.mark.django_db
def test_it_counts_records_by_collection_from_the_indexers_ledger() -> None:
    # The ledger rows the worker writes with each batch: +3 posts, +2 likes, -1 like, +1 generic record.
    RowCountDelta.objects.bulk_create([
        RowCountDelta(key="app.bsky.feed.post", delta=3),
        RowCountDelta(key="app.bsky.feed.like", delta=2),
        RowCountDelta(key="app.bsky.feed.like", delta=-1),
        RowCountDelta(key="com.example.thing", delta=1),
        RowCountDelta(key=RowCountDelta.ACTOR_KEY, delta=4),
    ])

    records = selectors.build_snapshot(now=NOW)["records"]

    assert records["app.bsky.feed.post"] == 3
    assert records["app.bsky.feed.like"] == 1
    assert records["com.example.thing"] == 1
    assert records["app.bsky.graph.follow"] == 0
    assert RowCountDelta.ACTOR_KEY not in records


@pytest.mark.django_db
def test_it_caches_record_counts_for_a_few_seconds() -> None:
    RowCountDelta.objects.create(key="app.bsky.feed.post", delta=1)
    assert selectors.record_counts()[0]["app.bsky.feed.post"] == 1

    RowCountDelta.objects.create(key="app.bsky.feed.post", delta=1)
    assert selectors.record_counts()[0]["app.bsky.feed.post"] == 1

    cache.delete(selectors.RECORD_COUNTS_CACHE_KEY)
    assert selectors.record_counts()[0]["app.bsky.feed.post"] == 2


@contextmanager
def postgresql_unreachable() -> Iterator[None]:
    """Points this process's connection at a port nothing listens on (the shared server keeps running)."""
    settings_dict = connection.settings_dict
    port = settings_dict["PORT"]
    connection.close()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        settings_dict["PORT"] = str(probe.getsockname()[1])
    try:
        yield
    finally:
        connection.close()
        settings_dict["PORT"] = port


@pytest.mark.django_db(transaction=True)
def test_it_keeps_showing_redis_data_and_the_last_counts_while_postgresql_is_down() -> None:
    RowCountDelta.objects.create(key="app.bsky.feed.post", delta=7)
    assert selectors.build_snapshot(now=NOW)["databaseAvailable"] is True
    redis_store.connect().hset(redis_store.cluster_metrics(), "totalEvents", 70)
    cache.delete(selectors.RECORD_COUNTS_CACHE_KEY)

    with postgresql_unreachable():
        snapshot = selectors.build_snapshot(now=NOW)

    assert snapshot["databaseAvailable"] is False
    assert snapshot["records"]["app.bsky.feed.post"] == 7
    assert snapshot["eventsProcessed"] == 70


@pytest.mark.django_db
def test_it_prefers_the_broadcasters_latest_snapshot_for_a_new_page() -> None:
    redis_store.connect().set(redis_store.dashboard_snapshot(), '{"eventsProcessed": 77}', ex=5)
    assert json.loads(selectors.latest_snapshot_json()) == {"eventsProcessed": 77}

    redis_store.connect().delete(redis_store.dashboard_snapshot())
    fresh = json.loads(selectors.latest_snapshot_json())
    assert fresh["eventsProcessed"] == 0
    assert abs(datetime.fromisoformat(fresh["lastUpdate"]).timestamp() - time.time()) < 5


@pytest.mark.parametrize(("url", "shown"), [
    ("wss://bsky.network", "wss://bsky.network"),
    ("wss://alice:s3cret@relay.example:8443/base", "wss://relay.example:8443/base"),
    ("wss://only-a-token@relay.example", "wss://relay.example"),
    ("wss://relay.example/?cursor=5&access_token=abc&apiKey=k&X-Amz-Signature=f00&Password=p#frag",
     "wss://relay.example/?cursor=5&access_token=redacted&apiKey=redacted&X-Amz-Signature=redacted&Password=redacted"),
    ("wss://relay.example:notaport", None),
])
def test_it_shows_urls_without_their_credentials(url: str, shown: str | None) -> None:
    assert selectors.public_url(url) == shown


@pytest.mark.django_db
def test_it_shows_the_relay_url_without_credentials_in_the_snapshot() -> None:
    write_status(url="wss://operator:hunter2@relay.example/?token=abc")

    snapshot = selectors.build_snapshot(now=NOW)

    assert snapshot["firehoseStatus"]["url"] == "wss://relay.example/?token=redacted"
    assert "hunter2" not in selectors.snapshot_json(snapshot)


@pytest.mark.django_db
def test_it_hides_worker_hosts_behind_stable_pseudonyms_when_asked(settings: Any) -> None:
    write_worker("db-host-7.internal-4242", host="db-host-7.internal", pid=4242)
    write_worker("other-host-1", host="other-host", pid=1)
    settings.DASHBOARD_SHOW_HOSTS = False

    workers = selectors.build_snapshot(now=NOW)["workers"]
    again = selectors.build_snapshot(now=NOW + 1)["workers"]

    text = json.dumps(workers)
    assert "db-host-7" not in text and "4242" not in text and "other-host" not in text
    assert all(w["host"] is None and w["pid"] is None for w in workers)
    assert all(w["name"].startswith("worker-") for w in workers)
    assert len({w["name"] for w in workers}) == 2
    assert {w["name"] for w in again} == {w["name"] for w in workers}
    assert sorted(w["processed"] for w in workers) == [10, 10]

    settings.DASHBOARD_SHOW_HOSTS = True
    shown = selectors.build_snapshot(now=NOW)["workers"]
    assert [(w["name"], w["host"], w["pid"]) for w in shown] == [
        ("db-host-7.internal-4242", "db-host-7.internal", 4242), ("other-host-1", "other-host", 1)]


@pytest.mark.django_db
def test_it_makes_an_update_with_only_the_newest_throughput_points() -> None:
    client = redis_store.connect()
    second, minute = int(NOW), int(NOW // 60)
    client.set(redis_store.throughput_bucket("received", "s", second - 1), 50)
    client.set(redis_store.throughput_bucket("indexed", "m", minute - 1), 600)
    snapshot = selectors.build_snapshot(now=NOW)

    update = selectors.snapshot_update(snapshot)

    assert "throughput" not in update
    assert update["throughputUpdate"]["perSecond"] == [[t, 50 if t == second - 1 else 0, 0]
                                                       for t in range(second - selectors.UPDATE_SECONDS, second)]
    assert update["throughputUpdate"]["perMinute"] == [[(minute - 2) * 60, 0, 0], [(minute - 1) * 60, 0, 600]]
    assert {key: value for key, value in update.items() if key != "throughputUpdate"} == {
        key: value for key, value in snapshot.items() if key != "throughput"}
    assert len(selectors.snapshot_json(update)) * 20 < len(selectors.snapshot_json(snapshot))
    assert selectors.newest_second(dict(update)) == selectors.newest_second(dict(snapshot)) == second - 1
