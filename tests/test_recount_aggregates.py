"""``manage.py recount_aggregates`` sets every count back to what the stored rows say."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection

from appview.models import Actor, Post
from harness.events import push
from pipeline import redis_store
from relaysim.simulation import SyntheticFirehose
from tests.worker_helpers import assert_aggregates_match_rows, drain

pytestmark = pytest.mark.django_db(transaction=True)


def recount(*args: str) -> str:
    out = StringIO()
    call_command("recount_aggregates", *args, stdout=out)
    return out.getvalue()


@pytest.fixture()
def indexed() -> None:
    push(redis_store.connect(), SyntheticFirehose(seed=3, start_seq=1, actors=60).frames(600))
    drain()


def test_it_corrects_counts_that_differ_from_the_rows(indexed: None) -> None:
    liked = Post.objects.filter(like_count__gt=0).order_by("uri").first()
    followed = Actor.objects.filter(followers_count__gt=0).order_by("did").first()
    assert liked is not None and followed is not None
    with connection.cursor() as cursor:
        cursor.execute("UPDATE appview_post SET like_count = like_count + 5 WHERE uri = %s", [liked.uri])
        cursor.execute("UPDATE appview_actor SET followers_count = 0, posts_count = 99 WHERE did = %s",
                       [followed.did])
    posts, actors = recount("--chunk", "7").splitlines()
    assert_aggregates_match_rows()
    assert posts.startswith(f"posts: {Post.objects.count():,} recounted, 1 corrected in ")
    assert actors.startswith(f"actors: {Actor.objects.count():,} recounted, 1 corrected in ")


def test_it_changes_nothing_when_the_counts_are_right(indexed: None) -> None:
    posts = Post.objects.count()
    (line,) = recount("--only", "posts").splitlines()
    assert line.startswith(f"posts: {posts:,} recounted, 0 corrected in ")
