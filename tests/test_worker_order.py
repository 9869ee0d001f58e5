"""The index does not depend on delivery: events shuffled across three concurrent workers, delivered
twice, or interrupted by a worker killed mid-batch give the same database as one worker in order."""

import random
import signal
import time
from typing import Any

import pytest

from appview.models import Like
from harness.events import push
from pipeline import redis_store
from relaysim.simulation import SyntheticFirehose
from tests.worker_helpers import (
    assert_aggregates_match_rows,
    diff,
    drain,
    make_worker,
    metrics,
    snapshot,
    start_worker,
    stop,
    truncate_index,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True)

EVENTS = 3000
# The cursor depends on stream IDs, which these tests change on purpose.
SKIPPED = {"appview_indexcursor"}


def frames() -> list[tuple[int, bytes]]:
    return list(SyntheticFirehose(seed=11, start_seq=1, actors=300).frames(EVENTS))


def in_order_reference(events: list[tuple[int, bytes]]) -> tuple[dict[str, Any], dict[str, int]]:
    client = redis_store.connect()
    push(client, events)
    drain("reference", batch_size=200)
    reference = {table: rows for table, rows in snapshot().items() if table not in SKIPPED}
    counted = metrics(client)
    truncate_index()
    for key in client.scan_iter(match=redis_store.key("*")):
        client.delete(key)
    return reference, counted


def current() -> dict[str, Any]:
    return {table: rows for table, rows in snapshot().items() if table not in SKIPPED}


def test_it_gives_the_same_index_when_three_workers_take_shuffled_events() -> None:
    events = frames()
    reference, counted = in_order_reference(events)
    assert len(reference["appview_like"]) > 500 and reference["appview_recordtombstone"]
    shuffled = events[:]
    random.Random(5).shuffle(shuffled)
    push(redis_store.connect(), shuffled, explicit_ids=False)
    workers = [start_worker(f"shuffled-{n}", "--drain", "--batch-size", str(size))
               for n, size in enumerate((37, 50, 71))]
    try:
        for worker in workers:
            assert worker.wait(timeout=240) == 0, worker.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
        logs = [worker.stdout.read().decode() for worker in workers]  # type: ignore[union-attr]
    finally:
        for worker in workers:
            stop(worker)
    # All three took part.
    assert all(" 0 events" not in log.splitlines()[-1] for log in logs), logs
    assert not (problems := diff(reference, current())), "\n".join(problems)
    assert_aggregates_match_rows()
    assert metrics(redis_store.connect()) == counted


def test_it_changes_nothing_when_every_event_is_delivered_twice() -> None:
    events = frames()
    reference, counted = in_order_reference(events)
    client = redis_store.connect()
    push(client, events)
    push(client, events, explicit_ids=False)  # a replay: the same events again, as new entries
    drain("twice", batch_size=150)
    assert not (problems := diff(reference, current())), "\n".join(problems)
    assert_aggregates_match_rows()
    assert metrics(client) == {name: value * 2 for name, value in counted.items()}


def test_it_gives_the_same_index_and_counts_after_a_worker_is_killed_mid_batch() -> None:
    events = frames()
    reference, counted = in_order_reference(events)
    client = redis_store.connect()
    push(client, events)
    first = start_worker("crashing", "--batch-size", "50")
    try:
        # Killed once it has committed something, which with batches of 50 is mid-way.
        wait_for(lambda: Like.objects.count() > 200, timeout=120)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        stop(first)
    assert int(metrics(client).get("totalEvents", 0)) < EVENTS
    # The same consumer name reads its pending entries again first.
    again = start_worker("crashing", "--batch-size", "50", "--drain")
    try:
        assert again.wait(timeout=240) == 0, again.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
    finally:
        stop(again)
    assert not (problems := diff(reference, current())), "\n".join(problems)
    assert metrics(client) == counted
    assert client.xpending(redis_store.events_stream(), redis_store.CONSUMER_GROUP)["pending"] == 0


def test_it_claims_the_entries_of_a_dead_worker() -> None:
    events = frames()[:400]
    client = redis_store.connect()
    push(client, events)
    # A worker that read a batch and died before acknowledging it.
    client.xreadgroup(redis_store.CONSUMER_GROUP, "dead", {redis_store.events_stream(): ">"}, count=120)
    worker = start_worker("alive", "--drain", "--batch-size", "100", WORKER_CLAIM_IDLE_MS="1000")
    try:
        assert worker.wait(timeout=120) == 0, worker.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
        log = worker.stdout.read().decode()  # type: ignore[union-attr]
    finally:
        stop(worker)
    assert "claimed 100 entries" in log
    assert metrics(client)["totalEvents"] == 400
    assert client.xpending(redis_store.events_stream(), redis_store.CONSUMER_GROUP)["pending"] == 0


def test_it_goes_on_claiming_at_once_while_its_scan_of_the_pending_entries_has_not_come_round() -> None:
    client = redis_store.connect()
    push(client, frames()[:40])
    client.xreadgroup(redis_store.CONSUMER_GROUP, "dead", {redis_store.events_stream(): ">"}, count=40)
    time.sleep(1.1)
    # Batches of one: each XAUTOCLAIM claims one entry and leaves its cursor just after it.
    worker = make_worker("alive", batch_size=1, claim_idle_ms=1000)
    assert [worker.step() for _ in range(5)] == [1] * 5
    assert worker.stats.processed == 5
    assert client.xpending(redis_store.events_stream(), redis_store.CONSUMER_GROUP)["pending"] == 35


def test_it_starts_its_scan_of_the_pending_entries_over_after_a_claim_that_found_nothing() -> None:
    client = redis_store.connect()
    push(client, frames()[:60])
    client.xreadgroup(redis_store.CONSUMER_GROUP, "dead", {redis_store.events_stream(): ">"}, count=4)
    client.xreadgroup(redis_store.CONSUMER_GROUP, "busy", {redis_store.events_stream(): ">"}, count=56)
    # Batches of two: each XAUTOCLAIM scans twenty pending entries. Nothing is idle yet, nothing is new.
    worker = make_worker("alive", batch_size=2, claim_idle_ms=1000)
    assert worker.read_batch() is None
    time.sleep(1.1)
    # Had the scan gone on from where it stopped, it would have claimed entries 21 and 22.
    batch = worker.read_batch()
    assert batch is not None
    assert [event.seq for event in batch.events] == [1, 2]
