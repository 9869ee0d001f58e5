"""Every query of the read API answers, for meaningful parameters on a real indexed network, a body that
its official lexicon's output schema accepts (checked by ``tests/lexicon_validator.py``), and the validator
itself rejects broken bodies, so that these tests can fail."""

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client

from harness.events import push
from pipeline import redis_store
from tests import lexicon_validator
from tests.worker_helpers import drain
from tests.xrpc_network import Network, _Builder, build
from xrpc.queries import QUERIES

pytestmark = pytest.mark.django_db(transaction=True)

UNKNOWN_DID = "did:plc:nobodyxxxxxxxxxxxxxxxxxx"
EMBED = "app.bsky.embed"
FEED = "app.bsky.feed.defs"
GRAPH = "app.bsky.graph.defs"
# Pages followed through their cursors, at most, per parameter set.
MAX_PAGES = 4


def types_in(value: Any) -> set[str]:
    """Every ``$type`` anywhere in a JSON value."""
    found: set[str] = set()
    if isinstance(value, dict):
        if isinstance(value.get("$type"), str):
            found.add(value["$type"])
        for item in value.values():
            found |= types_in(item)
    elif isinstance(value, list):
        for item in value:
            found |= types_in(item)
    return found


def uris(items: list[dict[str, Any]], key: str = "uri") -> list[str]:
    return [item[key] for item in items]


@dataclass(frozen=True)
class Case:
    """Parameters of one call (from the network), and what its first page must show: a case whose
    answer is empty would validate without checking anything."""

    label: str
    params: Callable[[Network], dict[str, Any]]
    expect: Callable[[dict[str, Any], Network], bool]


def case(label: str, params: Callable[[Network], dict[str, Any]],
         expect: Callable[[dict[str, Any], Network], bool]) -> Case:
    return Case(label, params, expect)


def posts_of(n: Network, *names: str) -> list[str]:
    return [n.uri(name) for name in names]


CASES: dict[str, list[Case]] = {
    "app.bsky.actor.getProfile": [
        case("by DID, pinned post", lambda n: {"actor": n.alice},
             lambda b, n: b["did"] == n.alice and b["pinnedPost"]["uri"] == n.uri("pinned")),
        case("by handle", lambda n: {"actor": "alice.test"}, lambda b, n: b["handle"] == "alice.test"),
        case("by handle in capitals", lambda n: {"actor": "BOB.TEST"}, lambda b, n: b["did"] == n.bob),
        case("blocking account", lambda n: {"actor": n.gina}, lambda b, n: b["did"] == n.gina),
    ],
    "app.bsky.actor.getProfiles": [
        case("visible, hidden and unknown", lambda n: {"actors": [n.alice, "bob.test", n.carol, n.erin, n.dave,
                                                                   n.frank, UNKNOWN_DID, "nobody.test"]},
             lambda b, n: uris(b["profiles"], "did") == [n.alice, n.bob, n.carol]),
        case("one", lambda n: {"actors": [n.gina]}, lambda b, n: len(b["profiles"]) == 1),
    ],
    "app.bsky.actor.searchActors": [
        case("q prefix", lambda n: {"q": "a"}, lambda b, n: uris(b["actors"], "did") == [n.alice]),
        case("term with @", lambda n: {"term": "@bo"}, lambda b, n: uris(b["actors"], "did") == [n.bob]),
        case("empty q and term", lambda n: {"q": "", "term": "", "limit": 1}, lambda b, n: b["actors"] == []),
        case("limit 1", lambda n: {"q": "c", "limit": 1}, lambda b, n: uris(b["actors"], "did") == [n.carol]),
        case("no match", lambda n: {"q": "zzz"}, lambda b, n: b["actors"] == []),
    ],
    "app.bsky.actor.searchActorsTypeahead": [
        case("q", lambda n: {"q": "ali"}, lambda b, n: uris(b["actors"], "did") == [n.alice]),
        case("term, hidden left out", lambda n: {"term": "e"}, lambda b, n: b["actors"] == []),
        case("limit", lambda n: {"q": "g", "limit": 1}, lambda b, n: uris(b["actors"], "did") == [n.gina]),
    ],
    "app.bsky.feed.getAuthorFeed": [
        *[case(f"filter {kind}", lambda n, kind=kind: {"actor": n.alice, "filter": kind},
               lambda b, n: len(b["feed"]) > 0)
          for kind in ("posts_with_replies", "posts_no_replies", "posts_with_media", "posts_and_author_threads")],
        case("filter posts_with_video", lambda n: {"actor": n.bob, "filter": "posts_with_video"},
             lambda b, n: uris([item["post"] for item in b["feed"]]) == [n.uri("video")]),
        case("includePins", lambda n: {"actor": "alice.test", "includePins": "true"},
             lambda b, n: b["feed"][0]["reason"]["$type"] == f"{FEED}#reasonPin"),
        case("paged with pins", lambda n: {"actor": n.alice, "includePins": "true", "limit": 2},
             lambda b, n: len(b["feed"]) == 3 and "cursor" in b),
        case("reposts", lambda n: {"actor": n.carol, "limit": 3},
             lambda b, n: f"{FEED}#reasonRepost" in types_in(b) and f"{EMBED}.images#view" in types_in(b)),
        case("replies to a missing post", lambda n: {"actor": n.bob, "filter": "posts_with_replies"},
             lambda b, n: f"{FEED}#notFoundPost" in types_in(b)),
        case("quotes of every kind", lambda n: {"actor": n.carol, "filter": "posts_no_replies"},
             lambda b, n: {f"{EMBED}.record#viewNotFound", f"{EMBED}.record#viewDetached",
                           f"{EMBED}.record#viewRecord"} <= types_in(b)),
    ],
    "app.bsky.feed.getPosts": [
        case("every embed", lambda n: {"uris": posts_of(n, "quote", "quote_with_media", "detached_quote",
                                                        "alice_quotes_gina", "quote_of_missing", "quote_of_hidden",
                                                        "images", "external", "video", "hello")},
             lambda b, n: len(b["posts"]) == 10),
        case("quote", lambda n: {"uris": posts_of(n, "quote")},
             lambda b, n: b["posts"][0]["embed"]["record"]["$type"] == f"{EMBED}.record#viewRecord"),
        case("recordWithMedia", lambda n: {"uris": posts_of(n, "quote_with_media")},
             lambda b, n: b["posts"][0]["embed"]["$type"] == f"{EMBED}.recordWithMedia#view"
             and b["posts"][0]["embed"]["record"]["record"]["embeds"][0]["$type"] == f"{EMBED}.images#view"),
        case("detached", lambda n: {"uris": posts_of(n, "detached_quote")},
             lambda b, n: b["posts"][0]["embed"]["record"]["$type"] == f"{EMBED}.record#viewDetached"),
        case("blocked", lambda n: {"uris": posts_of(n, "alice_quotes_gina")},
             lambda b, n: b["posts"][0]["embed"]["record"]["$type"] == f"{EMBED}.record#viewBlocked"),
        case("missing quote", lambda n: {"uris": posts_of(n, "quote_of_missing")},
             lambda b, n: b["posts"][0]["embed"]["record"]["$type"] == f"{EMBED}.record#viewNotFound"),
        case("hidden quote", lambda n: {"uris": posts_of(n, "quote_of_hidden")},
             lambda b, n: b["posts"][0]["embed"]["record"]["$type"] == f"{EMBED}.record#viewNotFound"),
        case("images", lambda n: {"uris": posts_of(n, "images")},
             lambda b, n: len(b["posts"][0]["embed"]["images"]) == 2),
        case("external", lambda n: {"uris": posts_of(n, "external")},
             lambda b, n: b["posts"][0]["embed"]["$type"] == f"{EMBED}.external#view"),
        case("video", lambda n: {"uris": posts_of(n, "video")},
             lambda b, n: b["posts"][0]["embed"]["$type"] == f"{EMBED}.video#view"),
        case("hidden, missing and repeated", lambda n: {"uris": [*posts_of(n, "takendown_post", "dave_post", "hello",
                                                                           "hello"),
                                                                 f"at://{n.bob}/app.bsky.feed.post/3jzfcijpj2z2a"]},
             lambda b, n: uris(b["posts"]) == [n.uri("hello")]),
    ],
    "app.bsky.feed.getPostThread": [
        case("root", lambda n: {"uri": n.uri("root")},
             lambda b, n: uris([r["post"] for r in b["thread"]["replies"]]) == posts_of(n, "reply_alice", "reply_carol")
             and "threadgate" in b["thread"]["post"]),
        case("root, depth 0", lambda n: {"uri": n.uri("root"), "depth": 0}, lambda b, n: b["thread"]["replies"] == []),
        case("root, depth 1", lambda n: {"uri": n.uri("root"), "depth": 1, "parentHeight": 0},
             lambda b, n: all(reply["replies"] == [] for reply in b["thread"]["replies"])),
        case("nested reply", lambda n: {"uri": n.uri("reply_nested")},
             lambda b, n: b["thread"]["parent"]["parent"]["post"]["uri"] == n.uri("root")),
        case("nested reply, parentHeight 1", lambda n: {"uri": n.uri("reply_nested"), "parentHeight": 1},
             lambda b, n: "parent" not in b["thread"]["parent"]),
        case("reply to a missing post", lambda n: {"uri": n.uri("reply_to_missing")},
             lambda b, n: b["thread"]["parent"]["$type"] == f"{FEED}#notFoundPost"),
        case("reply with replies", lambda n: {"uri": n.uri("reply_carol"), "depth": 2, "parentHeight": 5},
             lambda b, n: uris([r["post"] for r in b["thread"]["replies"]]) == [n.uri("reply_nested")]),
        case("quote post", lambda n: {"uri": n.uri("quote_with_media")},
             lambda b, n: b["thread"]["post"]["uri"] == n.uri("quote_with_media")),
    ],
    "app.bsky.feed.getLikes": [
        case("post", lambda n: {"uri": n.uri("hello")}, lambda b, n: len(b["likes"]) == 2),
        case("post with cid, paged", lambda n: {"uri": n.uri("hello"), "cid": n.cids["hello"], "limit": 1},
             lambda b, n: b["cid"] == n.cids["hello"] and len(b["likes"]) == 1 and "cursor" in b),
        case("feed generator", lambda n: {"uri": n.uri("feedgen")},
             lambda b, n: [like["actor"]["did"] for like in b["likes"]] == [n.bob]),
        case("unknown subject", lambda n: {"uri": f"at://{n.bob}/app.bsky.feed.post/3jzfcijpj2z2a"},
             lambda b, n: b["likes"] == []),
    ],
    "app.bsky.feed.getRepostedBy": [
        case("post", lambda n: {"uri": n.uri("hello")}, lambda b, n: uris(b["repostedBy"], "did") == [n.bob]),
        case("paged", lambda n: {"uri": n.uri("images"), "limit": 1, "cid": n.cids["images"]},
             lambda b, n: uris(b["repostedBy"], "did") == [n.carol]),
        case("not reposted", lambda n: {"uri": n.uri("video")}, lambda b, n: b["repostedBy"] == []),
    ],
    "app.bsky.feed.getQuotes": [
        case("post", lambda n: {"uri": n.uri("hello")}, lambda b, n: uris(b["posts"]) == [n.uri("quote")]),
        case("quoted with media", lambda n: {"uri": n.uri("images"), "limit": 1},
             lambda b, n: uris(b["posts"]) == [n.uri("quote_with_media")]),
        case("detached", lambda n: {"uri": n.uri("detached_target"), "cid": n.cids["detached_target"]},
             lambda b, n: b["posts"][0]["embed"]["record"]["$type"] == f"{EMBED}.record#viewDetached"),
        case("hidden author", lambda n: {"uri": n.uri("takendown_post")}, lambda b, n: len(b["posts"]) == 1),
    ],
    "app.bsky.feed.searchPosts": [
        case("word", lambda n: {"q": "alice"}, lambda b, n: len(b["posts"]) >= 2),
        case("words, paged", lambda n: {"q": "quoting", "limit": 1}, lambda b, n: len(b["posts"]) == 1),
        case("author and lang", lambda n: {"q": "hello", "author": "alice.test", "lang": "en"},
             lambda b, n: uris(b["posts"]) == [n.uri("hello")]),
        case("since and until", lambda n: {"q": "replies", "since": "2000-01-01T00:00:00Z",
                                           "until": "2100-01-01T00:00:00.000Z", "sort": "top"},
             lambda b, n: len(b["posts"]) >= 2),
        *[case(f"hidden author {word}", lambda n, word=word: {"q": word}, lambda b, n: b["posts"] == [])
          for word in ("here", "suspension", "leaving")],
        case("unknown author", lambda n: {"q": "hello", "author": UNKNOWN_DID}, lambda b, n: b["posts"] == []),
    ],
    "app.bsky.feed.getFeedGenerator": [
        case("generator", lambda n: {"feed": n.uri("feedgen")},
             lambda b, n: b["view"]["likeCount"] == 1 and b["view"]["did"] == "did:web:feeds.example.com"),
    ],
    "app.bsky.feed.getFeedGenerators": [
        case("known and unknown", lambda n: {"feeds": [n.uri("feedgen"), f"at://{n.bob}/app.bsky.feed.generator/x"]},
             lambda b, n: uris(b["feeds"]) == [n.uri("feedgen")]),
    ],
    "app.bsky.feed.getActorFeeds": [
        case("creator", lambda n: {"actor": n.alice}, lambda b, n: uris(b["feeds"]) == [n.uri("feedgen")]),
        case("paged", lambda n: {"actor": "alice.test", "limit": 1}, lambda b, n: len(b["feeds"]) == 1),
        case("none", lambda n: {"actor": n.bob}, lambda b, n: b["feeds"] == []),
    ],
    "app.bsky.graph.getFollowers": [
        case("actor", lambda n: {"actor": n.alice},
             lambda b, n: sorted(uris(b["followers"], "did")) == [n.bob, n.carol] and b["subject"]["did"] == n.alice),
        case("paged", lambda n: {"actor": "alice.test", "limit": 1}, lambda b, n: "cursor" in b),
        case("one follower", lambda n: {"actor": n.bob}, lambda b, n: uris(b["followers"], "did") == [n.alice]),
    ],
    "app.bsky.graph.getFollows": [
        case("actor", lambda n: {"actor": n.alice}, lambda b, n: uris(b["follows"], "did") == [n.bob]),
        case("paged", lambda n: {"actor": n.carol, "limit": 1}, lambda b, n: uris(b["follows"], "did") == [n.alice]),
        case("none", lambda n: {"actor": n.gina}, lambda b, n: b["follows"] == []),
    ],
    "app.bsky.graph.getList": [
        case("curate list", lambda n: {"list": n.uri("curatelist")},
             lambda b, n: b["list"]["listItemCount"] == 2 and len(b["items"]) == 2),
        case("paged", lambda n: {"list": n.uri("curatelist"), "limit": 1}, lambda b, n: "cursor" in b),
        case("mod list", lambda n: {"list": n.uri("modlist")}, lambda b, n: b["items"] == []),
    ],
    "app.bsky.graph.getLists": [
        case("all", lambda n: {"actor": n.alice}, lambda b, n: len(b["lists"]) == 2),
        case("modlist", lambda n: {"actor": n.alice, "purposes": ["modlist"]},
             lambda b, n: uris(b["lists"]) == [n.uri("modlist")]),
        case("curatelist", lambda n: {"actor": "alice.test", "purposes": ["curatelist"]},
             lambda b, n: uris(b["lists"]) == [n.uri("curatelist")]),
        case("both, paged", lambda n: {"actor": n.alice, "purposes": ["curatelist", "modlist"], "limit": 1},
             lambda b, n: len(b["lists"]) == 1),
        case("qualified purpose", lambda n: {"actor": n.alice, "purposes": [f"{GRAPH}#modlist"]},
             lambda b, n: len(b["lists"]) == 1),
        case("none", lambda n: {"actor": n.bob}, lambda b, n: b["lists"] == []),
    ],
    "app.bsky.graph.getStarterPack": [
        case("pack", lambda n: {"starterPack": n.uri("starterpack")},
             lambda b, n: b["starterPack"]["list"]["uri"] == n.uri("curatelist")
             and len(b["starterPack"]["listItemsSample"]) == 2),
    ],
    "app.bsky.graph.getActorStarterPacks": [
        case("creator", lambda n: {"actor": n.alice}, lambda b, n: uris(b["starterPacks"]) == [n.uri("starterpack")]),
        case("paged", lambda n: {"actor": "alice.test", "limit": 1}, lambda b, n: len(b["starterPacks"]) == 1),
        case("none", lambda n: {"actor": n.carol}, lambda b, n: b["starterPacks"] == []),
    ],
    "app.bsky.graph.getRelationships": [
        case("follows, blocks, unknown", lambda n: {"actor": n.alice,
                                                    "others": [n.bob, n.gina, n.erin, UNKNOWN_DID, "carol.test"]},
             lambda b, n: {f"{GRAPH}#relationship", f"{GRAPH}#notFoundActor"} == types_in(b)
             and b["relationships"][0]["following"] == n.uri("follow:alice:bob")),
        case("blocker", lambda n: {"actor": "gina.test", "others": [n.alice]},
             lambda b, n: b["actor"] == n.gina and b["relationships"][0]["blocking"] == n.uri("block:gina:alice")),
        case("no others", lambda n: {"actor": n.alice}, lambda b, n: b["relationships"] == []),
    ],
    "com.atproto.identity.resolveHandle": [
        case("handle", lambda n: {"handle": "alice.test"}, lambda b, n: b["did"] == n.alice),
        case("capitals", lambda n: {"handle": "GINA.Test"}, lambda b, n: b["did"] == n.gina),
    ],
    "com.atproto.repo.describeRepo": [
        case("by DID", lambda n: {"repo": n.alice},
             lambda b, n: b["handle"] == "alice.test" and "app.bsky.graph.starterpack" in b["collections"]),
        case("by handle", lambda n: {"repo": "bob.test"}, lambda b, n: b["did"] == n.bob),
    ],
    "com.atproto.repo.getRecord": [
        *[case(name, lambda n, name=name: {"repo": n.uri(name)[5:].split("/")[0],
                                           "collection": n.uri(name).split("/")[3], "rkey": n.uri(name).split("/")[4]},
               lambda b, n, name=name: b["uri"] == n.uri(name) and b["cid"] == n.cids[name])
          for name in ("root", "images", "profile:alice", "feedgen", "threadgate", "postgate", "curatelist",
                       "listitem:bob", "starterpack", "like:bob", "follow:bob:alice", "block:gina:alice")],
        case("by handle, with cid", lambda n: {"repo": "alice.test", "collection": "app.bsky.feed.post",
                                               "rkey": n.uri("hello").rsplit("/", 1)[1], "cid": n.cids["hello"]},
             lambda b, n: b["value"]["text"] == "hello world from alice"),
    ],
    "com.atproto.repo.listRecords": [
        case("posts", lambda n: {"repo": n.alice, "collection": "app.bsky.feed.post"},
             lambda b, n: len(b["records"]) >= 5),
        case("posts reversed, paged", lambda n: {"repo": n.alice, "collection": "app.bsky.feed.post", "limit": 2,
                                                 "reverse": "true"},
             lambda b, n: b["records"][0]["uri"] == n.uri("hello") and "cursor" in b),
        case("profile", lambda n: {"repo": "bob.test", "collection": "app.bsky.actor.profile"},
             lambda b, n: uris(b["records"]) == [f"at://{n.bob}/app.bsky.actor.profile/self"]),
        case("follows", lambda n: {"repo": n.alice, "collection": "app.bsky.graph.follow"},
             lambda b, n: len(b["records"]) == 2),
        case("unknown collection", lambda n: {"repo": n.alice, "collection": "com.example.thing"},
             lambda b, n: b["records"] == []),
    ],
}


def call(client: Client, nsid: str, params: dict[str, Any]) -> tuple[int, Any]:
    response = client.get(f"/xrpc/{nsid}", params)
    assert response["Content-Type"].startswith("application/json"), (nsid, params, response.content[:200])
    return response.status_code, response.json()


def problems_of(client: Client, nsid: str, item: Case, n: Network) -> list[str]:
    """What is wrong with the answers to one case: its first page and the pages its cursors lead to."""
    params = item.params(n)
    found: list[str] = []
    for page in range(MAX_PAGES):
        status, body = call(client, nsid, params)
        where = f"{nsid} [{item.label}] page {page + 1}"
        if status != 200:
            return [*found, f"{where}: status {status}: {body}"]
        found += [f"{where}: {error}" for error in lexicon_validator.output_errors(nsid, body, records=True)]
        if page == 0:
            try:
                met = item.expect(body, n)
            except (KeyError, IndexError, TypeError) as exc:
                met, body = False, {"exception": repr(exc), "body": body}
            if not met:
                found.append(f"{where}: not the expected answer: {body}")
        cursor = body.get("cursor") if isinstance(body, dict) else None
        if not cursor:
            break
        params = {**params, "cursor": cursor}
    return found


@pytest.mark.parametrize("nsid", sorted(CASES))
def test_it_answers_what_the_lexicon_describes(nsid: str) -> None:
    n = build()
    client = Client()
    problems = [problem for item in CASES[nsid] for problem in problems_of(client, nsid, item, n)]
    assert problems == []


def test_it_covers_every_query() -> None:
    assert set(CASES) == set(QUERIES)
    assert all(len(cases) >= 1 for cases in CASES.values())


def test_it_pages_to_the_end_without_repeating() -> None:
    n = build(extra_likes=7, extra_follows=5)
    client = Client()
    for nsid, params, key in (("app.bsky.feed.getLikes", {"uri": n.uri("hello"), "limit": 2}, "likes"),
                              ("app.bsky.graph.getFollowers", {"actor": n.alice, "limit": 3}, "followers"),
                              ("app.bsky.feed.getAuthorFeed", {"actor": n.alice, "limit": 2}, "feed"),
                              ("com.atproto.repo.listRecords",
                               {"repo": n.alice, "collection": "app.bsky.feed.post", "limit": 2}, "records")):
        seen: list[Any] = []
        for _ in range(20):
            status, body = call(client, nsid, params)
            assert status == 200, body
            assert lexicon_validator.output_errors(nsid, body) == []
            seen += body[key]
            if "cursor" not in body:
                break
            params = {**params, "cursor": body["cursor"]}
        else:
            pytest.fail(f"{nsid} never stopped paging")
        assert len(seen) > 2
        assert len({repr(item) for item in seen}) == len(seen), f"{nsid} repeated an item"


# -- The validator can fail ------------------------------------------------------------------------------

def test_it_validates_a_real_answer_then_rejects_broken_copies() -> None:
    n = build()
    status, body = call(Client(), "app.bsky.feed.getPosts",
                        {"uris": posts_of(n, "quote", "quote_with_media", "video", "external", "images")})
    assert status == 200
    nsid = "app.bsky.feed.getPosts"
    assert lexicon_validator.output_errors(nsid, body) == []

    def broken(change: Callable[[dict[str, Any]], None]) -> list[str]:
        copied = copy.deepcopy(body)
        change(copied)
        return lexicon_validator.output_errors(nsid, copied)

    def drop(key: str) -> Callable[[dict[str, Any]], None]:
        return lambda b: b["posts"][0].pop(key)

    def put(*path: Any, value: Any) -> Callable[[dict[str, Any]], None]:
        def change(b: dict[str, Any]) -> None:
            target: Any = b
            for step in path[:-1]:
                target = target[step]
            target[path[-1]] = value
        return change

    assert broken(drop("cid")) == ["$.posts[0]: missing required property 'cid'"]
    assert broken(drop("author")) == ["$.posts[0]: missing required property 'author'"]
    assert broken(lambda b: b.pop("posts")) == ["$: missing required property 'posts'"]
    assert broken(put("posts", value={})) == ["$.posts: expected array, got object"]
    assert broken(put("posts", 0, "likeCount", value="3")) == ["$.posts[0].likeCount: expected integer, got string"]
    assert broken(put("posts", 0, "likeCount", value=True)) == ["$.posts[0].likeCount: expected integer, got boolean"]
    assert broken(put("posts", 0, "likeCount", value=None)) == ["$.posts[0].likeCount: null but not nullable"]
    assert broken(put("posts", 0, "record", value="text")) == ["$.posts[0].record: expected object, got string"]
    assert broken(put("posts", 0, "uri", value="https://example.com/x")) == [
        "$.posts[0].uri: 'https://example.com/x' is not a valid at-uri"]
    assert broken(put("posts", 0, "indexedAt", value="2025-03-01 12:00:00")) == [
        "$.posts[0].indexedAt: '2025-03-01 12:00:00' is not a valid datetime"]
    assert broken(put("posts", 0, "author", "did", value="alice")) == [
        "$.posts[0].author.did: 'alice' is not a valid did"]
    assert broken(put("posts", 0, "author", "handle", value="-bad-.test")) == [
        "$.posts[0].author.handle: '-bad-.test' is not a valid handle"]
    assert broken(put("posts", 0, "cid", value="Qmnotacid0000")) == [
        "$.posts[0].cid: 'Qmnotacid0000' is not a valid cid"]
    assert broken(put("posts", 0, "author", "displayName", value="x" * 65)) == [
        "$.posts[0].author.displayName: more than maxGraphemes 64"]
    assert broken(put("posts", 0, "author", "displayName", value="👨‍👩‍👧" * 36)) == [  # 18 bytes a grapheme
        "$.posts[0].author.displayName: 648 UTF-8 bytes, more than maxLength 640"]
    # Union members: a $type is required, and the member it names is checked.
    quote = 0  # the first post quotes "hello" (app.bsky.embed.record#view)
    assert broken(lambda b: b["posts"][quote]["embed"].pop("$type")) == [
        "$.posts[0].embed: union member without a $type"]
    assert broken(lambda b: b["posts"][quote]["embed"]["record"].pop("author")) == [
        "$.posts[0].embed.record: missing required property 'author'"]
    assert broken(put("posts", quote, "embed", "record", "$type", value=f"{EMBED}.record#viewNotFound")) == [
        "$.posts[0].embed.record: missing required property 'notFound'"]
    # An open union (postView.embed) accepts a $type it does not know, and checks one it knows.
    assert broken(put("posts", quote, "embed", value={"$type": "com.example.embed#view", "anything": 1})) == []
    assert broken(put("posts", quote, "embed", value={"$type": f"{EMBED}.images#view"})) == [
        "$.posts[0].embed: missing required property 'images'"]
    # A $type on a plain ref must name the def the ref points to.
    assert broken(put("posts", 0, "author", "$type", value="app.bsky.actor.defs#profileView")) == [
        "$.posts[0].author.$type: 'app.bsky.actor.defs#profileView' is not app.bsky.actor.defs#profileViewBasic"]
    # Extra keys are allowed.
    assert broken(put("posts", 0, "somethingNew", value=[1, 2])) == []


def test_it_checks_data_model_types_and_constraints() -> None:
    errors = lexicon_validator.errors
    link = "bafyreigaqcu4loopk4dkd57c6zulsivi6lnsrwkpyt5t3khnixglnvwx2i"
    image = {"$type": "blob", "ref": {"$link": link}, "mimeType": "image/png", "size": 100}
    ok_images = {"$type": "app.bsky.embed.images", "images": [{"image": image, "alt": ""}]}
    assert errors(ok_images, "app.bsky.embed.images") == []
    assert errors({**ok_images, "images": []}, "app.bsky.embed.images") == []
    assert errors({**ok_images, "images": [{"image": image, "alt": ""}] * 5}, "app.bsky.embed.images") == [
        "$.images: 5 items, more than maxLength 4"]
    assert errors({"images": [{"image": {**image, "mimeType": "video/mp4"}, "alt": ""}]},
                  "app.bsky.embed.images") == [
        "$.images[0].image.mimeType: 'video/mp4' is not accepted (['image/*'])"]
    assert errors({"images": [{"image": {**image, "size": 2_000_001}, "alt": ""}]}, "app.bsky.embed.images") == [
        "$.images[0].image.size: 2000001 is more than maxSize 2000000"]
    assert errors({"images": [{"image": {**image, "ref": link}, "alt": ""}]}, "app.bsky.embed.images") == [
        "$.images[0].image.ref: expected object, got string"]
    assert errors({"images": [{"image": {**image, "ref": {"$link": "nope"}}, "alt": ""}]},
                  "app.bsky.embed.images") == [
        "$.images[0].image.ref: a CID link is {'$link': cid}, got {'$link': 'nope'}"]
    assert errors({"images": [{"image": {"cid": link, "mimeType": "image/jpeg"}, "alt": ""}]},
                  "app.bsky.embed.images") == []  # the legacy blob form
    # Integer bounds, a const, a record's required keys and formats.
    ratio = "app.bsky.embed.defs#aspectRatio"
    assert errors({"width": 0, "height": 1}, ratio) == ["$.width: 0 is less than minimum 1"]
    assert errors({"width": 1.5, "height": 1}, ratio) == ["$.width: expected integer, got number"]
    assert errors({"uri": "at://did:plc:x/app.bsky.feed.post/1", "notFound": False}, f"{FEED}#notFoundPost") == [
        "$.notFound: False is not the const True"]
    assert errors({"$type": "app.bsky.feed.like", "subject": {"uri": "at://a.test/app.bsky.feed.post/3k",
                                                                "cid": link}}, "app.bsky.feed.like") == [
        "$: missing required property 'createdAt'"]
    assert errors({"text": "x", "createdAt": "2025-01-01T00:00:00Z", "langs": ["en", "not a language"]},
                  "app.bsky.feed.post") == ["$.langs[1]: 'not a language' is not a valid language"]
    # knownValues are open; a ref to a string def checks it as a string.
    assert errors({"uri": "at://a.test/app.bsky.graph.list/3k", "cid": link, "name": "n", "purpose": "other"},
                  f"{GRAPH}#listViewBasic") == []
    assert errors({"uri": "at://a.test/app.bsky.graph.list/3k", "cid": link, "name": "", "purpose": 3},
                  f"{GRAPH}#listViewBasic") == ["$.name: 0 UTF-8 bytes, fewer than minLength 1",
                                                "$.purpose: expected string, got integer"]
    # unknown is any object; with records, a known record $type inside it is checked too.
    view = {"uri": "at://a.test/app.bsky.feed.post/3k", "cid": link, "author": {"did": "did:plc:a", "handle": "a.test"},
            "indexedAt": "2025-01-01T00:00:00Z", "record": {"$type": "app.bsky.feed.post", "text": 5}}
    assert errors(view, f"{FEED}#postView") == []
    assert errors({**view, "record": []}, f"{FEED}#postView") == ["$.record: expected object, got array"]
    assert errors(view, f"{FEED}#postView", records=True) == [
        "$.record: missing required property 'createdAt'", "$.record.text: expected string, got integer"]
    # cid-link and bytes, through a hand-made schema.
    validator = lexicon_validator.Validator()
    assert validator.check({"$link": link}, {"type": "cid-link"}, "x.y", "$") == []
    assert validator.check({"$bytes": "AAEC"}, {"type": "bytes", "maxLength": 2}, "x.y", "$") == [
        "$: 3 bytes, more than maxLength 2"]
    assert validator.check({"$bytes": "%%"}, {"type": "bytes"}, "x.y", "$") == ["$.$bytes: not base64"]
    assert validator.check("b", {"type": "string", "enum": ["a"]}, "x.y", "$") == ["$: 'b' is not one of ['a']"]
    closed = {"type": "union", "closed": True, "refs": ["#aspectRatio"]}
    assert validator.check({"$type": "app.bsky.embed.defs#aspectRatio", "width": 1, "height": 1}, closed,
                           "app.bsky.embed.defs", "$") == []
    assert validator.check({"$type": "com.example.other", "width": 1}, closed, "app.bsky.embed.defs", "$") == [
        "$.$type: 'com.example.other' is not one of the closed union ['app.bsky.embed.defs#aspectRatio']"]
    assert validator.check({"$type": "com.example.other"}, {**closed, "closed": False}, "app.bsky.embed.defs",
                           "$") == []
    assert lexicon_validator.graphemes("👍🏽🇫🇷👨‍👩‍👧é") == 4
    with pytest.raises(lexicon_validator.SchemaError):
        errors({}, "app.bsky.feed.defs#noSuchThing")


def test_it_resolves_every_ref_of_every_query_output() -> None:
    """Every ref reachable from a query's output schema names a definition of the lexicons shipped."""
    seen: set[str] = set()

    def walk(schema: Any, context: str) -> None:
        if isinstance(schema, dict):
            refs = [schema["ref"]] if schema.get("type") == "ref" else schema.get("refs", []) \
                if schema.get("type") == "union" else []
            for ref in refs:
                name = lexicon_validator.qualified(ref, context)
                if name not in seen:
                    seen.add(name)
                    target, target_context = lexicon_validator.definition(ref, context)
                    walk(target, target_context)
            for value in schema.values():
                walk(value, context)
        elif isinstance(schema, list):
            for value in schema:
                walk(value, context)

    for nsid in QUERIES:
        schema, context = lexicon_validator.output_schema(nsid)
        walk(schema, context)
    assert len(seen) > 30



# -- Records the network holds but a PDS would have refused ----------------------------------------------

def build_malformed() -> Network:
    """Alice's repo holding records that break their own lexicons (the indexer stores them as they come)."""
    b = _Builder()
    n = b.network
    created = {"createdAt": "2025-01-01T00:00:00Z"}
    b.event("#identity", n.alice, handle="alice.test")
    b.create("profile", n.alice, "app.bsky.actor.profile", {
        "displayName": "x" * 700, "description": "y" * 3000, "pinnedPost": {"uri": "garbage", "cid": "garbage"},
        **created}, rkey="self")
    b.create("unnamed_list", n.alice, "app.bsky.graph.list", {**created})
    b.create("long_list", n.alice, "app.bsky.graph.list", {"name": "n" * 100, "purpose": 5, **created})
    b.create("generator", n.alice, "app.bsky.feed.generator", {"did": "not a did", "description": "e" * 4000,
                                                               **created})
    for name, embed in (
        ("external_without_uri", {"$type": "app.bsky.embed.external", "external": {"title": 5}}),
        ("images", {"$type": "app.bsky.embed.images",
                    "images": [{"image": {"cid": "bad cid!", "mimeType": "image/png"}, "alt": 5}] * 6}),
        ("video", {"$type": "app.bsky.embed.video", "video": {"cid": "bad", "mimeType": "video/mp4"}}),
        ("quote_of_bad_uri", {"$type": "app.bsky.embed.record", "record": {"uri": "at://not valid/x/y", "cid": "c"}}),
        ("quote_of_list", {"$type": "app.bsky.embed.record", "record": b.strong_ref("unnamed_list")}),
    ):
        b.create(name, n.alice, "app.bsky.feed.post", {"text": name, "embed": embed, **created})
    push(redis_store.connect(), b.frames)
    drain(batch_size=1000)
    return n


def test_it_answers_valid_views_of_malformed_records() -> None:
    n = build_malformed()
    client = Client()
    found: list[str] = []
    for nsid, params in (("app.bsky.actor.getProfile", {"actor": n.alice}),
                         ("app.bsky.feed.getAuthorFeed", {"actor": n.alice}),
                         ("app.bsky.graph.getLists", {"actor": n.alice})):
        status, body = call(client, nsid, params)
        assert status == 200, body
        found += [f"{nsid}: {error}" for error in lexicon_validator.output_errors(nsid, body)]
    assert found == []
    # A feed generator that names no valid service DID has no valid view: it is not found.
    assert call(client, "app.bsky.feed.getFeedGenerator", {"feed": n.uri("generator")})[0] == 400
