"""Following each repository by its revs (SPEC sections 6 and 12): writes ordered by rev whatever the seq or
the relay, commits that break the sync protocol applied not at all and their repo queued for resync, the
chain of ``since`` revs, #sync, accounts back from deletion, and the collection of tombstones."""

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection

from appview.indexing import services
from appview.models import Actor, Like, Post, RecordTombstone
from harness.events import DID, WHEN, commit_frame, push, rev_of
from pipeline import redis_store
from protocol.cid import cid_for_block
from protocol.testing import encode_car, encode_frame
from tests.worker_helpers import CID, assert_aggregates_match_rows, drain, event_frame, metrics

pytestmark = pytest.mark.django_db(transaction=True)

POST_PATH = "app.bsky.feed.post/3lmxjza3h2i27"
LIKE_PATH = "app.bsky.feed.like/3lmxjza3h2i28"


def post(text: str = "hello") -> dict[str, Any]:
    return {"$type": "app.bsky.feed.post", "text": text, "createdAt": WHEN}


def like() -> dict[str, Any]:
    return {"$type": "app.bsky.feed.like", "createdAt": WHEN,
            "subject": {"uri": f"at://{DID}/{POST_PATH}", "cid": CID}}


def index(*frames: tuple[int, bytes]) -> None:
    push(redis_store.connect(), frames, explicit_ids=False)
    drain(batch_size=1)


def actor() -> Actor:
    return Actor.objects.get(did=DID)


def test_it_orders_writes_by_rev_not_by_seq() -> None:
    # The create (rev 20) reaches the index after the delete (rev 30) that followed it in the repo, with a
    # higher seq (another relay's numbering): the record stays deleted.
    index((900, commit_frame(900, [("delete", POST_PATH, None)], rev=rev_of(30))),
          (901, commit_frame(901, [("create", POST_PATH, post())], rev=rev_of(20))))
    assert not Post.objects.exists()
    assert RecordTombstone.objects.get().rev == rev_of(30)
    # An update older than the stored version changes nothing; a newer one wins.
    index((902, commit_frame(902, [("create", LIKE_PATH, like())], rev=rev_of(40))),
          (903, commit_frame(903, [("update", POST_PATH, post("old"))], rev=rev_of(25))),
          (904, commit_frame(904, [("create", POST_PATH, post("new"))], rev=rev_of(50))),
          (905, commit_frame(905, [("update", POST_PATH, post("older"))], rev=rev_of(45))))
    assert Post.objects.get().text == "new"
    assert actor().rev == rev_of(50)
    assert_aggregates_match_rows()


def test_it_applies_once_an_event_that_two_relays_deliver() -> None:
    frame_a = commit_frame(10, [("create", POST_PATH, post()), ("create", LIKE_PATH, like())], rev=rev_of(10))
    frame_b = commit_frame(7_000_000, [("create", POST_PATH, post()), ("create", LIKE_PATH, like())],
                           rev=rev_of(10))
    index((10, frame_a), (7_000_000, frame_b))
    stored = Post.objects.get()
    assert (stored.like_count, actor().posts_count, Like.objects.count()) == (1, 1, 1)
    assert_aggregates_match_rows()


def test_it_applies_nothing_of_a_commit_with_one_bad_op_and_queues_its_repo() -> None:
    index((1, commit_frame(1, [("create", POST_PATH, post())])))
    block = cid_for_block(b"not in the CAR")
    # The create's block is left out of the CAR: the delete beside it must not apply either.
    body = {"seq": 2, "rebase": False, "tooBig": False, "repo": DID, "commit": block, "rev": rev_of(2),
            "since": rev_of(1), "blocks": encode_car([block], []), "time": WHEN, "blobs": [],
            "ops": [{"action": "delete", "path": POST_PATH, "cid": None},
                    {"action": "create", "path": LIKE_PATH, "cid": block}]}
    index((2, encode_frame({"op": 1, "t": "#commit"}, body)))
    assert Post.objects.count() == 1 and not Like.objects.exists()
    repo = actor()
    assert (repo.sync_status, repo.sync_reason, repo.rev) == ("desynchronized", "missing-block", rev_of(1))
    assert repo.resync_after is not None
    counted = metrics(redis_store.connect())
    assert (counted["errors"], counted["errors:missing-block"]) == (1, 1)


def test_it_queues_a_repo_for_a_too_big_commit_and_for_a_sync_ahead_of_it() -> None:
    index((1, commit_frame(1, [("create", POST_PATH, post())])))
    body = {"seq": 2, "rebase": False, "tooBig": True, "repo": DID, "commit": cid_for_block(b"x"), "rev": rev_of(2),
            "since": rev_of(1), "blocks": b"", "ops": [], "blobs": [], "time": WHEN}
    index((2, encode_frame({"op": 1, "t": "#commit"}, body)))
    assert (actor().sync_status, actor().sync_reason) == ("desynchronized", "too-big")

    other = "did:plc:yk4dd2qkboz2yv6tpubpc6co"
    index((3, commit_frame(3, [("create", POST_PATH, post())], did=other)),
          (4, event_frame(4, "#sync", did=other, rev=rev_of(3))),  # what the index holds: nothing to do
          (5, event_frame(5, "#sync", did=other, rev=rev_of(9))))
    synced = Actor.objects.get(did=other)
    assert (synced.sync_status, synced.sync_reason, synced.rev) == ("desynchronized", "sync-event", rev_of(9))


def test_it_follows_the_chain_of_since_revs_and_queues_a_repo_that_missed_a_commit() -> None:
    index((1, commit_frame(1, [("create", POST_PATH, post())])))
    # Commit 3 follows commit 2, which has not come (yet).
    index((3, commit_frame(3, [("create", LIKE_PATH, like())], since=rev_of(2))))
    assert actor().missing_revs == [rev_of(2)] and actor().sync_status == "active"
    index((2, commit_frame(2, [("update", POST_PATH, post("edited"))], since=rev_of(1))))
    assert (actor().missing_revs, actor().missing_since) == ([], None)
    assert Post.objects.get().text == "edited"

    # Commit 5 follows a commit 4 that never comes: past the grace period, the repo is queued.
    index((5, commit_frame(5, [("delete", LIKE_PATH, None)], since=rev_of(4))))
    assert services.queue_repos_missing_commits(grace=timedelta(hours=1)) == 0
    with connection.cursor() as cursor:
        cursor.execute("UPDATE appview_actor SET missing_since = now() - interval '2 hours'")
    assert services.queue_repos_missing_commits(grace=timedelta(hours=1)) == 1
    repo = actor()
    assert (repo.sync_status, repo.sync_reason, repo.missing_revs) == ("desynchronized", "commits-missed", [])


def test_it_queues_a_repo_whose_newest_commit_follows_an_older_rev_than_one_applied() -> None:
    index((1, commit_frame(1, [("create", POST_PATH, post())])),
          (2, commit_frame(2, [("update", POST_PATH, post("second"))], since=rev_of(1))))
    # Commit 3 names commit 1 as the one before it: commit 2, applied, is not in its chain.
    index((3, commit_frame(3, [("create", LIKE_PATH, like())], since=rev_of(1))))
    repo = actor()
    assert (repo.sync_status, repo.sync_reason, repo.rev) == ("desynchronized", "since-mismatch", rev_of(3))


def test_it_does_not_queue_a_repo_for_commits_that_arrive_out_of_order() -> None:
    index((1, commit_frame(1, [("create", POST_PATH, post())])),
          (3, commit_frame(3, [("create", LIKE_PATH, like())], since=rev_of(2))),
          (2, commit_frame(2, [("update", POST_PATH, post("second"))], since=rev_of(1))))
    repo = actor()
    assert (repo.sync_status, repo.missing_revs, repo.rev) == ("active", [], rev_of(3))


def test_it_purges_a_deleted_account_and_resyncs_it_when_it_comes_back() -> None:
    index((1, commit_frame(1, [("create", POST_PATH, post())])))
    index((2, event_frame(2, "#account", active=False, status="deleted", time="2026-01-01T00:00:00Z")))
    assert not Post.objects.exists() and actor().status == "deleted"
    # A create written before the deletion, delivered late, is refused.
    index((3, commit_frame(3, [("create", LIKE_PATH, like())], rev=rev_of(3))))
    assert not Like.objects.exists()
    index((4, event_frame(4, "#account", active=True, time="2026-01-02T00:00:00Z")))
    repo = actor()
    assert (repo.status, repo.sync_status, repo.sync_reason) == ("active", "desynchronized", "account-restored")


def test_it_keeps_the_later_account_status_whatever_the_delivery_order() -> None:
    index((20, event_frame(20, "#account", active=True, time="2026-01-02T00:00:00Z")),
          (10, event_frame(10, "#account", active=False, status="takendown", time="2026-01-01T00:00:00Z")))
    assert (actor().active, actor().status) == (True, "active")


def test_it_collects_tombstones_older_than_the_retention() -> None:
    index((1, commit_frame(1, [("delete", POST_PATH, None)])), (2, commit_frame(2, [("delete", LIKE_PATH, None)])))
    with connection.cursor() as cursor:
        cursor.execute("UPDATE appview_recordtombstone SET deleted_at = now() - interval '8 days'"
                       " WHERE uri LIKE %s", [f"%{POST_PATH}"])
    assert services.collect_tombstones(retention=timedelta(days=7)) == 1
    assert list(RecordTombstone.objects.values_list("uri", flat=True)) == [f"at://{DID}/{LIKE_PATH}"]
