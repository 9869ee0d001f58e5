"""Backfill while live indexing runs (SPEC section 12, issue 16): backfilling repositories while the firehose
delivers new commits of the same repositories gives the same database as backfilling with the firehose stopped
and replaying it afterwards, and each repository ends as it is at its newest rev."""

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import libipld
import pytest
from django.db import connection
from pytest_django.fixtures import Settings

from appview.sync.backfill import Scope
from harness.events import push
from pipeline import redis_store
from protocol.testing import encode_frame
from relaysim.repos import SimRepo
from relaysim.simulation import tid
from tests.backfill_helpers import RELAY, Network, backfill, local_network, records_of, sim_repo, stored_records
from tests.test_backfill_fixtures import ExportRepo
from tests.worker_helpers import assert_aggregates_match_rows, diff, drain, make_worker, snapshot, truncate_index

pytestmark = pytest.mark.django_db(transaction=True)

REPOS = 8
COMMITS = 240
MISSED = 60  # commits made before the firehose was followed: only the backfill brings them
SNAPSHOT = 150  # commits made when the PDS exports the repositories the backfill fetches
WHEN = "2025-01-01T00:00:00.000Z"
START_US = 1_750_000_000_000_000


@dataclass
class History:
    """Commits of several repositories: creates, updates and deletes of posts, likes, reposts and follows that
    name each other; the repositories as exported after SNAPSHOT commits; the frames of the commits after
    MISSED."""

    repos: list[SimRepo]
    exports: dict[str, ExportRepo] = field(default_factory=dict)
    frames: list[tuple[int, bytes]] = field(default_factory=list)


def make_history(network: Network, seed: int) -> History:
    rng = random.Random(seed)
    repos = [sim_repo(network, index, [("app.bsky.actor.profile/self", {"$type": "app.bsky.actor.profile",
                                                                         "displayName": f"r{index}"})])
             for index in range(REPOS)]
    history = History(repos=repos)
    clock = START_US
    for number in range(1, COMMITS + 1):
        clock += 1000
        repo = rng.choice(repos)
        body = repo.apply(_ops(rng, repo, repos, clock), rev=tid(clock, 1))
        if number > MISSED:
            seq = number
            history.frames.append((seq, encode_frame({"op": 1, "t": "#commit"}, {**body, "seq": seq, "time": WHEN})))
        if number == SNAPSHOT:
            for each in repos:
                assert each.head is not None
                history.exports[each.did] = ExportRepo(car=each.export_car(), head=each.head, rev=each.rev,
                                                       collections=dict(each.collections))
    return history


def _ops(rng: random.Random, repo: SimRepo, repos: list[SimRepo], clock: int) -> list[tuple[str, str, Any]]:
    existing = [path for path in repo.records if not path.startswith("app.bsky.actor.profile")]
    posts = [(other.did, path, cid) for other in repos for path, cid in other.records.items()
             if path.startswith("app.bsky.feed.post/")]
    roll = rng.random()
    rkey = tid(clock - 1, 2)
    if existing and roll < 0.2:
        return [("delete", rng.choice(existing), None)]
    if roll < 0.45 or not posts:
        record: dict[str, Any] = {"$type": "app.bsky.feed.post", "text": f"post {clock}", "createdAt": WHEN}
        if posts and rng.random() < 0.3:
            did, path, cid = rng.choice(posts)
            parent = {"uri": f"at://{did}/{path}", "cid": libipld.encode_cid(cid)}
            record["reply"] = {"root": parent, "parent": parent}
        return [("create", f"app.bsky.feed.post/{rkey}", record)]
    if roll < 0.55:
        edited = [path for path in existing if path.startswith("app.bsky.feed.post/")]
        if edited:
            return [("update", rng.choice(edited), {"$type": "app.bsky.feed.post", "text": f"edited {clock}",
                                                    "createdAt": WHEN})]
    if roll < 0.8:
        did, path, cid = rng.choice(posts)
        kind = rng.choice(("app.bsky.feed.like", "app.bsky.feed.repost"))
        subject = {"uri": f"at://{did}/{path}", "cid": libipld.encode_cid(cid)}
        return [("create", f"{kind}/{rkey}", {"$type": kind, "createdAt": WHEN, "subject": subject})]
    return [("create", f"app.bsky.graph.follow/{rkey}", {"$type": "app.bsky.graph.follow", "createdAt": WHEN,
                                                         "subject": rng.choice(repos).did})]


@pytest.fixture
def history(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[History]:
    settings.VERIFY_COMMITS = True
    settings.BACKFILL_BATCH_REPOS = 2  # several transactions, between which live batches commit
    with local_network(settings, monkeypatch) as network:
        history = make_history(network, seed=11)
        for did, export in history.exports.items():
            network.host(did, export, network.plc.documents[did])
        network.pds().delay = 0.03  # fetches spread over the time the firehose delivers
        yield history


def backfill_all(history: History) -> None:
    progress = backfill(Scope(dids=tuple(repo.did for repo in history.repos), relay=RELAY), concurrency=2)
    assert (progress.done, progress.failed) == (REPOS, 0)


def index_snapshot() -> dict[str, Any]:
    """Every table of the index, but the backfill's own (times, run ids) and the rows' ``seq``: it traces which
    delivery wrote a row, and a record whose last commit is the one the export was taken at is written by
    whichever of the two comes first (the other, at the same rev, changes nothing)."""
    return {table: [{column: value for column, value in row.items() if column != "seq"}
                    if isinstance(row, dict) else row for row in rows]
            for table, rows in snapshot().items() if not table.startswith("appview_backfill")}


def test_it_ends_the_same_whether_the_firehose_runs_during_the_backfill_or_after_it(history: History) -> None:
    # Backfill with the firehose stopped, then replay the firehose.
    backfill_all(history)
    push(redis_store.connect(), history.frames)
    drain(batch_size=7)
    sequential = index_snapshot()
    for repo in history.repos:
        assert stored_records(repo.did) == records_of(repo)
    assert_aggregates_match_rows()

    truncate_index()
    redis_store.connect().delete(redis_store.events_stream())
    # The same, with the firehose delivering while the backfill runs.
    worker = make_worker(batch_size=7)

    def index_live() -> None:
        try:
            worker.run()
        finally:
            connection.close()

    def feed() -> None:
        for start in range(0, len(history.frames), 6):
            push(redis_store.connect(), history.frames[start:start + 6])
            time.sleep(0.02)

    worker_thread = threading.Thread(target=index_live, daemon=True)
    worker_thread.start()
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    backfill_all(history)
    assert worker.stats.processed > 0  # live events were indexed while the backfill ran
    feeder.join()
    drained = make_worker("check", batch_size=1)
    deadline = time.monotonic() + 30
    while not drained.stream_io.drained():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    worker.stop = True
    worker_thread.join(timeout=30)
    concurrent = index_snapshot()
    problems = diff(sequential, concurrent)
    assert problems == [], "\n".join(problems)
    assert_aggregates_match_rows()
