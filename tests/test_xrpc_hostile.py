"""Hostile requests to every query of the read API, on a real indexed network: NUL bytes, huge values,
invalid UTF-8, out-of-range and non-numeric integers, wrong booleans, forged cursors, SQL-ish text, repeated,
unknown and empty parameters, malformed identifiers, other methods, unknown NSIDs. Whatever comes in, the
answer is an XRPC body (JSON, ``{"error", "message"}`` strings on failure, a lexicon-valid output on
success), never a 500, never HTML, and nothing is logged as an error."""

import base64
import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from django.http import HttpResponse
from django.test import Client

from tests import lexicon_validator
from tests.xrpc_network import Network, build
from xrpc import lexicons
from xrpc.queries import QUERIES

UNKNOWN_DID = "did:plc:nobodyxxxxxxxxxxxxxxxxxx"
MISSING_POST = f"at://{UNKNOWN_DID}/app.bsky.feed.post/3jzfcijpj2z2a"

# Parameters that make each query do its real work on the network; each hostile value replaces one of them.
VALID: dict[str, Callable[[Network], dict[str, str | list[str]]]] = {
    "app.bsky.actor.getProfile": lambda n: {"actor": n.alice},
    "app.bsky.actor.getProfiles": lambda n: {"actors": [n.alice, "bob.test"]},
    "app.bsky.actor.searchActors": lambda n: {"q": "a", "term": "a", "limit": "2", "cursor": "a"},
    "app.bsky.actor.searchActorsTypeahead": lambda n: {"q": "a", "term": "b", "limit": "2"},
    "app.bsky.feed.getActorFeeds": lambda n: {"actor": n.alice, "limit": "1"},
    "app.bsky.feed.getAuthorFeed": lambda n: {"actor": "alice.test", "limit": "3", "filter": "posts_with_replies",
                                              "includePins": "true"},
    "app.bsky.feed.getFeedGenerator": lambda n: {"feed": n.uri("feedgen")},
    "app.bsky.feed.getFeedGenerators": lambda n: {"feeds": [n.uri("feedgen")]},
    "app.bsky.feed.getLikes": lambda n: {"uri": n.uri("hello"), "cid": n.cids["hello"], "limit": "1"},
    "app.bsky.feed.getPostThread": lambda n: {"uri": n.uri("root"), "depth": "2", "parentHeight": "2"},
    "app.bsky.feed.getPosts": lambda n: {"uris": [n.uri("quote"), n.uri("quote_with_media")]},
    "app.bsky.feed.getQuotes": lambda n: {"uri": n.uri("hello"), "cid": n.cids["hello"], "limit": "1"},
    "app.bsky.feed.getRepostedBy": lambda n: {"uri": n.uri("hello"), "cid": n.cids["hello"], "limit": "1"},
    "app.bsky.feed.searchPosts": lambda n: {
        "q": "alice", "sort": "latest", "since": "2000-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z",
        "mentions": "bob.test", "author": n.alice, "lang": "en", "domain": "example.com",
        "url": "https://example.com/page", "tag": ["news"], "limit": "1"},
    "app.bsky.graph.getActorStarterPacks": lambda n: {"actor": n.alice, "limit": "1"},
    "app.bsky.graph.getFollowers": lambda n: {"actor": n.alice, "limit": "1", "sort": "recent"},
    "app.bsky.graph.getFollows": lambda n: {"actor": n.alice, "limit": "1"},
    "app.bsky.graph.getList": lambda n: {"list": n.uri("curatelist"), "limit": "1"},
    "app.bsky.graph.getLists": lambda n: {"actor": n.alice, "limit": "1", "purposes": ["curatelist"]},
    "app.bsky.graph.getRelationships": lambda n: {"actor": n.alice, "others": [n.bob, "gina.test"]},
    "app.bsky.graph.getStarterPack": lambda n: {"starterPack": n.uri("starterpack")},
    "com.atproto.identity.resolveHandle": lambda n: {"handle": "alice.test"},
    "com.atproto.repo.describeRepo": lambda n: {"repo": n.alice},
    "com.atproto.repo.getRecord": lambda n: {"repo": n.alice, "collection": "app.bsky.feed.post",
                                             "rkey": n.uri("hello").rsplit("/", 1)[1], "cid": n.cids["hello"]},
    "com.atproto.repo.listRecords": lambda n: {"repo": "alice.test", "collection": "app.bsky.feed.post",
                                               "limit": "2", "reverse": "true"},
}


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def q(text: str) -> str:
    return quote(text, safe="")


# Values in their query-string form (already percent-encoded), for any parameter.
ANY = [
    "%00", "a%00b", q("\x00" * 3), "x" * 10_000, "%ff%fe", "%c3%28", "%ed%a0%80", "%f4%90%80%80", "%c0%80",
    q("' OR 1=1 --"), q("'; DROP TABLE appview_actor; --"), q("%_\\"), q("\\x00"), "", "+", q(" "), "%20%09",
    q("\u202e😀é\u200d"), q("\r\n"), q("<script>alert(1)</script>"), q("${jndi:ldap://x}"), "%", "%zz", "%%41",
    q("Ω" * 3001),
]
INTEGERS = [
    "100000000000000000000000000", "9223372036854775808", "-9223372036854775809", "-1", "0", "-0", "abc", "1e3",
    "1.5", "%2B5", "%205", "5%20", q("\u0663"), q("\uff15"), "0x10", "99999", "00000000000000000000001", "1_000", "NaN",
]
BOOLEANS = ["yes", "1", "0", "TRUE", "True", "null", "on", "t"]
IDENTIFIERS = [q(text) for text in (
    "did:", "did:plc:", "did:PLC:abc", "did:plc:" + "a" * 2990, "did:web:%2e%2e", "alice", "-a.test", "a..test",
    "alice.test.", ".test", "1.2.3.4", "ALICE.TEST", "at://", "at://did:plc:x/", "at://alice.test",
    "at://alice.test/app.bsky.feed.post/..", "at://did:plc:x/not an nsid/abc",
    "at://did:plc:x/app.bsky.feed.post/a?b#c", "at://" + "a" * 300 + ".test",
    "at://did:plc:x/app.bsky.feed.post/" + "a" * 600, "app.bsky", "bafy", "Qm" + "a" * 44,
    "2025-13-01T00:00:00Z", "2025-02-29T00:00:00Z", "0000-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59",
    "https://", "http://[::1", "e n", UNKNOWN_DID, "nobody.test", MISSING_POST,
    f"at://{UNKNOWN_DID}/app.bsky.graph.list/3jzfcijpj2z2a", "at://alice.test/app.bsky.feed.post/3likpcylk222c",
    f"at://{UNKNOWN_DID}", "at://alice.test/app.bsky.feed.generator/x",
)]
CURSORS = [
    "q83vEjRWeJA", b64(b"\xde\xad\xbe\xef" * 8), b64(b"\xff\xfe\x00"), b64("garbage"), b64("123::notaturi"),
    b64("abc::at://x"), b64("99999999999999999999999::at://did:plc:x/app.bsky.feed.post/x"),
    b64("-99999999999999999::at://did:plc:x/app.bsky.feed.post/x"), b64("1::at://x\x00"), b64("::at://"),
    b64("1.5::at://x"), b64("0x10::at://x"), b64(" 1 ::at://x"), b64("1::at://x::y"), b64("١٢٣::at://x"),
    b64("253402300800000000::at://x"), b64("-62135596800000001::at://x"), "====", "!!!!", "a", "A" * 2999,
    "A" * 5000, b64("1::at://did:plc:x/" + "a" * 2000), q("+/+/"), q(base64.b64encode(b"1::at://x").decode()),
    b64("1::at://did:plc:x/app.bsky.feed.post/'; DROP TABLE appview_post; --"),
]
# Whole query strings, beside the NSID's valid parameters or alone.
QUERY_STRINGS = ["", "&&&", "=&=", "%=%", "zzz=1", "cursor=", "%zz=1", "a%00=1", "&".join(["x=1"] * 2000),
                 "&".join(f"p{index}=1" for index in range(1500)), "y=" + "z" * 50_000]


def params_of(nsid: str) -> dict[str, dict[str, Any]]:
    return lexicons.query_parameters(nsid).get("properties", {})


def corpus(spec: dict[str, Any], name: str) -> list[str]:
    """The hostile values for one parameter, by what it declares."""
    kind = spec.get("items", spec).get("type") if spec.get("type") == "array" else spec.get("type")
    values = list(ANY)
    if kind == "integer":
        values += INTEGERS
    elif kind == "boolean":
        values += BOOLEANS
    elif spec.get("format") or spec.get("items", {}).get("format"):
        values += IDENTIFIERS
    if name == "cursor":
        values += CURSORS
    return values


def encode(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{q(name)}={value}" for name, value in pairs)


def valid_pairs(nsid: str, n: Network) -> list[tuple[str, str]]:
    pairs = []
    for name, value in VALID[nsid](n).items():
        for item in value if isinstance(value, list) else [value]:
            pairs.append((name, q(item)))
    return pairs


def hostile_queries(nsid: str, n: Network) -> Iterator[str]:
    """Query strings: each parameter given each hostile value (the others valid), then absent, repeated,
    repeated far past an array's maxLength, and whole query strings beside the valid ones or alone."""
    valid = valid_pairs(nsid, n)
    for name, spec in params_of(nsid).items():
        others = [pair for pair in valid if pair[0] != name]
        mine = [pair for pair in valid if pair[0] == name] or [(name, "x")]
        for value in corpus(spec, name):
            yield encode([*others, (name, value)])
        yield encode(others)
        yield encode([*valid, *mine])
        yield encode([*others, *mine * 200])
    for text in QUERY_STRINGS:
        yield text
        yield "&".join(part for part in (encode(valid), text) if part)


@pytest.fixture(autouse=True)
def settings_for_hostile_calls(settings: Any) -> Iterator[None]:
    settings.XRPC_RATE_LIMIT = 1_000_000  # the corpus is sent from one address
    yield


def problems(nsid: str, request: str, response: HttpResponse) -> list[str]:
    """What makes an answer not an XRPC answer, or a failing one."""
    where = f"{request[:200]!r} -> {response.status_code}"
    content_type = response.get("Content-Type", "")
    if not content_type.startswith("application/json"):
        return [f"{where}: Content-Type {content_type!r}: {response.content[:200]!r}"]
    if response.status_code >= 500 and response.status_code != 501:
        return [f"{where}: server error {response.content[:300]!r}"]
    text = response.content.decode("utf-8", "replace")
    if "<html" in text.lower() or "Traceback" in text:
        return [f"{where}: HTML or a traceback in the body"]
    try:
        body = response.json()
    except ValueError:
        return [f"{where}: not JSON: {response.content[:200]!r}"]
    if response.status_code >= 400:
        if not (isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]
                and isinstance(body.get("message"), str)):
            return [f"{where}: not an XRPC error body: {body!r:.300}"]
        return []
    if nsid not in QUERIES:
        return [f"{where}: {nsid} answered"]
    return [f"{where}: {error}" for error in lexicon_validator.output_errors(nsid, body)][:3]


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{record.name} {record.levelname}: {record.getMessage()[:300]}" for record in caplog.records
            if record.levelno >= logging.ERROR or record.exc_info]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("nsid", sorted(QUERIES))
def test_it_answers_hostile_parameters_with_xrpc_bodies(nsid: str, caplog: pytest.LogCaptureFixture) -> None:
    n = build()
    client = Client()
    found: list[str] = []
    statuses: set[int] = set()
    count = 0
    with caplog.at_level(logging.INFO):
        for query in hostile_queries(nsid, n):
            response = client.get(f"/xrpc/{nsid}?{query}")
            statuses.add(response.status_code)
            count += 1
            found += problems(nsid, query, response)
            if len(found) > 20:
                break
        for query in ("", encode(valid_pairs(nsid, n)), "limit=-1&%00=%ff&cursor=!!"):
            head = client.head(f"/xrpc/{nsid}?{query}")
            if head.status_code not in (200, 400) or not head["Content-Type"].startswith("application/json"):
                found.append(f"HEAD {query!r}: {head.status_code} {head['Content-Type']}")
    assert found == []
    assert errors_logged(caplog) == []
    assert statuses <= {200, 400}, statuses
    assert count >= 80  # the corpus did not silently shrink


def test_it_refuses_other_methods(caplog: pytest.LogCaptureFixture) -> None:
    client = Client()
    found: list[str] = []
    for nsid in sorted(QUERIES):
        for method in ("post", "put", "patch", "delete", "options"):
            response = getattr(client, method)(f"/xrpc/{nsid}", data=b'{"x": 1}', content_type="application/json")
            found += problems(nsid, f"{method} {nsid}", response)
            if response.status_code != 405:
                found.append(f"{method} {nsid}: status {response.status_code}")
        response = client.post(f"/xrpc/{nsid}?{'&'.join(['x=1'] * 2000)}", data="y=2",
                               content_type="application/x-www-form-urlencoded")
        found += problems(nsid, f"post {nsid} with 2000 parameters", response)
    assert found == []
    assert errors_logged(caplog) == []


NOT_QUERIES = [
    "com.example.nothing", "app.bsky.feed.getTimeline", "com.atproto.repo.createRecord", "APP.BSKY.FEED.GETPOSTS",
    "app.bsky.feed.getPosts%00", "%00", "%ff%fe", "..", ".", "x" * 10_000, q("' OR 1=1 --"), "app.bsky.feed.getPosts.",
    "app.bsky.feed.getPosts%20", q("app.bsky.feed.getPosts/"), "__init__", "QUERIES", "get", "%2e%2e",
]


def test_it_answers_unknown_methods_with_xrpc_errors(caplog: pytest.LogCaptureFixture) -> None:
    client = Client()
    found: list[str] = []
    for method, name, query in itertools.product(("get", "post"), NOT_QUERIES, ("", "?uris=at://x&limit=-1&%00=%ff")):
        path = f"/xrpc/{name}{query}"
        response = getattr(client, method)(path)
        found += problems(name, f"{method} {path}", response)
        if response.status_code != 501:
            found.append(f"{method} {path[:100]}: status {response.status_code}")
    assert found == []
    assert errors_logged(caplog) == []


def test_it_answers_paths_beside_an_nsid_with_xrpc_errors(caplog: pytest.LogCaptureFixture) -> None:
    client = Client()
    for path in ("/xrpc/", "/xrpc/app.bsky.feed.getPosts/", "/xrpc/a/b", "/xrpc/app.bsky.feed.getPosts/extra?uris=x",
                 "/xrpc//app.bsky.feed.getPosts", "/xrpc/app.bsky.feed.getPosts%2F"):
        response = client.get(path)
        assert problems("", path, response) == []
        assert response.status_code == 501, path
    assert errors_logged(caplog) == []
