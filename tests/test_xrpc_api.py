"""The read API driven by the atproto SDK as a real client: every response is parsed by the SDK's models,
against a network indexed through the real pipeline (tests/xrpc_network.py)."""

from collections.abc import Iterator
from typing import Any

import pytest
from atproto import Client
from atproto_client.exceptions import RequestErrorBase
from django.db import connection
from django.test import Client as DjangoClient
from django.test.utils import CaptureQueriesContext

from harness.events import commit_frame, push
from pipeline import redis_store
from tests import xrpc_network
from tests.worker_helpers import drain, event_frame
from tests.xrpc_network import Network
from xrpc import params as xrpc_params
from xrpc.queries import QUERIES

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture()
def network() -> Network:
    return xrpc_network.build()


@pytest.fixture()
def client(live_server: Any) -> Client:
    return Client(base_url=f"{live_server.url}/xrpc")


def error_of(call: Any) -> tuple[int, str]:
    with pytest.raises(RequestErrorBase) as caught:
        call()
    response = caught.value.response
    return response.status_code, response.content.error


def test_it_serves_a_profile_whose_counts_leave_out_hidden_accounts(network: Network, client: Client) -> None:
    profile = client.app.bsky.actor.get_profile({"actor": "alice.test"})
    assert profile.did == network.alice and profile.handle == "alice.test" and profile.display_name == "Alice"
    # Followed by bob and carol; erin (taken down) and dave (deactivated) do not count.
    assert profile.followers_count == 2
    assert profile.follows_count == 1  # bob; erin is hidden
    assert profile.posts_count == 6
    assert profile.avatar.startswith(f"https://cdn.bsky.app/img/avatar/plain/{network.alice}/")
    assert profile.avatar.endswith("@jpeg") and profile.banner.startswith("https://cdn.bsky.app/img/banner/plain/")
    assert profile.pinned_post.uri == network.uri("pinned")
    assert (profile.associated.lists, profile.associated.feedgens, profile.associated.starter_packs) == (2, 1, 1)
    profiles = client.app.bsky.actor.get_profiles({"actors": [network.bob, "carol.test", network.erin, "x.test"]})
    assert [p.handle for p in profiles.profiles] == ["bob.test", "carol.test"]


def test_it_answers_hidden_accounts_with_the_lexicon_errors_until_they_come_back(network: Network,
                                                                               client: Client) -> None:
    get = client.app.bsky.actor.get_profile
    assert error_of(lambda: get({"actor": network.erin})) == (400, "AccountTakedown")
    assert error_of(lambda: get({"actor": network.frank})) == (400, "AccountTakedown")
    assert error_of(lambda: get({"actor": network.dave})) == (400, "AccountDeactivated")
    assert error_of(lambda: get({"actor": "nobody.test"})) == (400, "InvalidRequest")
    assert error_of(lambda: client.app.bsky.feed.get_author_feed({"actor": network.erin}))[1] == "AccountTakedown"
    hello = client.app.bsky.feed.get_posts({"uris": [network.uri("hello")]}).posts[0]
    assert hello.like_count == 2  # bob and carol; erin and frank are hidden
    comeback = event_frame(network.seq + 1, "#account", network.erin, active=True)
    push(redis_store.connect(), [(network.seq + 1, comeback)])
    drain()
    assert get({"actor": network.erin}).handle == "erin.test"
    assert client.app.bsky.feed.get_posts({"uris": [network.uri("hello")]}).posts[0].like_count == 3
    assert get({"actor": "alice.test"}).followers_count == 3
    deleted = event_frame(network.seq + 2, "#account", network.gina, active=False, status="deleted")
    push(redis_store.connect(), [(network.seq + 2, deleted)])
    drain()
    assert error_of(lambda: get({"actor": network.gina})) == (400, "InvalidRequest")
    assert client.app.bsky.feed.get_posts({"uris": [network.uri("gina_post")]}).posts == []


def test_it_takes_a_did_or_a_handle_and_shows_handle_invalid(network: Network, client: Client) -> None:
    push(redis_store.connect(), [(network.seq + 1, commit_frame(network.seq + 1, [
        ("create", "app.bsky.feed.post/3lnohandle2222", {"$type": "app.bsky.feed.post", "text": "no handle",
                                                         "createdAt": xrpc_network.when(50)})],
        did=xrpc_network.did("nohandle")))])
    drain()
    anonymous = client.app.bsky.actor.get_profile({"actor": xrpc_network.did("nohandle")})
    assert anonymous.handle == "handle.invalid"
    assert client.com.atproto.identity.resolve_handle({"handle": "Bob.Test"}).did == network.bob
    assert error_of(lambda: client.com.atproto.identity.resolve_handle({"handle": "nobody.test"})) == (
        400, "HandleNotFound")


def test_it_hydrates_every_embed_type(network: Network, client: Client) -> None:
    names = ["images", "external", "video", "quote", "quote_with_media", "quote_of_missing", "quote_of_hidden",
             "detached_quote", "alice_quotes_gina", "takendown_post"]
    posts = client.app.bsky.feed.get_posts({"uris": [network.uri(name) for name in names]}).posts
    by_uri = {post.uri: post for post in posts}
    assert network.uri("takendown_post") not in by_uri  # its author is taken down
    embed = {name: by_uri[network.uri(name)].embed for name in names[:-1]}
    images = embed["images"].images
    assert [image.alt for image in images] == ["a cat", ""]
    assert images[0].thumb.startswith(f"https://cdn.bsky.app/img/feed_thumbnail/plain/{network.alice}/")
    assert images[0].fullsize.startswith("https://cdn.bsky.app/img/feed_fullsize/plain/")
    assert (images[0].aspect_ratio.width, images[0].aspect_ratio.height) == (4, 3)
    assert embed["external"].external.uri == "https://example.com/page"
    assert embed["external"].external.thumb.startswith("https://cdn.bsky.app/img/feed_thumbnail/plain/")
    assert embed["video"].playlist.endswith("/playlist.m3u8") and embed["video"].alt == "waves"
    quoted = embed["quote"].record
    assert quoted.py_type == "app.bsky.embed.record#viewRecord" and quoted.uri == network.uri("hello")
    assert quoted.author.handle == "alice.test" and quoted.value.text == "hello world from alice"
    with_media = embed["quote_with_media"]
    assert with_media.record.record.uri == network.uri("images")
    assert with_media.record.record.embeds[0].py_type == "app.bsky.embed.images#view"
    assert with_media.media.images[0].alt == "dog"
    assert embed["quote_of_missing"].record.py_type == "app.bsky.embed.record#viewNotFound"
    assert embed["quote_of_hidden"].record.py_type == "app.bsky.embed.record#viewNotFound"
    assert embed["detached_quote"].record.py_type == "app.bsky.embed.record#viewDetached"
    assert embed["alice_quotes_gina"].record.py_type == "app.bsky.embed.record#viewBlocked"
    assert by_uri[network.uri("hello")].quote_count if network.uri("hello") in by_uri else True


def feed_uris(client: Client, actor: str, **options: Any) -> list[tuple[str, str | None]]:
    feed = client.app.bsky.feed.get_author_feed({"actor": actor, "limit": 100, **options}).feed
    return [(item.post.uri, item.reason.py_type.split("#")[1] if item.reason else None) for item in feed]


def test_it_filters_the_author_feed_as_the_official_appview(network: Network, client: Client) -> None:
    u = network.uri
    alice_all = feed_uris(client, "alice.test")
    assert (u("reply_alice"), None) in alice_all and (u("hello"), None) in alice_all
    assert feed_uris(client, "alice.test", includePins=True)[0] == (u("pinned"), "reasonPin")
    assert (u("reply_alice"), None) not in feed_uris(client, "alice.test", filter="posts_no_replies")
    assert feed_uris(client, "alice.test", filter="posts_with_media") == [(u("images"), None)]
    assert (u("reply_alice"), None) in feed_uris(client, "alice.test", filter="posts_and_author_threads")
    bob = feed_uris(client, "bob.test")
    assert (u("hello"), "reasonRepost") in bob and (u("reply_bob"), None) in bob
    assert (u("reply_bob"), None) not in feed_uris(client, "bob.test", filter="posts_and_author_threads")
    assert feed_uris(client, "bob.test", filter="posts_with_video") == [(u("video"), None)]
    item = next(i for i in client.app.bsky.feed.get_author_feed({"actor": "bob.test"}).feed
                if i.post.uri == u("reply_nested"))
    assert item.reply.root.uri == u("root") and item.reply.parent.uri == u("reply_carol")
    missing = next(i for i in client.app.bsky.feed.get_author_feed({"actor": "bob.test"}).feed
                   if i.post.uri == u("reply_to_missing"))
    assert missing.reply.parent.py_type == "app.bsky.feed.defs#notFoundPost"
    assert error_of(lambda: client.app.bsky.feed.get_author_feed({"actor": "bob.test", "filter": "nope"}))[1] == (
        "InvalidRequest")


def test_it_builds_threads_with_hidden_and_missing_replies(network: Network, client: Client) -> None:
    u = network.uri
    thread = client.app.bsky.feed.get_post_thread({"uri": u("root")}).thread
    assert thread.post.threadgate.uri.endswith(u("root").rsplit("/", 1)[-1])
    # The author's own reply first, then the others oldest first; bob's is hidden by the threadgate,
    # erin's author is taken down.
    assert [reply.post.uri for reply in thread.replies] == [u("reply_alice"), u("reply_carol")]
    assert [reply.post.uri for reply in thread.replies[1].replies] == [u("reply_nested")]
    shallow = client.app.bsky.feed.get_post_thread({"uri": u("root"), "depth": 1}).thread
    assert shallow.replies[1].replies == []
    nested = client.app.bsky.feed.get_post_thread({"uri": u("reply_nested")}).thread
    assert nested.parent.post.uri == u("reply_carol") and nested.parent.parent.post.uri == u("root")
    assert nested.parent.parent.post.threadgate is not None
    assert client.app.bsky.feed.get_post_thread({"uri": u("reply_nested"), "parentHeight": 0}).thread.parent is None
    lost = client.app.bsky.feed.get_post_thread({"uri": u("reply_to_missing")}).thread
    assert lost.parent.py_type == "app.bsky.feed.defs#notFoundPost" and lost.parent.not_found
    gone = f"at://{network.bob}/app.bsky.feed.post/3jzfcijpj2z2a"
    assert error_of(lambda: client.app.bsky.feed.get_post_thread({"uri": gone})) == (400, "NotFound")
    assert error_of(lambda: client.app.bsky.feed.get_post_thread({"uri": u("takendown_post")})) == (400, "NotFound")


def test_it_pages_over_a_thousand_likes_without_a_repeat_or_a_gap(client: Client) -> None:
    network = xrpc_network.build(extra_likes=1050)
    expected = 2 + 1050  # bob, carol and the new accounts; erin and frank are hidden
    seen: list[str] = []
    cursor = None
    while True:
        page = client.app.bsky.feed.get_likes({"uri": network.uri("hello"), "limit": 100, "cursor": cursor})
        seen += [like.actor.did for like in page.likes]
        if len(seen) == 300:  # likes arriving meanwhile sort before the cursor: they neither repeat nor shift
            push(redis_store.connect(), [(network.seq + 1, commit_frame(network.seq + 1, [
                ("create", "app.bsky.feed.like/3lzzzzzzzzz22", {"$type": "app.bsky.feed.like",
                                                                "subject": {"uri": network.uri("hello"),
                                                                            "cid": network.cids["hello"]},
                                                                "createdAt": xrpc_network.when(59)})],
                did=xrpc_network.did("latecomer")))])
            drain()
        cursor = page.cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == expected
    assert client.app.bsky.feed.get_posts({"uris": [network.uri("hello")]}).posts[0].like_count == expected + 1


def test_it_pages_followers_and_feeds_with_stable_cursors(client: Client) -> None:
    network = xrpc_network.build(extra_follows=230)
    seen: list[str] = []
    cursor = None
    while True:
        page = client.app.bsky.graph.get_followers({"actor": "alice.test", "limit": 7, "cursor": cursor})
        assert page.subject.did == network.alice
        seen += [follower.did for follower in page.followers]
        cursor = page.cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 232
    feed, cursor = [], None
    while True:
        page = client.app.bsky.feed.get_author_feed({"actor": "alice.test", "limit": 2, "cursor": cursor})
        feed += [item.post.uri for item in page.feed]
        cursor = page.cursor
        if cursor is None:
            break
    assert feed == [uri for uri, _ in feed_uris(client, "alice.test")]
    assert error_of(lambda: client.app.bsky.graph.get_followers({"actor": "alice.test", "cursor": "%%%"}))[1] == (
        "InvalidRequest")


def query_count(nsid: str, query: dict[str, list[str]]) -> int:
    with CaptureQueriesContext(connection) as captured:
        QUERIES[nsid](xrpc_params.parse(nsid, QueryDict(query)))
    return len(captured.captured_queries)


MAX_QUERIES = 12


class QueryDict(dict[str, list[str]]):
    def getlist(self, name: str) -> list[str]:
        return self.get(name, [])


@pytest.mark.parametrize(("nsid", "key", "target"), [
    ("app.bsky.feed.getLikes", "uri", "hello"),
    ("app.bsky.graph.getFollowers", "actor", "alice"),
    ("app.bsky.feed.getAuthorFeed", "actor", "alice"),
])
def test_it_hydrates_a_page_with_the_same_number_of_queries_whatever_its_length(nsid: str, key: str,
                                                                                target: str) -> None:
    network = xrpc_network.build(extra_likes=120, extra_follows=120)
    value = network.alice if target == "alice" else network.uri(target)
    small = query_count(nsid, {key: [value], "limit": ["2"]})
    large = query_count(nsid, {key: [value], "limit": ["100"]})
    # What a page holds may add one query of a kind (quoted posts, reply parents), never one per item.
    assert small <= large <= MAX_QUERIES


def test_it_serves_the_graph(network: Network, client: Client) -> None:
    follows = client.app.bsky.graph.get_follows({"actor": "alice.test"})
    assert [f.did for f in follows.follows] == [network.bob]
    lists = client.app.bsky.graph.get_lists({"actor": "alice.test"}).lists
    assert {lst.name for lst in lists} == {"Friends", "Muted"}
    curate = client.app.bsky.graph.get_lists({"actor": "alice.test", "purposes": ["curatelist"]}).lists
    assert [lst.name for lst in curate] == ["Friends"] and curate[0].list_item_count == 2
    friends = client.app.bsky.graph.get_list({"list": network.uri("curatelist")})
    assert {item.subject.did for item in friends.items} == {network.bob, network.carol}
    assert friends.list.creator.did == network.alice
    pack = client.app.bsky.graph.get_starter_pack({"starterPack": network.uri("starterpack")}).starter_pack
    assert pack.creator.did == network.alice and pack.list.uri == network.uri("curatelist")
    assert {item.subject.did for item in pack.list_items_sample} == {network.bob, network.carol}
    packs = client.app.bsky.graph.get_actor_starter_packs({"actor": "alice.test"}).starter_packs
    assert [p.uri for p in packs] == [network.uri("starterpack")]
    related = client.app.bsky.graph.get_relationships({"actor": network.alice,
                                                       "others": [network.gina, network.bob, "nobody.test"]})
    gina, bob, nobody = related.relationships
    assert gina.blocked_by is not None and gina.blocking is None and gina.following is None
    assert bob.following is not None and bob.followed_by is not None
    assert nobody.py_type == "app.bsky.graph.defs#notFoundActor"


def test_it_serves_feed_generators(network: Network, client: Client) -> None:
    view = client.app.bsky.feed.get_feed_generator({"feed": network.uri("feedgen")})
    assert view.is_online and view.is_valid
    assert view.view.display_name == "Alice's feed" and view.view.like_count == 1
    assert view.view.did == "did:web:feeds.example.com" and view.view.creator.did == network.alice
    several = client.app.bsky.feed.get_feed_generators({"feeds": [network.uri("feedgen"), network.uri("hello")]})
    assert [feed.uri for feed in several.feeds] == [network.uri("feedgen")]
    assert [f.uri for f in client.app.bsky.feed.get_actor_feeds({"actor": "alice.test"}).feeds] == [
        network.uri("feedgen")]


def test_it_serves_records_as_the_repo_holds_them(network: Network, client: Client) -> None:
    rkey = network.uri("images").rsplit("/", 1)[-1]
    record = client.com.atproto.repo.get_record({"repo": "alice.test", "collection": "app.bsky.feed.post",
                                                 "rkey": rkey})
    assert record.uri == network.uri("images") and record.cid == network.cids["images"]
    assert record.value.text == "two pictures"
    assert error_of(lambda: client.com.atproto.repo.get_record(
        {"repo": "alice.test", "collection": "app.bsky.feed.post", "rkey": "3jzfcijpj2z2a"})) == (400, "RecordNotFound")
    listed = client.com.atproto.repo.list_records({"repo": network.alice, "collection": "app.bsky.feed.post",
                                                   "limit": 3})
    rkeys = [r.uri.rsplit("/", 1)[-1] for r in listed.records]
    assert rkeys == sorted(rkeys, reverse=True) and listed.cursor == rkeys[-1]
    rest = client.com.atproto.repo.list_records({"repo": network.alice, "collection": "app.bsky.feed.post",
                                                 "cursor": listed.cursor})
    assert len(rkeys) + len(rest.records) == 6
    described = client.com.atproto.repo.describe_repo({"repo": "alice.test"})
    assert described.handle == "alice.test" and described.handle_is_correct
    assert {"app.bsky.feed.post", "app.bsky.graph.list", "app.bsky.actor.profile"} <= set(described.collections)


def test_it_searches_posts_and_actors(network: Network, client: Client) -> None:
    found = client.app.bsky.feed.search_posts({"q": "alice", "sort": "latest"}).posts
    assert {p.uri for p in found} >= {network.uri("hello"), network.uri("quote"), network.uri("reply_alice")}
    by_bob = client.app.bsky.feed.search_posts({"q": "replies", "author": "bob.test"}).posts
    assert [p.uri for p in by_bob] == [network.uri("reply_bob")]
    english = client.app.bsky.feed.search_posts({"q": "alice", "lang": "en"}).posts
    assert [p.uri for p in english] == [network.uri("hello")]
    early = client.app.bsky.feed.search_posts({"q": "alice", "until": "2025-03-01T12:02:00Z"}).posts
    assert [p.uri for p in early] == [network.uri("hello")]
    assert client.app.bsky.feed.search_posts({"q": "here"}).posts == []  # erin's, who is taken down
    assert error_of(lambda: client.app.bsky.feed.search_posts({"q": "  "})) == (400, "BadQueryString")
    actors = client.app.bsky.actor.search_actors({"q": "ca"}).actors
    assert [a.handle for a in actors] == ["carol.test"]
    typeahead = client.app.bsky.actor.search_actors_typeahead({"q": "e"}).actors
    assert typeahead == []  # erin is taken down


@pytest.fixture()
def tight_limits(settings: Any) -> Iterator[None]:
    settings.XRPC_RATE_LIMIT = 3
    settings.XRPC_STATEMENT_TIMEOUT_MS = 50
    yield


def test_it_limits_each_client_address_with_ratelimit_headers(network: Network, client: Client,
                                                               tight_limits: None) -> None:
    for _ in range(3):
        client.app.bsky.actor.get_profile({"actor": "alice.test"})
    with pytest.raises(RequestErrorBase) as caught:
        client.app.bsky.actor.get_profile({"actor": "alice.test"})
    response = caught.value.response
    assert response.status_code == 429 and response.content.error == "RateLimitExceeded"
    headers = {name.lower(): value for name, value in response.headers.items()}
    assert headers["ratelimit-limit"] == "3" and headers["ratelimit-remaining"] == "0"
    assert int(headers["ratelimit-reset"]) >= 0


def test_it_cuts_off_a_slow_query_with_the_statement_timeout(network: Network, client: Client, tight_limits: None,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(params: dict[str, Any]) -> dict[str, Any]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(2)")
        return {"did": network.alice}

    monkeypatch.setitem(QUERIES, "com.atproto.identity.resolveHandle", slow)
    with pytest.raises(RequestErrorBase) as caught:
        client.com.atproto.identity.resolve_handle({"handle": "alice.test"})
    assert caught.value.response.status_code == 504
    assert caught.value.response.content.error == "UpstreamTimeout"


def test_it_refuses_bad_parameters_with_invalid_request(network: Network) -> None:
    hello = network.uri("hello")
    for query in ({"actor": "alice.test", "limit": "101"}, {"actor": "alice.test", "limit": "0"},
                  {"actor": "alice.test", "limit": "ten"}, {"actor": "alice.test", "includePins": "yes"},
                  {"actor": "not a handle"}, {}):
        response = DjangoClient().get("/xrpc/app.bsky.feed.getAuthorFeed", query)
        assert response.status_code == 400 and response.json()["error"] == "InvalidRequest", query
    for uris in (["not-a-uri"], [hello] * 26):
        response = DjangoClient().get("/xrpc/app.bsky.feed.getPosts", {"uris": uris})
        assert response.status_code == 400 and response.json()["error"] == "InvalidRequest", uris
