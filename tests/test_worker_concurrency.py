"""Concurrent batches: aggregates, rows and tombstones stay exact when batches race, and a batch that
PostgreSQL rolls back (a deadlock) is run again instead of being set aside."""

import queue
import random
import threading
import time
from typing import Any

import pytest
from django.db import connection, connections

from appview.indexing import apply, services
from appview.indexing.events import ParsedEvent, parse_entry
from appview.models import Actor, Like, Post, RecordTombstone
from harness.events import DID, WHEN, commit_frame, push, rev_of
from pipeline import redis_store
from tests.worker_helpers import (
    CID,
    assert_aggregates_match_rows,
    diff,
    drain,
    event_frame,
    metrics,
    post_trigger,
    snapshot,
    truncate_index,
)

pytestmark = pytest.mark.django_db(transaction=True)

# Few repos and few record keys, so that concurrent batches keep touching the same rows and counts.
DIDS = [f"did:plc:{letter * 24}" for letter in "abcdef"]
RKEYS = [f"3lmxjza3h2i2{character}" for character in "23456"]
COLLECTIONS = {"post": "app.bsky.feed.post", "like": "app.bsky.feed.like", "repost": "app.bsky.feed.repost",
               "follow": "app.bsky.graph.follow"}
THREADS = 6
RETRIES = 200


def post_ref(rng: random.Random) -> dict[str, str]:
    return {"uri": f"at://{rng.choice(DIDS)}/app.bsky.feed.post/{rng.choice(RKEYS)}", "cid": CID}


def contended_frames(rng: random.Random, count: int) -> list[tuple[int, bytes]]:
    """Creates, updates that change a subject, deletes and account deletions over a handful of records."""
    frames = []
    for seq in range(1, count + 1):
        did = rng.choice(DIDS)
        if rng.random() < 0.01:
            frames.append((seq, event_frame(seq, "#account", did=did, active=False, status="deleted")))
            continue
        kind = rng.choice(["post", "like", "like", "repost", "follow", "follow"])
        action = rng.choice(["create", "create", "update", "delete"])
        record: dict[str, Any] | None = None
        if action != "delete" and kind == "post":
            record = {"$type": COLLECTIONS[kind], "text": "x", "createdAt": WHEN}
            if rng.random() < 0.5:
                parent = post_ref(rng)
                record["reply"] = {"root": parent, "parent": parent}
            if rng.random() < 0.4:
                record["embed"] = {"$type": "app.bsky.embed.record", "record": post_ref(rng)}
        elif action != "delete" and kind == "follow":
            record = {"$type": COLLECTIONS[kind], "subject": rng.choice(DIDS), "createdAt": WHEN}
        elif action != "delete":
            record = {"$type": COLLECTIONS[kind], "subject": post_ref(rng), "createdAt": WHEN}
        frames.append((seq, commit_frame(seq, [(action, f"{COLLECTIONS[kind]}/{rng.choice(RKEYS)}", record)],
                                         did=did)))
    return frames


def parsed(frames: list[tuple[int, bytes]]) -> list[ParsedEvent]:
    return [parse_entry(f"{seq}-{n}".encode(), {b"frame": frame}) for n, (seq, frame) in enumerate(frames)]


def index_concurrently(batches: list[list[tuple[int, bytes]]]) -> list[str]:
    """Indexes the batches from several threads, each with its own connection, running a batch again when
    PostgreSQL rolls it back, as run_worker does; returns the errors."""
    work: queue.Queue[list[tuple[int, bytes]]] = queue.Queue()
    for frames in batches:
        work.put(frames)
    errors: list[str] = []

    def index() -> None:
        known: set[str] = set()
        try:
            while True:
                try:
                    events = parsed(work.get_nowait())
                except queue.Empty:
                    return
                for _ in range(RETRIES):
                    try:
                        services.index_events(events=events, known_actors=known)
                        break
                    except Exception as exc:
                        if not services.is_transaction_rollback(exc):
                            raise
                        time.sleep(random.uniform(0, 0.01))
                else:
                    errors.append("a batch was rolled back too many times")
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=index) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.fixture()
def wide_race_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sleeps after the locks, before the tombstone read and before the counts, where batches interleave."""
    lock_actors, tombstones, save_aggregates = apply._lock_actors, apply._tombstones, apply._save_aggregates

    def pausing(step: Any) -> Any:
        def call(*args: Any) -> Any:
            time.sleep(random.uniform(0, 0.003))
            return step(*args)
        return call

    monkeypatch.setattr(apply, "_lock_actors", pausing(lock_actors))
    monkeypatch.setattr(apply, "_tombstones", pausing(tombstones))
    monkeypatch.setattr(apply, "_save_aggregates", pausing(save_aggregates))


@pytest.mark.parametrize("seed", [1, 3])
def test_it_keeps_rows_and_counts_exact_when_shuffled_batches_race(seed: int, wide_race_windows: None) -> None:
    rng = random.Random(seed)
    frames = contended_frames(rng, 1200)
    for event in parsed(frames):  # the reference: one event per batch, in order
        services.index_events(events=[event])
    assert_aggregates_match_rows()
    reference = snapshot()
    truncate_index()
    # Shuffled, 30% of the events delivered twice, batches of 1 to 12 events from six threads.
    delivered = frames + rng.sample(frames, len(frames) * 3 // 10)
    rng.shuffle(delivered)
    batches = []
    while delivered:
        size = rng.randint(1, 12)
        batches.append(delivered[:size])
        delivered = delivered[size:]
    assert index_concurrently(batches) == []
    connection.close()
    assert_aggregates_match_rows()
    assert diff(reference, snapshot()) == []


def test_it_keeps_the_tombstone_of_a_delete_followed_by_a_create_in_one_batch() -> None:
    path = "app.bsky.feed.like/3lmxjza3h2i27"
    like = {"$type": "app.bsky.feed.like", "subject": {"uri": f"at://{DID}/app.bsky.feed.post/3lmxjza3h2i26",
                                                       "cid": CID}, "createdAt": WHEN}
    frames = [(5, commit_frame(5, [("create", path, like)])), (6, commit_frame(6, [("delete", path, None)])),
              (7, commit_frame(7, [("create", path, like)]))]
    services.index_events(events=parsed(frames))
    assert list(RecordTombstone.objects.values_list("rev", flat=True)) == [rev_of(6)]
    assert list(Like.objects.values_list("rev", flat=True)) == [rev_of(7)]


def test_it_runs_a_batch_again_when_postgresql_rolls_it_back() -> None:
    # The first two attempts fail as a deadlock victim would (a sequence is not rolled back with the
    # transaction). With one attempt allowed per event, only running the batch again can index it.
    with connection.cursor() as cursor:
        cursor.execute("CREATE SEQUENCE rollback_count")
    try:
        with post_trigger("IF nextval('rollback_count') <= 2 THEN"
                          " RAISE EXCEPTION 'deadlock detected (simulated)' USING ERRCODE = '40P01'; END IF;"):
            client = redis_store.connect()
            push(client, [(1, commit_frame(1, [("create", "app.bsky.feed.post/3lmxjza3h2i01",
                                                {"$type": "app.bsky.feed.post", "text": "post", "createdAt": WHEN})]))])
            worker = drain(max_attempts=1)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP SEQUENCE rollback_count")
    assert Post.objects.count() == 1
    assert client.xlen(redis_store.dead_letters_stream()) == 0
    assert metrics(client) == {"totalEvents": 1, "#commit": 1, "#identity": 0, "#account": 0, "#sync": 0, "errors": 0}
    assert (worker.stats.processed, worker.stats.errors, worker.stats.dead) == (1, 0, 0)


def test_it_recreates_actor_rows_its_cache_wrongly_trusts() -> None:
    follow = {"$type": "app.bsky.graph.follow", "subject": DIDS[1], "createdAt": WHEN}
    known: set[str] = set()
    services.index_events(events=parsed([(1, commit_frame(1, [("create", "app.bsky.graph.follow/3lmxjza3h2i21",
                                                                follow)]))]), known_actors=known)
    assert {DID, DIDS[1]} <= known
    truncate_index()  # a database emptied (or restored) under a running worker
    services.index_events(events=parsed([(2, commit_frame(2, [("create", "app.bsky.graph.follow/3lmxjza3h2i22",
                                                                follow)]))]), known_actors=known)
    assert Actor.objects.get(did=DIDS[1]).followers_count == 1
    assert Actor.objects.get(did=DID).follows_count == 1
    assert_aggregates_match_rows()
