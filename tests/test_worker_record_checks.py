"""Record checks that keep bad data out of what readers see: a reply must name its root and parent posts,
a threadgate or postgate its own post, a required createdAt must be a valid datetime, a self-keyed
collection has only the record "self"; a far-future or NULL createdAt never puts a post first in a feed.
Each refused record is counted in ``errors`` and leaves the rest of its commit indexed."""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client as DjangoClient

from appview.indexing.collections import TABLE_BY_COLLECTION
from appview.indexing.tables import SELF_KEY, SELF_KEYED_COLLECTIONS
from appview.models import MODEL_BY_COLLECTION, Actor, GenericRecord, Post, Postgate, Profile, Threadgate
from harness.events import DID, WHEN, commit_frame, push
from pipeline import redis_store
from protocol import syntax
from tests.conftest import FIXTURES, SYNTAX, fixture_files
from tests.worker_helpers import CID, OTHER, drain, metrics

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
LEXICON_FOLDERS = (ROOT / "xrpc" / "lexicons", FIXTURES / "lexicons")
BASE32_SORTABLE = "234567abcdefghijklmnopqrstuvwxyz"
PARENT = f"at://{OTHER}/app.bsky.feed.post/3lmxjza3h2i27"
ROOT_POST = f"at://{OTHER}/app.bsky.feed.post/3lmxjza3h2i22"


def tid(n: int) -> str:
    """The n-th of a series of increasing TIDs, all later than harness.events.TID (revs and record keys)."""
    suffix = "".join(BASE32_SORTABLE[(n >> shift) & 31] for shift in range(25, -1, -5))
    return "3lmxjzb" + suffix


def fixture_lines(name: str) -> list[str]:
    text = fixture_files(SYNTAX, f"{name}.txt")[0].read_text()
    return [line for line in text.split("\n") if line and not line.startswith("#")]


def post(text: str, **fields: Any) -> dict[str, Any]:
    return {"$type": "app.bsky.feed.post", "text": text, "createdAt": WHEN, **fields}


def ref(uri: str = PARENT, cid: Any = CID) -> dict[str, Any]:
    return {"uri": uri, "cid": cid}


def index(*commits: list[tuple[str, str, dict[str, Any] | None]], did: str = DID, first: int = 1) -> int:
    """Pushes one #commit per list of (action, "collection/rkey", record), with increasing seqs and revs,
    runs a worker over them, and returns the ``errors`` it counted."""
    frames = [(seq, commit_frame(seq, ops, did=did, rev=tid(seq)))
              for seq, ops in enumerate(commits, start=first)]
    client = redis_store.connect()
    push(client, frames)
    drain()
    return metrics(client)["errors"]


def stored_uris(did: str = DID) -> set[str]:
    """The URIs of every record of ``did`` in the index, whatever its table."""
    uris = set(GenericRecord.objects.filter(did=did).values_list("uri", flat=True))
    for model in MODEL_BY_COLLECTION.values():
        uris.update(model.objects.filter(did=did).values_list("uri", flat=True))
    return uris


def test_it_refuses_a_reply_whose_root_or_parent_is_not_a_strong_reference_to_a_post() -> None:
    bad_replies = [
        "at://not/an/object",
        {"parent": ref()},
        {"root": ref(ROOT_POST)},
        {"root": ROOT_POST, "parent": ref()},
        {"root": ref(ROOT_POST), "parent": ref("at://alice.test/app.bsky.feed.post/3lmxjza3h2i27")},
        {"root": ref(f"at://{OTHER}/app.bsky.feed.like/3lmxjza3h2i22"), "parent": ref()},
        {"root": ref(ROOT_POST), "parent": ref(f"at://{OTHER}")},
        {"root": ref(ROOT_POST), "parent": ref(f"at://{OTHER}/app.bsky.feed.post")},
        {"root": ref(f"at://{OTHER}/app.bsky.feed.post/a/b"), "parent": ref()},
        {"root": ref("https://bsky.app/profile/x/post/3lmxjza3h2i22"), "parent": ref()},
        {"root": ref(ROOT_POST, cid="not a cid!"), "parent": ref()},
        {"root": ref(ROOT_POST), "parent": {"uri": PARENT}},
        {"root": ref(ROOT_POST), "parent": ref(cid=None)},
    ]
    good = f"at://{DID}/app.bsky.feed.post/{tid(0)}"
    ops = [("create", f"app.bsky.feed.post/{tid(0)}", post("good", reply={"root": ref(ROOT_POST), "parent": ref()}))]
    ops += [("create", f"app.bsky.feed.post/{tid(n)}", post(f"bad {n}", reply=reply))
            for n, reply in enumerate(bad_replies, start=1)]

    errors = index(ops)

    assert errors == len(bad_replies)
    assert stored_uris() == {good}
    stored = Post.objects.get(uri=good)
    assert (stored.reply_root_uri, stored.reply_parent_uri) == (ROOT_POST, PARENT)


@pytest.mark.parametrize("collection", ["app.bsky.feed.threadgate", "app.bsky.feed.postgate"])
def test_it_refuses_a_gate_that_does_not_share_repo_and_rkey_with_its_post(collection: str) -> None:
    rkey = tid(0)
    bad_posts = [
        f"at://{OTHER}/app.bsky.feed.post/{tid(1)}",  # another repo's post under the same rkey
        f"at://{DID}/app.bsky.feed.post/{tid(0)}",  # its own repo, another rkey
        f"at://alice.test/app.bsky.feed.post/{tid(3)}",  # a handle, even one that might be its own
        f"at://{DID}/app.bsky.feed.like/{tid(4)}",  # not a post
        f"at://{DID}/app.bsky.feed.post/{tid(5)}/x",
        None,
    ]

    def gate(post_uri: str | None) -> dict[str, Any]:
        return {"$type": collection, "post": post_uri, "createdAt": WHEN}

    ops = [("create", f"{collection}/{rkey}", gate(f"at://{DID}/app.bsky.feed.post/{rkey}"))]
    ops += [("create", f"{collection}/{tid(n)}", gate(uri)) for n, uri in enumerate(bad_posts, start=1)]

    errors = index(ops)

    assert errors == len(bad_posts)
    assert stored_uris() == {f"at://{DID}/{collection}/{rkey}"}
    model = Threadgate if collection == "app.bsky.feed.threadgate" else Postgate
    assert list(model.objects.values_list("post_uri", flat=True)) == [f"at://{DID}/app.bsky.feed.post/{rkey}"]


def test_it_refuses_a_required_created_at_the_datetime_syntax_refuses_and_stores_an_optional_one_null() -> None:
    invalid = fixture_lines("datetime_syntax_invalid") + fixture_lines("datetime_parse_invalid")
    valid = fixture_lines("datetime_syntax_valid")
    ops: list[tuple[str, str, dict[str, Any] | None]] = []
    for n, value in enumerate(invalid):
        ops.append(("create", f"app.bsky.feed.post/{tid(n)}", post("invalid", createdAt=value)))
        ops.append(("create", f"com.example.note/{tid(n)}", {"$type": "com.example.note", "createdAt": value}))
    valid_posts = {f"at://{DID}/app.bsky.feed.post/{tid(1000 + n)}": value for n, value in enumerate(valid)}
    ops += [("create", uri.removeprefix(f"at://{DID}/"), post("valid", createdAt=value))
            for uri, value in valid_posts.items()]
    without = post("no createdAt")
    del without["createdAt"]
    ops.append(("create", f"app.bsky.feed.post/{tid(2000)}", without))
    ops.append(("create", f"app.bsky.feed.like/{tid(2001)}", {"$type": "app.bsky.feed.like", "subject": ref()}))
    ops.append(("create", "app.bsky.actor.profile/self",
                {"$type": "app.bsky.actor.profile", "displayName": "a", "createdAt": "2025-04-16T21:30:26"}))
    unrepresentable = [value for value in valid if syntax.parse_datetime(value) is None]

    errors = index(ops)

    # Refused: the invalid posts, the post and the like without createdAt. Stored NULL and counted: the
    # notes and the profile with an invalid one, the posts with a valid one Python cannot hold (year 0).
    assert errors == 2 * len(invalid) + 2 + 1 + len(unrepresentable)
    assert unrepresentable == ["0000-01-01T00:00:00.000Z"]
    assert set(Post.objects.values_list("uri", flat=True)) == set(valid_posts)
    assert {uri: created_at for uri, created_at in Post.objects.values_list("uri", "created_at")} == {
        uri: syntax.parse_datetime(value) for uri, value in valid_posts.items()}
    assert GenericRecord.objects.count() == len(invalid)
    assert not GenericRecord.objects.exclude(created_at=None).exists()
    assert Profile.objects.get(did=DID).created_at is None
    assert Profile.objects.get(did=DID).display_name == "a"
    # Where the lexicon makes createdAt optional, a record without one is valid.
    profile = ("create", "app.bsky.actor.profile/self", {"$type": "app.bsky.actor.profile", "displayName": "b"})
    assert index([profile], did=OTHER, first=2) == errors
    assert Profile.objects.get(did=OTHER).created_at is None


def test_it_accepts_only_the_rkey_self_in_a_self_keyed_collection() -> None:
    extra_fields = {
        "app.bsky.actor.profile": {"displayName": "the one"},
        "app.bsky.actor.status": {"status": "app.bsky.actor.status#live"},
        "app.bsky.labeler.service": {"policies": {"labelValues": []}},
        "app.bsky.notification.declaration": {"allowSubscriptions": "followers"},
        "chat.bsky.actor.declaration": {"allowIncoming": "all"},
        "com.germnetwork.declaration": {"version": "1.0.0", "currentKey": b"\x01" * 33},
    }

    def record(collection: str, **fields: Any) -> dict[str, Any]:
        return {"$type": collection, "createdAt": WHEN, **extra_fields.get(collection, {}), **fields}

    ops: list[tuple[str, str, dict[str, Any] | None]] = []
    for n, collection in enumerate(sorted(SELF_KEYED_COLLECTIONS)):
        ops.append(("create", f"{collection}/{SELF_KEY}", record(collection)))
        # After the good one, so that a profile under another key would be the latest to name the actor.
        ops.append(("create", f"{collection}/notself", record(collection, displayName="impostor")))
        ops.append(("create", f"{collection}/{tid(n)}", record(collection, displayName="impostor")))

    errors = index(ops)

    assert errors == 2 * len(SELF_KEYED_COLLECTIONS)
    assert stored_uris() == {f"at://{DID}/{collection}/{SELF_KEY}" for collection in SELF_KEYED_COLLECTIONS}
    assert Actor.objects.get(did=DID).display_name == "the one"


def record_lexicons() -> dict[str, dict[str, Any]]:
    """The record definitions of the lexicons at hand (the read API's, and the self-keyed ones it lacks)."""
    found: dict[str, dict[str, Any]] = {}
    for folder in LEXICON_FOLDERS:
        for path in fixture_files(folder, "**/*.json"):
            lexicon = json.loads(path.read_text())
            main = lexicon.get("defs", {}).get("main", {})
            if main.get("type") == "record":
                found[lexicon["id"]] = main
    return found


def test_it_takes_self_keys_and_required_created_at_from_the_lexicons() -> None:
    lexicons = record_lexicons()
    assert {nsid for nsid, main in lexicons.items() if main["key"] == "literal:self"} == SELF_KEYED_COLLECTIONS
    required = {nsid: "createdAt" in main["record"].get("required", []) for nsid, main in lexicons.items()}
    assert {spec.collection: spec.created_at_required for spec in TABLE_BY_COLLECTION.values()} == {
        collection: required[collection] for collection in TABLE_BY_COLLECTION}


def test_it_does_not_put_a_far_future_or_null_created_at_post_first_in_an_author_feed() -> None:
    def op(n: int, text: str, created_at: str) -> tuple[str, str, dict[str, Any]]:
        return "create", f"app.bsky.feed.post/{tid(n)}", post(text, createdAt=created_at)

    first_errors = index([op(1, "old", "2020-01-01T00:00:00.000Z"), op(2, "future", "9999-12-31T23:59:59.999Z"),
                          op(3, "year zero", "0000-01-01T00:00:00.000Z"), op(4, "no timezone", "2025-04-16T21:30:26")])
    # Written after the first batch was indexed: later than its indexed_at.
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    errors = index([op(5, "recent", now)], first=2)

    assert first_errors == errors == 2  # year zero stored NULL, no timezone refused; nothing wrong after
    response = DjangoClient().get("/xrpc/app.bsky.feed.getAuthorFeed", {"actor": DID})
    assert response.status_code == 200
    texts = [item["post"]["record"]["text"] for item in response.json()["feed"]]
    assert texts[0] == "recent" and texts[-1] == "old"
    assert sorted(texts[1:3]) == ["future", "year zero"] and len(texts) == 4
    with connection.cursor() as cursor:
        cursor.execute("SELECT text, created_at IS NULL, sort_at = indexed_at FROM appview_post WHERE text IN"
                       " ('future', 'year zero') ORDER BY text")
        assert cursor.fetchall() == [("future", False, True), ("year zero", True, True)]
