"""manage.py backfill (SPEC section 12): whole repositories from their PDSes, stored record for record, with
exact aggregates, resumably."""

import logging
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from pytest_django.fixtures import Settings

from appview.indexing import services
from appview.indexing.events import record_write
from appview.models import Actor, BackfillRepo, Post
from appview.sync.backfill import Scope
from protocol.commit import RecordOp
from tests.backfill_helpers import (
    RELAY,
    backfill,
    generated,
    local_network,
    records_of,
    sim_repo,
    states,
    stored_records,
)
from tests.worker_helpers import assert_aggregates_match_rows

pytestmark = pytest.mark.django_db(transaction=True)

WHEN = "2025-01-01T00:00:00.000Z"


def post(text: str) -> dict[str, Any]:
    return {"$type": "app.bsky.feed.post", "text": text, "createdAt": WHEN}


def follow(did: str) -> dict[str, Any]:
    return {"$type": "app.bsky.graph.follow", "subject": did, "createdAt": WHEN}


def like(uri: str) -> dict[str, Any]:
    return {"$type": "app.bsky.feed.like", "createdAt": WHEN,
            "subject": {"uri": uri, "cid": "bafyreigaqcu4loopk4dkd57c6zulsivi6lnsrwkpyt5t3khnixglnvwx2i"}}


@pytest.mark.parametrize(("processes", "process_max_bytes"), [(0, None), (1, None), (1, 0)], ids=[
    "staged in the loader threads", "in a staging process", "exports too large for the staging processes"])
def test_it_stores_every_record_of_the_repositories_with_exact_aggregates(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, processes: int,
        process_max_bytes: int | None) -> None:
    settings.VERIFY_COMMITS = True
    settings.BACKFILL_BATCH_RECORDS = 500  # several batches
    if process_max_bytes is not None:
        monkeypatch.setattr("appview.sync.backfill.STAGING_PROCESS_MAX_BYTES", process_max_bytes)
    with local_network(settings, monkeypatch) as network:
        repos = generated(network, tmp_path, accounts=30, records=120, seed=1)
        progress = backfill(Scope(dids=tuple(repos), relay=RELAY), processes=processes)
    assert (progress.done, progress.failed, progress.records) == (30, 0, 30 * 120)
    for did, records in repos.items():
        assert stored_records(did) == records
    assert set(states().values()) == {("done", "")}
    assert_aggregates_match_rows()


@pytest.mark.parametrize("processes", [0, 1], ids=["staged in the loader threads", "in a staging process"])
def test_it_stores_repositories_larger_than_a_batch_in_parts_new_or_already_stored(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, processes: int) -> None:
    settings.VERIFY_COMMITS = True
    with local_network(settings, monkeypatch) as network:
        posts = [(f"app.bsky.feed.post/3laaaaaaa{index:03d}", post(f"post {index}")) for index in range(40)]
        repo = sim_repo(network, 1, posts)
        follower = sim_repo(network, 2, [(f"app.bsky.graph.follow/3laaaaaaa{index:03d}", follow(repo.did))
                                         for index in range(3)])
        settings.BACKFILL_BATCH_RECORDS = 7  # parts of 7 records
        backfill(Scope(dids=(repo.did, follower.did), relay=RELAY), processes=processes)
        assert stored_records(repo.did) == records_of(repo)
        assert Actor.objects.get(did=repo.did).posts_count == 40
        # The repository changes; loaded again (no longer new: merged part by part), it is stored as it is now.
        liked = f"at://{repo.did}/{posts[0][0]}"
        repo.apply([("delete", path, None) for path, _ in posts[:10]]
                   + [("update", path, post("edited")) for path, _ in posts[10:15]]
                   + [("create", f"app.bsky.feed.like/3lbbbbbbb{index:03d}", like(liked)) for index in range(12)],
                   rev="3lzzzzzzzzzz2")
        BackfillRepo.objects.filter(did=repo.did).update(state="pending", due_at=timezone.now())
        progress = backfill(Scope(relay=RELAY), processes=processes)
    assert (progress.done, progress.records) == (1, 42)
    assert stored_records(repo.did) == records_of(repo)
    assert Post.objects.filter(did=repo.did, text="edited").count() == 5
    assert Actor.objects.get(did=repo.did).posts_count == 30
    assert BackfillRepo.objects.get(did=repo.did).records == 42
    assert_aggregates_match_rows()


def test_it_merges_a_repository_that_has_stored_rows_without_a_rev(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A resync that stored part of a repository and died leaves rows while the actor row has no rev yet: the
    backfill's COPY straight into the tables meets them, and the batch is merged instead."""
    with local_network(settings, monkeypatch) as network:
        repo = sim_repo(network, 3, [(f"app.bsky.feed.post/3laaaaaaa{index:03d}", post(f"post {index}"))
                                     for index in range(6)])
        older = "2222222222223"
        writes = [record_write(repo.did, RecordOp("create", "app.bsky.feed.post", f"3laaaaaaa{index:03d}",
                                                  "bafyreigaqcu4loopk4dkd57c6zulsivi6lnsrwkpyt5t3khnixglnvwx2i",
                                                  post("stale")), rev=older, seq=0, order=0)[0]
                  for index in (0, 1, 7)]
        services.index_repository_records(writes=[write for write in writes if write is not None], dids={repo.did})
        assert Actor.objects.get(did=repo.did).rev is None
        with caplog.at_level(logging.INFO, logger="appview.sync.backfill_store"):
            backfill(Scope(dids=(repo.did,), relay=RELAY))
    assert "merging the batch instead" in caplog.text
    assert stored_records(repo.did) == records_of(repo)  # the stale rows replaced, the one not in the repo gone
    assert Actor.objects.get(did=repo.did).posts_count == 6
    assert_aggregates_match_rows()
