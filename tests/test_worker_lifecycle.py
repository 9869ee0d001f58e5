"""The worker's life: durable cursor, heartbeat, drain, SIGTERM, and PostgreSQL or Redis unreachable."""

import json
import socket
import time

import pytest
from django.db import connection

from appview.indexing.worker import Worker
from appview.models import Like
from harness.events import push
from identity import services as identity_services
from pipeline import redis_store
from pipeline.cursor import advance_durable_cursor, claim_generation
from pipeline.models import IndexCursor
from tests.worker_helpers import (
    OTHER,
    drain,
    likes,
    make_worker,
    metrics,
    start_worker,
    stop,
    subprocess_env,
    terminate,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True)

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def durable_seq(host: str) -> int:
    return IndexCursor.objects.get(name=host).seq


def test_it_saves_the_durable_cursor_and_never_moves_it_back() -> None:
    claim_generation("relay.test", 1)  # as run_firehose does before it pushes generation 1
    client = redis_store.connect()
    push(client, likes(1, 30), generation=1)
    drain()
    assert durable_seq("relay.test") == 30
    push(client, likes(31, 60), generation=1)
    # Entry 31 was delivered to a worker that died: the cursor must stay below it.
    client.xreadgroup(redis_store.CONSUMER_GROUP, "dead", {redis_store.events_stream(): ">"}, count=1)
    worker = make_worker(batch_size=1000)
    worker.step()
    worker._advance_cursor()
    assert Like.objects.count() == 59
    assert durable_seq("relay.test") == 30
    client.xack(redis_store.events_stream(), redis_store.CONSUMER_GROUP, "1-31")
    worker._advance_cursor()
    assert durable_seq("relay.test") == 60
    assert advance_durable_cursor(generation=1, seq=10) == 60
    assert durable_seq("relay.test") == 60


def test_it_moves_only_the_cursor_of_the_relay_whose_generation_the_mark_is_in() -> None:
    client = redis_store.connect()
    claim_generation("a.test", 1)
    push(client, likes(1, 30), generation=1)
    drain()
    # run_firehose switched to relay b, numbered from 1: its entries come after a's in the stream.
    claim_generation("b.test", 2)
    push(client, likes(1001, 1005), generation=2)
    drain()
    assert (durable_seq("a.test"), durable_seq("b.test")) == (30, 1005)
    # Back to relay a, under a new generation: a late mark of its old one moves nothing.
    claim_generation("a.test", 3)
    assert advance_durable_cursor(generation=1, seq=40) is None
    assert (durable_seq("a.test"), durable_seq("b.test")) == (30, 1005)
    push(client, likes(31, 35), generation=3)
    drain()
    assert (durable_seq("a.test"), durable_seq("b.test")) == (35, 1005)


def test_it_reads_what_it_left_pending_before_a_restart_once() -> None:
    client = redis_store.connect()
    push(client, likes(1, 25))
    # A previous life of this consumer name took the entries and died before acknowledging them.
    client.xreadgroup(redis_store.CONSUMER_GROUP, "restarted", {redis_store.events_stream(): ">"}, count=25)
    worker = make_worker("restarted", batch_size=10)
    # The reader thread reads the next batch before the previous one is acknowledged: no entry twice.
    batches = [worker.read_batch() for _ in range(4)]
    assert [[event.seq for event in batch.events] for batch in batches[:3]] == [
        list(range(1, 11)), list(range(11, 21)), list(range(21, 26))]
    assert batches[3] is None


def test_it_publishes_a_heartbeat_and_removes_it_on_exit() -> None:
    client = redis_store.connect()
    push(client, likes(1, 25))
    worker = make_worker("beating", batch_size=10)
    worker.step()
    beat = json.loads(client.hget(redis_store.cluster_workers(), "beating"))
    assert beat["name"] == "beating" and beat["processed"] == 10 and beat["errors"] == 0
    assert beat["lastBatchSize"] == 10 and beat["batchLatencyMs"] > 0 and beat["batchLatencyP95Ms"] > 0
    assert abs(beat["heartbeat"] - time.time()) < 30 and beat["pid"] > 0 and beat["host"]
    worker.run(drain=True)
    assert client.hget(redis_store.cluster_workers(), "beating") is None
    assert worker.stats.processed == 25


def test_it_exits_at_once_when_draining_an_empty_stream() -> None:
    started = time.monotonic()
    worker = drain()
    assert time.monotonic() - started < 10
    assert worker.stats.processed == 0


def test_it_finishes_its_batch_and_exits_on_sigterm() -> None:
    client = redis_store.connect()
    push(client, likes(1, 3000))
    worker = start_worker("terminated", "--batch-size", "100")
    try:
        wait_for(lambda: metrics(client).get("totalEvents", 0) >= 100, timeout=120)
        log = terminate(worker)
    finally:
        stop(worker)
    assert "worker terminated stopped" in log
    # Nothing left half done: every delivered entry was committed and acknowledged.
    assert client.xpending(redis_store.events_stream(), redis_store.CONSUMER_GROUP)["pending"] == 0
    assert metrics(client)["totalEvents"] == Like.objects.count() < 3000
    assert client.hget(redis_store.cluster_workers(), "terminated") is None


def test_it_acknowledges_nothing_while_postgresql_is_unreachable() -> None:
    client = redis_store.connect()
    push(client, likes(1, 50))
    unreachable = f"postgres://root@127.0.0.1:{free_port()}/nowhere"
    worker = start_worker("no-database", "--batch-size", "20", DATABASE_URL=unreachable)
    def pending() -> int:
        return client.xpending(redis_store.events_stream(), redis_store.CONSUMER_GROUP)["pending"]

    try:
        wait_for(lambda: pending() >= 20, timeout=60)
        time.sleep(2)  # retrying meanwhile
        delivered = pending()
        assert metrics(client) == {}
        log = terminate(worker)
    finally:
        stop(worker)
    # Every entry it took is still pending: none was acknowledged.
    assert pending() == delivered
    assert "PostgreSQL unreachable or not migrated" in log
    # Its entries stay pending for the same consumer (or any other, by a claim) once PostgreSQL is back.
    drain("no-database")
    assert Like.objects.count() == 50
    assert metrics(client)["totalEvents"] == 50


def test_it_waits_while_redis_is_unreachable_and_stops_on_sigterm() -> None:
    env = subprocess_env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    worker = start_worker("no-redis", "--batch-size", "20", **{k: env[k] for k in ("REDIS_URL",)})
    try:
        time.sleep(3)
        assert worker.poll() is None  # still alive, retrying
        log = terminate(worker)
    finally:
        stop(worker)
    assert "Redis unreachable" in log


def test_it_recreates_the_consumer_group_when_redis_lost_its_data() -> None:
    client = redis_store.connect()
    push(client, likes(1, 10))
    worker = make_worker(batch_size=100)
    assert worker.step() == 10
    client.delete(redis_store.events_stream())  # Redis restarted empty: no stream, no group
    for seq, frame in likes(11, 15):
        client.xadd(redis_store.events_stream(), {"seq": seq, "t": "#commit", "did": "did:plc:x", "frame": frame,
                                                  "received_at": 0}, id=f"1-{seq}")
    assert worker.step() == 0  # NOGROUP: the group is created again, from the start of the stream
    assert worker.step() == 5
    assert Like.objects.count() == 15


def test_it_records_how_long_each_event_took_from_arrival_to_commit() -> None:
    client = redis_store.connect()
    push(client, likes(1, 40))
    old = str(int(time.time() * 1000) - 4000).encode()
    client.xadd(redis_store.events_stream(), {"seq": 41, "t": "#commit", "did": OTHER, "received_at": old,
                                              "frame": likes(41, 41)[0][1]}, id="1-41")
    drain()
    drain()  # a second pass acknowledges nothing, so it must add nothing
    histogram = {k.decode(): int(v) for k, v in client.hgetall(redis_store.latency_histogram()).items()}
    assert sum(histogram.values()) == 41 == metrics(client)["totalEvents"]
    assert histogram["5000"] == 1  # the event that waited 4 s before reaching the worker
    assert sum(count for bucket, count in histogram.items() if bucket not in {"5000", "+inf"}) == 40


def test_it_waits_for_a_missing_table_instead_of_setting_events_aside() -> None:
    client = redis_store.connect()
    push(client, likes(1, 10))
    table = Like._meta.db_table
    retries: list[float] = []

    def rename(old: str, new: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [old])
            if cursor.fetchone()[0]:
                cursor.execute(f"ALTER TABLE {old} RENAME TO {new}")

    def migrate_meanwhile(seconds: float) -> None:
        retries.append(seconds)
        if len(retries) == 4:
            rename(f"{table}_not_migrated", table)

    rename(table, f"{table}_not_migrated")  # as before `migrate` created it
    try:
        worker = Worker(consumer="early", batch_size=100, claim_idle_ms=60_000, max_attempts=3, block_ms=50,
                        sleep=migrate_meanwhile)
        worker.run(drain=True)
    finally:
        rename(f"{table}_not_migrated", table)
    assert len(retries) >= 4
    assert client.xlen(redis_store.dead_letters_stream()) == 0
    assert Like.objects.count() == 10
    assert metrics(client).get("errors", 0) == 0 and metrics(client)["totalEvents"] == 10


def test_it_creates_every_cluster_counter_at_0_with_its_first_acknowledgement() -> None:
    client = redis_store.connect()
    push(client, likes(1, 3))
    assert metrics(client) == {}
    drain()
    # Readers (the dashboard, /metrics, scripts running HGETALL) find every field, the ones still at 0 too.
    assert metrics(client) == {"totalEvents": 3, "#commit": 3, "#identity": 0, "#account": 0, "#sync": 0,
                               "errors": 0}


def test_it_logs_its_throughput_and_identity_lookups(caplog: pytest.LogCaptureFixture) -> None:
    push(redis_store.connect(), likes(1, 10))
    worker = make_worker("logging", batch_size=10)
    worker.step()
    identity_services.stats()  # counts since the last call: none from this test before the line
    with caplog.at_level("INFO", logger="appview.indexing.worker"):
        worker._log(time.monotonic())
    (line,) = [record.getMessage() for record in caplog.records if "events in" in record.getMessage()]
    assert line.startswith("worker logging: 10 events in ")
    assert line.endswith("identities: 0 from memory, 0 from PostgreSQL, 0 fetched, 0 failed")
