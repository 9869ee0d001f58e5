"""Bad input never stops a worker: invalid values are rejected or stored sanitised and counted; an event
that keeps failing goes to the dead letters while the rest of its batch is indexed."""

from typing import Any

import pytest
from django.db import connection

from appview.models import (
    Actor,
    FeedGenerator,
    Follow,
    GenericRecord,
    Like,
    ListBlock,
    ListItem,
    Post,
    Profile,
    Verification,
)
from harness.events import DID, WHEN, commit_frame, push, rev_of
from pipeline import redis_store
from protocol import syntax
from tests.conftest import SYNTAX
from tests.worker_helpers import CID, OTHER, drain, event_frame, metrics, post_trigger, push_raw

pytestmark = pytest.mark.django_db(transaction=True)

POST = f"at://{OTHER}/app.bsky.feed.post/3lmxjza3h2i27"


def invalid(name: str) -> list[str]:
    lines = (SYNTAX / f"{name}_invalid.txt").read_text().split("\n")
    return [line for line in lines if line and not line.startswith("#")]


def like(uri: str, cid: str = CID) -> dict[str, Any]:
    return {"$type": "app.bsky.feed.like", "subject": {"uri": uri, "cid": cid}, "createdAt": WHEN}


def post(**fields: Any) -> dict[str, Any]:
    return {"$type": "app.bsky.feed.post", "text": "hi", "createdAt": WHEN, **fields}


class Placements:
    """Frames each holding one invalid value, and how many of them the worker must count as errors."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []
        self.bad = 0

    def record(self, collection: str, record: dict[str, Any], *, bad: bool = True) -> None:
        seq = len(self.frames) + 1
        self.frames.append((seq, commit_frame(seq, [("create", f"{collection}/r{seq}", record)])))
        self.bad += bad

    def frame(self, frame: bytes, *, bad: bool = True) -> None:
        self.frames.append((len(self.frames) + 1, frame))
        self.bad += bad


def test_it_rejects_or_sanitises_every_invalid_syntax_value() -> None:
    places = Placements()
    for value in invalid("aturi_syntax") + invalid("uri_syntax"):
        places.record("app.bsky.feed.like", like(value))
        places.record("app.bsky.graph.listblock", {"$type": "app.bsky.graph.listblock", "subject": value,
                                                   "createdAt": WHEN})
        places.record("app.bsky.feed.post", post(reply={"root": {"uri": value, "cid": CID},
                                                        "parent": {"uri": value, "cid": CID}}))
        places.record("app.bsky.feed.post", post(embed={"$type": "app.bsky.embed.record",
                                                        "record": {"uri": value, "cid": CID}}))
    for value in invalid("atidentifier_syntax"):
        uri = f"at://{value}/app.bsky.feed.post/3lmxjza3h2i27"
        places.record("app.bsky.feed.like", like(uri), bad=not syntax.is_at_uri(uri))
    for value in invalid("did_syntax"):
        places.record("app.bsky.graph.follow", {"$type": "app.bsky.graph.follow", "subject": value,
                                                "createdAt": WHEN})
        places.record("app.bsky.graph.listitem", {"$type": "app.bsky.graph.listitem", "subject": value,
                                                  "list": POST, "createdAt": WHEN})
        places.record("app.bsky.feed.generator", {"$type": "app.bsky.feed.generator", "did": value,
                                                  "displayName": "feed", "createdAt": WHEN})
        places.frame(event_frame(len(places.frames) + 1, "#account", did=value, active=True))
    for value in invalid("handle_syntax"):
        # The handle an #identity event carries is only a hint (the DID document is the authority): not an error.
        places.frame(event_frame(len(places.frames) + 1, "#identity", handle=value), bad=False)
        places.record("app.bsky.graph.verification", {"$type": "app.bsky.graph.verification", "subject": OTHER,
                                                      "handle": value, "displayName": "x", "createdAt": WHEN})
    for value in invalid("datetime_syntax") + invalid("datetime_parse"):
        places.record("app.bsky.feed.post", post(createdAt=value))
    for value in invalid("language_syntax") + invalid("language_parse"):
        places.record("app.bsky.feed.post", post(langs=[value]))
    for value in invalid("nsid_syntax"):
        places.frame(commit_frame(len(places.frames) + 1, [("create", f"{value}/r1", {"$type": "x"})]))
    for value in invalid("recordkey_syntax"):
        places.frame(commit_frame(len(places.frames) + 1, [("create", f"app.bsky.feed.like/{value}", like(POST))]))
    for value in invalid("tid_syntax"):
        places.frame(commit_frame(len(places.frames) + 1, [("create", "app.bsky.feed.like/3lmxjza3h2i22",
                                                            like(POST))], rev=value))
        places.frame(event_frame(len(places.frames) + 1, "#sync", rev=value))
    for value in invalid("cid_syntax"):
        places.record("app.bsky.feed.like", like(POST, cid=value))
    # A valid record after all of them: the worker is still indexing.
    places.record("app.bsky.feed.post", post(text="still here"), bad=False)

    push(redis_store.connect(), places.frames)
    drain(batch_size=97)

    counted = metrics(redis_store.connect())
    assert counted["totalEvents"] == len(places.frames)
    assert counted["errors"] == places.bad
    assert Post.objects.filter(text="still here").exists()
    # What was stored holds only valid values.
    assert all(syntax.is_at_uri(uri) for uri in Like.objects.values_list("subject_uri", flat=True))
    assert set(Like.objects.values_list("subject_cid", flat=True)) <= {CID, ""}
    assert ListBlock.objects.count() == 0
    assert Follow.objects.count() == 0 and ListItem.objects.count() == 0
    assert set(FeedGenerator.objects.values_list("service_did", flat=True)) == {""}
    assert not Post.objects.exclude(reply_parent_uri=None).exists()
    assert not Post.objects.exclude(quote_uri=None).exists()
    assert all(syntax.is_language(lang) for langs in Post.objects.values_list("langs", flat=True) for lang in langs)
    assert not Post.objects.filter(created_at=None).exists()  # a post's createdAt is required: invalid, it is refused
    assert set(Verification.objects.values_list("handle", flat=True)) == {""}
    assert Actor.objects.get(did=DID).handle is None
    assert all(syntax.is_did(did) for did in Actor.objects.values_list("did", flat=True))
    # The rev of the newest valid commit: no #sync (all had an invalid rev) and no commit with an invalid rev moved it.
    assert Actor.objects.get(did=DID).rev == rev_of(len(places.frames))


def test_it_stores_nul_characters_and_huge_texts_sanitised() -> None:
    huge = "x" * (1024 * 1024)
    frames = [
        (1, commit_frame(1, [("create", "app.bsky.feed.post/3lmxjza3h2i22", post(text="a\x00b" + huge))])),
        (2, commit_frame(2, [("create", "app.bsky.actor.profile/self",
                              {"$type": "app.bsky.actor.profile", "displayName": "nul\x00name",
                               "description": "d\x00" * 10})])),
        (3, commit_frame(3, [("create", "com.example.note/3lmxjza3h2i23",
                              {"$type": "com.example.note", "k\x00ey": ["v\x00", {"deep\x00": "\x00"}],
                               "big": 2**64 - 1, "blob": b"\x00\x01"})])),
        (4, commit_frame(4, [("create", "com.example.note/3lmxjza3h2i24",
                              {"$type": "com.example.note", "text": huge})])),
        (5, commit_frame(5, [("create", "app.bsky.feed.post/3lmxjza3h2i25", post(text="after"))])),
    ]
    push(redis_store.connect(), frames)
    drain()

    stored = Post.objects.get(uri=f"at://{DID}/app.bsky.feed.post/3lmxjza3h2i22")
    assert stored.text == "ab" + "x" * 2998  # NUL removed, cut at the lexicon's bound
    with connection.cursor() as cursor:
        cursor.execute("SELECT max(pg_column_size(raw)) FROM appview_post")
        assert cursor.fetchone()[0] <= 64 * 1024
    assert Profile.objects.get().display_name == "nulname"
    assert Actor.objects.get(did=DID).display_name == "nulname"
    note = GenericRecord.objects.get(uri=f"at://{DID}/com.example.note/3lmxjza3h2i23")
    assert note.raw["key"] == ["v", {"deep": ""}]
    assert note.raw["big"] == 2**64 - 1
    assert note.raw["blob"] == {"$bytes": "AAE"}  # the data model's base64 has no padding
    truncated = GenericRecord.objects.get(uri=f"at://{DID}/com.example.note/3lmxjza3h2i24")
    assert truncated.raw == {"$type": "com.example.note", "text": "x" * 16384}
    assert Post.objects.filter(text="after").exists()
    assert metrics(redis_store.connect())["errors"] == 4


def test_it_counts_an_undecodable_frame_and_goes_on() -> None:
    client = redis_store.connect()
    push(client, [(1, commit_frame(1, [("create", "app.bsky.feed.like/3lmxjza3h2i22", like(POST))]))])
    push_raw(client, 2, b"\xff\x00 not cbor")
    push(client, [(3, commit_frame(3, [("create", "app.bsky.feed.like/3lmxjza3h2i23", like(POST))]))])
    drain()
    assert Like.objects.count() == 2
    assert metrics(client) == {"totalEvents": 3, "#commit": 3, "#identity": 0, "#account": 0, "#sync": 0, "errors": 1}


def test_it_sends_a_poison_event_to_dead_letters_and_commits_the_rest_of_its_batch() -> None:
    # A database that refuses one record: the worker cannot know in advance, so it must isolate it.
    with post_trigger("IF NEW.text = 'poison' THEN RAISE EXCEPTION 'poisoned record'; END IF;", on="INSERT OR UPDATE"):
        frames = [(seq, commit_frame(seq, [("create", f"app.bsky.feed.post/3lmxjza3h2i{seq:02d}",
                                             post(text="poison" if seq == 7 else f"post {seq}"))]))
                  for seq in range(1, 21)]
        client = redis_store.connect()
        push(client, frames)
        worker = drain(batch_size=20)

    assert Post.objects.count() == 19
    assert not Post.objects.filter(text="poison").exists()
    dead = client.xrange(redis_store.dead_letters_stream())
    assert len(dead) == 1
    _, fields = dead[0]
    assert fields[b"seq"] == b"7" and fields[b"t"] == b"#commit" and fields[b"frame"] == frames[6][1]
    assert b"poisoned record" in fields[b"error"]
    assert fields[b"worker"] == b"test-worker" and float(fields[b"failed_at"]) > 0
    assert metrics(client) == {"totalEvents": 20, "#commit": 20, "#identity": 0, "#account": 0, "#sync": 0,
                               "errors": 1}
    assert (worker.stats.processed, worker.stats.dead) == (20, 1)
    assert client.xpending(redis_store.events_stream(), redis_store.CONSUMER_GROUP)["pending"] == 0
