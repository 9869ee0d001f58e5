"""Each relay scenario of the fixtures, indexed by a worker, gives the rows and aggregates it should."""

from typing import Any

import pytest

from appview.models import (
    Actor,
    Follow,
    Like,
    Post,
    Postgate,
    Profile,
    RecordTombstone,
    Repost,
    Threadgate,
)
from harness.events import DID, WHEN, commit_frame, push
from pipeline import redis_store
from protocol.syntax import tid_of
from relaysim.scenarios import load_scenario
from tests.conftest import SCENARIOS
from tests.worker_helpers import CID, OTHER, assert_aggregates_match_rows, drain, metrics

pytestmark = pytest.mark.django_db(transaction=True)

POST_URI = f"at://{OTHER}/app.bsky.feed.post/3llz56wmk522o"


def replay(name: str) -> None:
    """Pushes the messages a correct relay forwards, then runs a worker until the stream is drained."""
    messages = [m for m in load_scenario(SCENARIOS / name) if not m.dropped]
    push(redis_store.connect(), [(m.seq, m.frame) for m in messages])  # type: ignore[misc]
    drain()


def uris(model: Any) -> set[str]:
    return set(model.objects.values_list("uri", flat=True))


def test_it_indexes_post_lifecycle() -> None:
    replay("post_lifecycle.json")
    post = f"at://{DID}/app.bsky.feed.post/3lmxk35znys2k"
    assert uris(Like) == set()  # created then deleted
    assert uris(Post) == {post}  # the reply was created then deleted
    assert uris(Threadgate) == {f"at://{DID}/app.bsky.feed.threadgate/3lmxk35znys2k"}
    assert uris(Postgate) == {f"at://{DID}/app.bsky.feed.postgate/3lmxk35znys2k"}
    assert set(RecordTombstone.objects.values_list("uri", "rev")) == {
        (f"at://{DID}/app.bsky.feed.like/3lmxjza3h2i27", "3lmxjzbfkb522"),
        (f"at://{DID}/app.bsky.feed.post/3lmxjzlexp22k", "3lmxjzvdjcc2e"),
    }
    stored = Post.objects.get(uri=post)
    assert (stored.text, stored.langs, stored.embed_type, stored.seq) == (
        "test post", ["en"], "app.bsky.embed.images", 35986865)
    assert stored.created_at.isoformat() == "2025-04-16T21:31:31.667000+00:00"
    assert stored.raw["labels"]["values"] == [{"val": "graphic-media"}]
    # Blob references are stored as links in the data model's JSON form.
    assert set(stored.raw["embed"]["images"][0]["image"]["ref"]) == {"$link"}
    profile = Profile.objects.get(uri=f"at://{DID}/app.bsky.actor.profile/self")
    assert profile.display_name == "bryan newbold"
    assert profile.avatar_cid and profile.avatar_cid.startswith("bafkrei")
    actor = Actor.objects.get(did=DID)
    assert (actor.display_name, actor.posts_count, actor.follows_count) == ("bryan newbold", 1, 0)
    assert actor.description.startswith("dweb, cycling")
    # The liked and replied-to post's author got an actor row.
    assert Actor.objects.filter(did=OTHER).exists()
    assert_aggregates_match_rows()
    assert metrics(redis_store.connect()) == {"totalEvents": 6, "#commit": 6, "#identity": 0, "#account": 0,
                                              "#sync": 0, "errors": 0}


def test_it_indexes_post_lifecycle_legacy() -> None:
    replay("post_lifecycle_legacy.json")
    assert uris(Like) == {f"at://{DID}/app.bsky.feed.like/3llpyftcvih2r"}
    assert uris(Post) == set()
    assert uris(Threadgate) == {f"at://{DID}/app.bsky.feed.threadgate/3llxv7pnd3s2q"}
    assert RecordTombstone.objects.count() == 2
    assert Actor.objects.get(did=DID).posts_count == 0
    assert_aggregates_match_rows()


def test_it_marks_and_purges_a_deleted_account() -> None:
    did = "did:plc:vvpy7d6y2li5yo73cgbszibl"
    # A record written before the account is deleted must go with it.
    push(redis_store.connect(), [(100, commit_frame(100, [("create", "app.bsky.feed.post/3lmxjza3h2i27",
                                                                {"$type": "app.bsky.feed.post", "text": "bye",
                                                                 "createdAt": WHEN})],
                                                    did=did))])
    replay("account_lifecycle.json")
    actor = Actor.objects.get(did=did)
    # The handle comes from the DID document (no PLC here), never from the event.
    assert actor.handle is None
    assert (actor.active, actor.status) == (False, "deleted")
    # The #sync announced a rev the index does not hold, but the account was deleted after it: nothing to resync.
    assert (actor.rev, actor.sync_status, actor.resync_after) == ("3lmxrbvasth2t", "active", None)
    # Nothing written before the deletion (its time as a TID) may come back.
    assert actor.floor_rev == tid_of(1_744_846_893_895_000)  # 2025-04-16T23:41:33.895Z
    assert (Post.objects.count(), actor.posts_count) == (0, 0)
    assert metrics(redis_store.connect()) == {"totalEvents": 5, "#commit": 1, "#identity": 1, "#account": 2,
                                              "#sync": 1, "errors": 0}


def test_it_keeps_a_deactivated_account_marked_then_active_again() -> None:
    replay("deactivation.json")
    actor = Actor.objects.get(did=DID)
    assert (actor.active, actor.status) == (True, "active")
    assert actor.status_position.endswith(f"{103:020d}")
    # The first like stays; the second was created and deleted; the post (dropped by the relay) was
    # never indexed, so its delete only leaves a tombstone; its threadgate is kept.
    assert uris(Like) == {f"at://{DID}/app.bsky.feed.like/3llpyftcvih2r"}
    assert uris(Threadgate) == {f"at://{DID}/app.bsky.feed.threadgate/3llxv7pnd3s2q"}
    assert RecordTombstone.objects.filter(uri=f"at://{DID}/app.bsky.feed.post/3llxv7pnd3s2q",
                                          rev="3llxvapijbc2o").exists()


def test_it_shows_a_deactivated_account_as_inactive() -> None:
    messages = [m for m in load_scenario(SCENARIOS / "deactivation.json") if not m.dropped and m.seq <= 101]
    push(redis_store.connect(), [(m.seq, m.frame) for m in messages])  # type: ignore[misc]
    drain()
    actor = Actor.objects.get(did=DID)
    assert (actor.active, actor.status) == (False, "deactivated")
    assert uris(Like) == {f"at://{DID}/app.bsky.feed.like/3llpyftcvih2r"}  # kept, not purged


def test_it_applies_rev_and_seq_ordering_scenarios() -> None:
    replay("rev_ordering.json")
    assert uris(Like) == set()
    replay("seq_ordering.json")
    assert uris(Like) == {f"at://{DID}/app.bsky.feed.like/3llpyftcvih2r"}
    assert Like.objects.get().seq == 2000


def test_it_indexes_legacy_events() -> None:
    replay("legacy.json")
    actor = Actor.objects.get(did=DID)
    assert actor.handle is None  # the #identity event carries no handle
    assert actor.active and actor.status_position.endswith(f"{7278969009:020d}")
    like = Like.objects.get()
    assert like.subject_uri == "at://did:plc:augewteszp6c4mawnasqdf2l/app.bsky.feed.post/3llmlwt3tl22o"
    assert like.subject_cid == "bafyreigju3dbtgydwqcmen6yodl6mzskmewyg55kx5h7btc7kdfm7uw3dq"


def test_it_indexes_the_real_commits() -> None:
    for name in ("firehose_commit_4621317030.json", "firehose_commit_4621317332.json",
                 "firehose_commit_4621332152.json", "firehose_commit_4623075231.json"):
        replay(name)
    assert Repost.objects.count() == 2
    follower = "did:plc:vixizgjuwef5ovmixqxalfup"
    follows = list(Follow.objects.filter(did=follower).values_list("subject_did", flat=True))
    assert len(follows) > 1
    assert Actor.objects.get(did=follower).follows_count == len(follows)
    # Every followed DID has an actor row that counts the follow.
    assert set(Actor.objects.filter(did__in=follows).values_list("followers_count", flat=True)) == {1}
    profile = Profile.objects.get(did="did:plc:sxtoas2sxjv6gh2bibdg3g4b")
    assert profile.display_name == ""
    assert Actor.objects.get(did="did:plc:sxtoas2sxjv6gh2bibdg3g4b").display_name == ""
    assert_aggregates_match_rows()


def test_it_counts_likes_reposts_replies_and_quotes_exactly() -> None:
    post = f"at://{OTHER}/app.bsky.feed.post/3lmxjza3h2i27"
    ref = {"uri": post, "cid": CID}
    frames = [
        # A like that arrives before the post it likes.
        (10, commit_frame(10, [("create", "app.bsky.feed.like/3lmxjza3h2i22",
                                {"$type": "app.bsky.feed.like", "subject": ref, "createdAt": WHEN})])),
        (11, commit_frame(11, [("create", "app.bsky.feed.post/3lmxjza3h2i27",
                                {"$type": "app.bsky.feed.post", "text": "hello", "createdAt": WHEN})], did=OTHER)),
        (12, commit_frame(12, [("create", "app.bsky.feed.repost/3lmxjza3h2i23",
                                {"$type": "app.bsky.feed.repost", "subject": ref, "createdAt": WHEN}),
                               ("create", "app.bsky.feed.post/3lmxjza3h2i24",
                                {"$type": "app.bsky.feed.post", "text": "reply", "createdAt": WHEN,
                                 "reply": {"root": ref, "parent": ref}}),
                               ("create", "app.bsky.feed.post/3lmxjza3h2i25",
                                {"$type": "app.bsky.feed.post", "text": "quote", "createdAt": WHEN,
                                 "embed": {"$type": "app.bsky.embed.record", "record": ref}}),
                               ("create", "app.bsky.graph.follow/3lmxjza3h2i26",
                                {"$type": "app.bsky.graph.follow", "subject": OTHER, "createdAt": WHEN})])),
        (13, commit_frame(13, [("create", "app.bsky.feed.like/3lmxjza3h2i28",
                                {"$type": "app.bsky.feed.like", "subject": ref, "createdAt": WHEN})], did=OTHER)),
    ]
    push(redis_store.connect(), frames)
    drain()
    stored = Post.objects.get(uri=post)
    assert (stored.like_count, stored.repost_count, stored.reply_count, stored.quote_count) == (2, 1, 1, 1)
    assert Actor.objects.get(did=OTHER).followers_count == 1
    assert Actor.objects.get(did=DID).posts_count == 2
    # Deletes, and the same creates delivered again (ignored: older than the deletes).
    push(redis_store.connect(), [
        (20, commit_frame(20, [("delete", "app.bsky.feed.like/3lmxjza3h2i22", None),
                               ("delete", "app.bsky.feed.post/3lmxjza3h2i24", None),
                               ("delete", "app.bsky.graph.follow/3lmxjza3h2i26", None)])),
    ])
    push(redis_store.connect(), frames, explicit_ids=False)
    drain()
    stored.refresh_from_db()
    assert (stored.like_count, stored.repost_count, stored.reply_count, stored.quote_count) == (1, 1, 0, 1)
    assert Actor.objects.get(did=OTHER).followers_count == 0
    assert Actor.objects.get(did=DID).posts_count == 1
    assert_aggregates_match_rows()


def test_it_moves_counts_when_an_update_changes_what_a_record_points_at() -> None:
    first = {"uri": f"at://{OTHER}/app.bsky.feed.post/3lmxjza3h2i31", "cid": CID}
    second = {"uri": f"at://{OTHER}/app.bsky.feed.post/3lmxjza3h2i32", "cid": CID}
    third_party = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"

    def like(seq: int, action: str, subject: dict[str, str]) -> tuple[int, bytes]:
        return (seq, commit_frame(seq, [(action, "app.bsky.feed.like/3lmxjza3h2i33",
                                         {"$type": "app.bsky.feed.like", "subject": subject, "createdAt": WHEN})]))

    def follow(seq: int, action: str, subject: str) -> tuple[int, bytes]:
        return (seq, commit_frame(seq, [(action, "app.bsky.graph.follow/3lmxjza3h2i34",
                                         {"$type": "app.bsky.graph.follow", "subject": subject, "createdAt": WHEN})]))

    posts = [(seq, commit_frame(seq, [("create", f"app.bsky.feed.post/{rkey}",
                                       {"$type": "app.bsky.feed.post", "text": rkey, "createdAt": WHEN})], did=OTHER))
             for seq, rkey in ((10, "3lmxjza3h2i31"), (11, "3lmxjza3h2i32"))]
    push(redis_store.connect(), [*posts, like(12, "create", first), follow(13, "create", OTHER)])
    drain()
    push(redis_store.connect(), [like(20, "update", second), follow(21, "update", third_party)])
    # The older versions again, as a redelivery would bring them: they change nothing.
    push(redis_store.connect(), [like(12, "create", first), follow(13, "create", OTHER)], explicit_ids=False)
    drain()
    counts = dict(Post.objects.values_list("uri", "like_count"))
    assert counts == {first["uri"]: 0, second["uri"]: 1}
    assert Actor.objects.get(did=OTHER).followers_count == 0
    assert Actor.objects.get(did=third_party).followers_count == 1
    assert Actor.objects.get(did=DID).follows_count == 1
    assert_aggregates_match_rows()
