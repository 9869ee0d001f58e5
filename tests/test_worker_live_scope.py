"""LIVE_SCOPE tracked: live indexing follows the repositories of the backfill queue and those whose valid commit
writes the signal collection, and the account events of the DIDs their records name; every other event is
acknowledged, counted (outOfScope) and left out."""

import pytest
from pytest_django.fixtures import Settings

from appview.models import Actor, BackfillRepo, Post
from appview.sync.backfill import queue_dids
from harness.events import WHEN, commit_frame, push
from pipeline import redis_store
from tests.test_settings import assert_one_line, run_check
from tests.worker_helpers import drain, event_frame, metrics

pytestmark = pytest.mark.django_db(transaction=True)

TRACKED = "did:plc:trackedaaaaaaaaaaaaaaaaa"
UNTRACKED = "did:plc:untrackedbbbbbbbbbbbbbbb"
SIGNAL = "com.example.signal"


@pytest.fixture(autouse=True)
def tracked_scope(settings: Settings) -> None:
    settings.LIVE_SCOPE = "tracked"
    settings.VERIFY_COMMITS = False  # hand-made commits
    settings.SIGNAL_COLLECTION = SIGNAL
    queue_dids([TRACKED])


def post(text: str) -> dict[str, str]:
    return {"$type": "app.bsky.feed.post", "text": text, "createdAt": WHEN}


def test_it_indexes_the_tracked_repositories_and_counts_the_events_of_the_others() -> None:
    push(redis_store.connect(), [
        (1, commit_frame(1, [("create", "app.bsky.feed.post/3laaaaaaaaaa2", post("tracked"))], did=TRACKED)),
        (2, commit_frame(2, [("create", "app.bsky.feed.post/3laaaaaaaaaa3", post("untracked"))], did=UNTRACKED)),
        (3, event_frame(3, "#identity", did=UNTRACKED, handle="someone.example.com")),
        (4, event_frame(4, "#account", did=UNTRACKED, active=False, status="takendown")),
    ])
    drain()
    assert list(Post.objects.values_list("did", "text")) == [(TRACKED, "tracked")]
    assert not Actor.objects.filter(did=UNTRACKED).exists()
    assert list(BackfillRepo.objects.values_list("did", flat=True)) == [TRACKED]
    counted = metrics(redis_store.connect())
    assert (counted["totalEvents"], counted["errors"], counted["outOfScope"]) == (4, 0, 3)
    assert counted["#commit"] == 2 and counted["#identity"] == counted["#account"] == 1


def test_it_follows_a_repository_from_its_first_write_of_the_signal_collection() -> None:
    client = redis_store.connect()
    push(client, [(1, commit_frame(1, [("create", "app.bsky.feed.post/3laaaaaaaaaa2", post("before"))],
                                   did=UNTRACKED))])
    drain()
    push(client, [(2, commit_frame(2, [("create", f"{SIGNAL}/3laaaaaaaaaa3", {"$type": SIGNAL, "createdAt": WHEN}),
                                       ("create", "app.bsky.feed.post/3laaaaaaaaaa4", post("signalled"))],
                                   did=UNTRACKED))])
    drain()
    assert BackfillRepo.objects.get(did=UNTRACKED).state == "pending"  # its history comes with the next backfill
    push(client, [(3, commit_frame(3, [("create", "app.bsky.feed.post/3laaaaaaaaaa5", post("after"))],
                                   did=UNTRACKED))])
    drain()  # a later batch: in the scope through the backfill queue now
    assert sorted(Post.objects.values_list("text", flat=True)) == ["after", "signalled"]
    assert metrics(client)["outOfScope"] == 1


def test_it_lets_no_commit_that_fails_its_checks_bring_a_repository_into_the_scope() -> None:
    spoiled = commit_frame(1, [("create", f"{SIGNAL}/3laaaaaaaaaa3", {"$type": SIGNAL, "createdAt": WHEN}),
                               ("create", "app.bsky.feed.post/3laaaaaaaaaa4", post("forged"))],
                           did=UNTRACKED, rev="not-a-tid")
    push(redis_store.connect(), [(1, spoiled)])
    drain()
    assert not Post.objects.exists() and not BackfillRepo.objects.filter(did=UNTRACKED).exists()
    counted = metrics(redis_store.connect())
    assert (counted["outOfScope"], counted["errors"]) == (1, 0)


def test_it_keeps_the_accounts_tracked_records_name_current() -> None:
    follow = {"$type": "app.bsky.graph.follow", "subject": UNTRACKED, "createdAt": WHEN}
    client = redis_store.connect()
    push(client, [(1, commit_frame(1, [("create", "app.bsky.graph.follow/3laaaaaaaaaa2", follow)], did=TRACKED))])
    drain()  # the followed account has an actor row from now on
    push(client, [
        (2, event_frame(2, "#account", did=UNTRACKED, active=False, status="takendown")),
        (3, commit_frame(3, [("create", "app.bsky.feed.post/3laaaaaaaaaa3", post("untracked"))], did=UNTRACKED)),
    ])
    drain()
    assert (Actor.objects.get(did=UNTRACKED).status, Post.objects.exists()) == ("takendown", False)
    assert metrics(redis_store.connect())["outOfScope"] == 1


def test_it_refuses_a_live_scope_or_signal_collection_it_does_not_know_at_start() -> None:
    assert_one_line(run_check(LIVE_SCOPE="some"), "LIVE_SCOPE must be network or tracked, got 'some'")
    assert_one_line(run_check(SIGNAL_COLLECTION="not an nsid"), "SIGNAL_COLLECTION must be an NSID, got 'not an nsid'")
    assert_one_line(run_check(SIGNAL_COLLECTION=SIGNAL),
                    "SIGNAL_COLLECTION brings repositories into LIVE_SCOPE=tracked only: set LIVE_SCOPE too")
    assert run_check(LIVE_SCOPE="tracked", SIGNAL_COLLECTION=SIGNAL).returncode == 0
