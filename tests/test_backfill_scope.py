"""The scope of a backfill (a list of DIDs, the repositories holding a signal collection, the full network as the
relay lists it) and COLLECTION_FILTERS select exactly the repositories and collections they name, in backfill
and in live indexing; the relay's listing resumes from its saved cursor."""

import signal as signals
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from django.core.management import CommandError, call_command
from pytest_django.fixtures import Settings

from appview.indexing.collection_filter import is_stored
from appview.models import BackfillListing, BackfillRepo, Follow, Like, Post
from appview.sync import backfill as backfill_module
from appview.sync.backfill import Scope, list_scope
from harness.events import commit_frame, push
from identity.outbound import Outbound
from pipeline import redis_store
from relaysim.repos import SimRepo
from tests.backfill_helpers import (
    RELAY,
    RELAY_HOST,
    Network,
    backfill,
    local_network,
    records_of,
    sim_repo,
    states,
    stored_records,
)
from tests.test_settings import assert_one_line, run_check
from tests.worker_helpers import CID, drain, metrics

pytestmark = pytest.mark.django_db(transaction=True)

SIGNAL = "com.example.signal"
WHEN = "2025-01-01T00:00:00.000Z"
OTHER_HOST = "other-pds.sim.test"


def post(text: str) -> dict[str, Any]:
    return {"$type": "app.bsky.feed.post", "text": text, "createdAt": WHEN}


def like(uri: str) -> dict[str, Any]:
    return {"$type": "app.bsky.feed.like", "subject": {"uri": uri, "cid": CID}, "createdAt": WHEN}


def follow(did: str) -> dict[str, Any]:
    return {"$type": "app.bsky.graph.follow", "subject": did, "createdAt": WHEN}


def signal() -> dict[str, Any]:
    return {"$type": SIGNAL, "createdAt": WHEN}


class Repos:
    """r0: posts and a like; r1: a follow and the signal collection; r2: the signal collection and a post; r3:
    deactivated; r4: on a PDS the relay does not list."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.r0 = sim_repo(network, 0, [("app.bsky.feed.post/3laaaaaaaaaa2", post("one")),
                                        ("app.bsky.feed.post/3laaaaaaaaab2", post("two"))])
        first_post = f"at://{self.r0.did}/app.bsky.feed.post/3laaaaaaaaaa2"
        self.r0.apply([("create", "app.bsky.feed.like/3laaaaaaaaac2", like(first_post))], rev="3lzzzzzzzzzz2")
        self.r1 = sim_repo(network, 1, [("app.bsky.graph.follow/3laaaaaaaaaa2", follow(self.r0.did)),
                                        (f"{SIGNAL}/3laaaaaaaaaa2", signal())])
        self.r2 = sim_repo(network, 2, [(f"{SIGNAL}/3laaaaaaaaaa2", signal()),
                                        ("app.bsky.feed.post/3laaaaaaaaaa2", post("three"))])
        self.r3 = sim_repo(network, 3, [("app.bsky.feed.post/3laaaaaaaaaa2", post("gone"))])
        network.pds().accounts.statuses[self.r3.did] = "deactivated"
        self.r4 = sim_repo(network, 4, [("app.bsky.feed.post/3laaaaaaaaaa2", post("elsewhere"))], host=OTHER_HOST)

    def all(self) -> list[SimRepo]:
        return [self.r0, self.r1, self.r2, self.r3, self.r4]


@pytest.fixture
def repos(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Repos]:
    settings.VERIFY_COMMITS = True
    with local_network(settings, monkeypatch, hosts=("pds.sim.test", OTHER_HOST)) as network:
        yield Repos(network)


def assert_stored_exactly(repos: Repos, chosen: list[SimRepo]) -> None:
    assert set(states()) == {repo.did for repo in chosen}
    for repo in repos.all():
        assert stored_records(repo.did) == (records_of(repo) if repo in chosen else [])


def test_it_loads_the_dids_given_and_no_other(repos: Repos) -> None:
    backfill(Scope(dids=(repos.r0.did, repos.r4.did), relay=RELAY))
    assert_stored_exactly(repos, [repos.r0, repos.r4])
    assert Post.objects.get(uri__endswith="3laaaaaaaaaa2", did=repos.r0.did).like_count == 1


def test_it_loads_the_repositories_holding_the_signal_collection(repos: Repos) -> None:
    backfill(Scope(signal_collection=SIGNAL, relay=RELAY))
    assert_stored_exactly(repos, [repos.r1, repos.r2])
    assert BackfillListing.objects.get().scope == f"{RELAY_HOST} listReposByCollection {SIGNAL}"


def test_it_loads_every_active_repository_the_relay_lists(repos: Repos) -> None:
    backfill(Scope(full_network=True, relay=RELAY))
    assert_stored_exactly(repos, [repos.r0, repos.r1, repos.r2])


def test_it_resumes_a_listing_from_its_saved_cursor(repos: Repos, monkeypatch: pytest.MonkeyPatch,
                                                    settings: Settings) -> None:
    monkeypatch.setattr(backfill_module, "LIST_PAGE", 1)
    scope = Scope(full_network=True, relay=RELAY)
    client = Outbound(timeout=2.0, concurrency=1, host_overrides=settings.IDENTITY_HOST_OVERRIDES)
    pages: list[int] = []
    list_scope(scope, client=client, should_stop=lambda: len(pages) == 1, on_page=pages.append)
    listing = BackfillListing.objects.get()
    assert (listing.cursor, listing.complete, listing.repos) == (repos.r0.did, False, 1)
    assert set(states()) == {repos.r0.did}
    relay = repos.network.pds()
    asked = len(relay.requests)
    list_scope(scope, client=client, should_stop=lambda: False, on_page=pages.append)
    assert f"cursor={quote(repos.r0.did)}" in relay.requests[asked].query
    listing.refresh_from_db()
    assert (listing.cursor, listing.complete, listing.repos) == ("", True, 3)
    assert set(states()) == {repos.r0.did, repos.r1.did, repos.r2.did}


def test_it_stores_only_the_filtered_collections_in_backfill_and_live(repos: Repos, settings: Settings) -> None:
    settings.COLLECTION_FILTERS = ("app.bsky.feed.post", "app.bsky.graph.*")
    backfill(Scope(dids=(repos.r0.did, repos.r1.did, repos.r2.did), relay=RELAY))
    for repo in (repos.r0, repos.r1, repos.r2):
        expected = [(path, cid) for path, cid in records_of(repo)
                    if path.startswith(("app.bsky.feed.post/", "app.bsky.graph."))]
        assert stored_records(repo.did) == expected
    assert not Like.objects.exists() and Follow.objects.count() == 1

    settings.VERIFY_COMMITS = False  # a hand-made commit
    did = repos.r3.did
    push(redis_store.connect(), [(1, commit_frame(1, [
        ("create", "app.bsky.feed.like/3lbbbbbbbbbb2", like(f"at://{did}/app.bsky.feed.post/3laaaaaaaaaa2")),
        ("create", "app.bsky.feed.post/3lbbbbbbbbbb2", post("live")),
        ("create", f"{SIGNAL}/3lbbbbbbbbbb2", signal()),
    ], did=did))])
    drain()
    assert stored_records(did) == [("app.bsky.feed.post/3lbbbbbbbbbb2", Post.objects.get(did=did).cid)]
    counted = metrics(redis_store.connect())
    assert (counted["errors"], counted["filtered"]) == (0, 2)  # the like and the signal record


@pytest.mark.parametrize(("collection", "stored"), [
    ("app.bsky.feed.post", True), ("app.bsky.graph.follow", True), ("app.bsky.graph.listitem", True),
    ("app.bsky.feed.like", False), ("app.bsky.graphs.thing", False), ("com.example.signal", False),
])
def test_it_matches_collections_against_nsids_and_namespaces(collection: str, stored: bool) -> None:
    assert is_stored(collection, ("app.bsky.feed.post", "app.bsky.graph.*")) is stored
    assert is_stored(collection, ()) is True


def test_it_refuses_a_collection_filter_that_is_no_nsid_at_start() -> None:
    assert_one_line(run_check(COLLECTION_FILTERS="app.bsky.feed.post,app bsky"),
                    "COLLECTION_FILTERS must list NSIDs or namespaces ending in .*, got 'app bsky'")
    assert run_check(COLLECTION_FILTERS="app.bsky.feed.post, app.bsky.graph.*").returncode == 0


@pytest.fixture
def keep_signal_handlers() -> Iterator[None]:
    """The command installs its SIGTERM/SIGINT handlers in this process: they are put back after the test."""
    handlers = {signum: signals.getsignal(signum) for signum in (signals.SIGTERM, signals.SIGINT)}
    yield
    for signum, handler in handlers.items():
        signals.signal(signum, handler)


@pytest.mark.usefixtures("keep_signal_handlers")
@pytest.mark.parametrize("scope", ["dids", "signal-collection", "full-network"])
def test_it_takes_each_scope_from_the_command_line(scope: str, repos: Repos) -> None:
    arguments, chosen = {
        "dids": (["--did", repos.r0.did, repos.r4.did], [repos.r0, repos.r4]),
        "signal-collection": (["--signal-collection", SIGNAL], [repos.r1, repos.r2]),
        "full-network": (["--full-network"], [repos.r0, repos.r1, repos.r2]),
    }[scope]
    call_command("backfill", *arguments, "--relay", RELAY, "--concurrency", "2", "--processes", "0")
    assert_stored_exactly(repos, chosen)


@pytest.mark.parametrize(("arguments", "message"), [
    (["--signal-collection", SIGNAL, "--full-network"], "two scopes"),
    (["--signal-collection", "not an nsid"], "is not an NSID"),
    (["--did", "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "someone"], "not DIDs: someone"),
    (["--concurrency", "0"], "--concurrency must be at least 1"),
    (["--processes", "-1"], "--processes must be 0 or more"),
])
def test_it_refuses_a_command_line_it_cannot_follow(arguments: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("backfill", *arguments)
    assert not BackfillRepo.objects.exists()
