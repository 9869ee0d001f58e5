"""The hidden accounts' share of the counts (``HiddenShare``, issue 17): kept by the worker as accounts are
hidden and shown again, and as hidden accounts' rows come and go, in whatever order events arrive, so that
the read API takes it out of every count with one lookup."""

from typing import Any

import pytest

from appview.models import HiddenShare
from harness.events import WHEN, commit_frame, push
from pipeline import redis_store
from tests.worker_helpers import CID, assert_aggregates_match_rows, drain, event_frame

pytestmark = pytest.mark.django_db(transaction=True)

ALICE = "did:plc:aliceaaaaaaaaaaaaaaaaaaa"
BOB = "did:plc:bobbbbbbbbbbbbbbbbbbbbbb"
POST = f"at://{ALICE}/app.bsky.feed.post/3lmxjza3h2i27"


def ref() -> dict[str, str]:
    return {"uri": POST, "cid": CID}


def bobs_records() -> list[tuple[str, str, dict[str, Any] | None]]:
    return [
        ("create", "app.bsky.feed.like/3lmxjza3h2i30", {"$type": "app.bsky.feed.like", "subject": ref(),
                                                       "createdAt": WHEN}),
        ("create", "app.bsky.feed.repost/3lmxjza3h2i31", {"$type": "app.bsky.feed.repost", "subject": ref(),
                                                         "createdAt": WHEN}),
        ("create", "app.bsky.feed.post/3lmxjza3h2i32", {"$type": "app.bsky.feed.post", "text": "reply",
                                                       "createdAt": WHEN, "reply": {"root": ref(), "parent": ref()}}),
        ("create", "app.bsky.feed.post/3lmxjza3h2i33", {"$type": "app.bsky.feed.post", "text": "quote",
                                                       "createdAt": WHEN,
                                                       "embed": {"$type": "app.bsky.embed.record", "record": ref()}}),
        ("create", "app.bsky.graph.follow/3lmxjza3h2i34", {"$type": "app.bsky.graph.follow", "subject": ALICE,
                                                          "createdAt": WHEN}),
    ]


def share(key: str) -> tuple[int, ...]:
    row = HiddenShare.objects.filter(key=key).values_list(
        "like_count", "repost_count", "reply_count", "quote_count", "followers_count", "follows_count").first()
    return row or (0, 0, 0, 0, 0, 0)


def index(*frames: tuple[int, bytes]) -> None:
    push(redis_store.connect(), frames, explicit_ids=False)
    drain(batch_size=2)
    assert_aggregates_match_rows()


def test_it_moves_a_hidden_accounts_rows_into_the_shares_and_out_again() -> None:
    index((1, commit_frame(1, [("create", "app.bsky.feed.post/3lmxjza3h2i27",
                                {"$type": "app.bsky.feed.post", "text": "hi", "createdAt": WHEN})], did=ALICE)),
          (2, commit_frame(2, [("create", "app.bsky.graph.follow/3lmxjza3h2i28",
                                {"$type": "app.bsky.graph.follow", "subject": BOB, "createdAt": WHEN})], did=ALICE)),
          (3, commit_frame(3, bobs_records(), did=BOB)))
    assert share(POST) == share(ALICE) == (0, 0, 0, 0, 0, 0)

    index((4, event_frame(4, "#account", BOB, active=False, status="takendown", time="2026-01-01T00:00:00Z")))
    assert share(POST) == (1, 1, 1, 1, 0, 0)
    assert share(ALICE) == (0, 0, 0, 0, 1, 1)  # followed by bob, follows bob

    # Bob's like goes while he is hidden: out of the share with it.
    index((5, commit_frame(5, [("delete", "app.bsky.feed.like/3lmxjza3h2i30", None)], did=BOB)))
    assert share(POST) == (0, 1, 1, 1, 0, 0)

    index((6, event_frame(6, "#account", BOB, active=True, time="2026-01-02T00:00:00Z")))
    assert share(POST) == share(ALICE) == (0, 0, 0, 0, 0, 0)


def test_it_counts_the_same_whichever_comes_first_the_rows_or_the_hiding() -> None:
    # The account is hidden before its records arrive, and hidden then deleted in one batch.
    index((10, event_frame(10, "#account", BOB, active=False, status="deactivated", time="2026-01-01T00:00:00Z")),
          (11, commit_frame(11, [("create", "app.bsky.feed.post/3lmxjza3h2i27",
                                  {"$type": "app.bsky.feed.post", "text": "hi", "createdAt": WHEN})], did=ALICE)),
          (12, commit_frame(12, bobs_records(), did=BOB)))
    assert share(POST) == (1, 1, 1, 1, 0, 0)
    index((13, commit_frame(13, [("create", "app.bsky.graph.follow/3lmxjza3h2i28",
                                  {"$type": "app.bsky.graph.follow", "subject": BOB, "createdAt": WHEN})],
                            did=ALICE)),
          (14, event_frame(14, "#account", BOB, active=False, status="deleted", time="2026-01-03T00:00:00Z")))
    # Bob's records are gone with his account; alice still follows the deleted (hidden) account.
    assert share(POST) == (0, 0, 0, 0, 0, 0)
    assert share(ALICE) == (0, 0, 0, 0, 0, 1)
