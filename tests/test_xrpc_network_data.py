"""The read API over data it did not choose: the simulator's realistic mix and the real relay scenarios,
indexed by a worker; every answer validates against its lexicon."""

from typing import Any

import pytest
from django.test import Client

from appview.models import Actor, Follow, Like, Post
from harness.events import push
from pipeline import redis_store
from relaysim.scenarios import load_scenario
from relaysim.simulation import SyntheticFirehose
from tests import lexicon_validator
from tests.conftest import SCENARIOS, fixture_files
from tests.worker_helpers import drain

pytestmark = pytest.mark.django_db(transaction=True)

FILTERS = ("posts_with_replies", "posts_no_replies", "posts_with_media", "posts_and_author_threads",
           "posts_with_video")


def answers(calls: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The lexicon errors of every call's answer, and any status but 200."""
    client = Client()
    problems = []
    for nsid, params in calls:
        response = client.get(f"/xrpc/{nsid}", params)
        body = response.json()
        if response.status_code != 200:
            problems.append(f"{nsid} {params}: {response.status_code} {body}")
            continue
        problems += [f"{nsid} {params}: {error}" for error in lexicon_validator.output_errors(nsid, body)]
    return problems


def test_it_answers_valid_views_of_the_simulators_network(settings: Any) -> None:
    settings.XRPC_RATE_LIMIT = 1_000_000
    push(redis_store.connect(), SyntheticFirehose(seed=3, actors=300).frames(2500))
    drain(batch_size=1000)
    authors = list(Post.objects.values_list("did", flat=True).distinct()[:6])
    visible = set(Actor.objects.filter(did__in=authors, status="active").values_list("did", flat=True))
    authors = [did for did in authors if did in visible]
    roots = list(Post.objects.filter(reply_count__gt=0).values_list("uri", flat=True)[:5])
    liked = list(Like.objects.values_list("subject_uri", flat=True)[:3])
    followed = list(Follow.objects.filter(subject_did__in=visible).values_list("subject_did", flat=True)[:3])
    recent = list(Post.objects.order_by("-sort_at").values_list("uri", flat=True)[:25])
    assert authors and roots and liked and recent, "the simulator's network should hold all of these"
    calls: list[tuple[str, dict[str, Any]]] = [("app.bsky.feed.getPosts", {"uris": recent})]
    for did in authors:
        calls += [("app.bsky.actor.getProfile", {"actor": did}),
                  ("app.bsky.graph.getFollows", {"actor": did}),
                  ("com.atproto.repo.listRecords", {"repo": did, "collection": "app.bsky.feed.post"})]
        calls += [("app.bsky.feed.getAuthorFeed", {"actor": did, "filter": kind, "includePins": "true"})
                  for kind in FILTERS]
    calls += [("app.bsky.feed.getPostThread", {"uri": uri}) for uri in roots]
    calls += [("app.bsky.feed.getLikes", {"uri": uri}) for uri in liked]
    calls += [("app.bsky.feed.getQuotes", {"uri": uri}) for uri in liked]
    calls += [("app.bsky.graph.getFollowers", {"actor": did}) for did in followed]
    calls += [("app.bsky.feed.searchPosts", {"q": "the"}), ("app.bsky.actor.searchActors", {"q": "a"})]
    assert answers(calls) == []


@pytest.mark.parametrize("path", fixture_files(SCENARIOS, "*.json"), ids=lambda path: path.stem)
def test_it_answers_valid_views_of_the_relay_scenarios(path: Any) -> None:
    messages = [m for m in load_scenario(path) if not m.dropped and m.seq is not None]
    push(redis_store.connect(), {m.seq: m.frame for m in messages}.items())
    drain(batch_size=1000)
    calls: list[tuple[str, dict[str, Any]]] = []
    for did in Actor.objects.filter(status="active").values_list("did", flat=True):
        calls += [("app.bsky.actor.getProfile", {"actor": did}), ("app.bsky.feed.getAuthorFeed", {"actor": did}),
                  ("com.atproto.repo.describeRepo", {"repo": did})]
    uris = list(Post.objects.values_list("uri", flat=True))
    calls += [("app.bsky.feed.getPostThread", {"uri": uri}) for uri in uris]
    if uris:
        calls.append(("app.bsky.feed.getPosts", {"uris": uris[:25]}))
    assert answers(calls) == []
