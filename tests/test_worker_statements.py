"""The worker's statements are prepared once per connection and then reused, always planned for the
values they are given, and a batch that fails leaves no prepared statement behind (the rollback
deallocates them; the next batch prepares them again)."""

from collections import Counter

import psycopg
import pytest
from django.db import connection

from appview.models import Like, Post
from harness.events import WHEN, commit_frame, push
from pipeline import redis_store
from tests.worker_helpers import CID, drain, make_worker, post_trigger

pytestmark = pytest.mark.django_db(transaction=True)

POST_URI = "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.post/3lmxjza3h2i01"


def prepared_statements() -> Counter[str]:
    """How many times each statement text is prepared on this thread's connection (the worker's)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return Counter(statement for (statement,) in cursor.fetchall())


def like_frames(seqs: range) -> list[tuple[int, bytes]]:
    like = {"$type": "app.bsky.feed.like", "subject": {"uri": POST_URI, "cid": CID}, "createdAt": WHEN}
    return [(seq, commit_frame(seq, [("create", f"app.bsky.feed.like/3lmxjza3h2i{seq:02d}", like)]))
            for seq in seqs]


def like_upserts(statements: Counter[str]) -> list[int]:
    return [count for statement, count in statements.items() if "INSERT INTO appview_like" in statement]


def test_it_prepares_each_statement_once_and_reuses_it_across_batches() -> None:
    push(redis_store.connect(), like_frames(range(1, 31)))
    worker = drain(batch_size=10)
    assert worker.stats.batches >= 3
    statements = prepared_statements()
    assert like_upserts(statements) == [1]
    assert max(statements.values()) == 1


def test_it_never_runs_a_generic_plan() -> None:
    # A generic plan made while the tables are small keeps its sequential scans as they grow.
    push(redis_store.connect(), like_frames(range(1, 41)))
    drain(batch_size=4)
    with connection.cursor() as cursor:
        cursor.execute("SELECT sum(generic_plans), max(custom_plans) FROM pg_prepared_statements"
                       " WHERE statement LIKE %s", ["%INSERT INTO appview_like%"])
        generic, custom = cursor.fetchone()
    assert custom >= 10
    assert generic == 0


def test_it_leaves_no_prepared_statement_behind_when_a_batch_fails() -> None:
    with post_trigger("IF NEW.text = 'poison' THEN RAISE EXCEPTION 'poisoned record'; END IF;"):
        poison = {"$type": "app.bsky.feed.post", "text": "poison", "createdAt": WHEN}
        # Likes sent before the post in each batch: their upsert is prepared when the post's fails.
        frames = [*like_frames(range(1, 10)), (10, commit_frame(10, [("create", "app.bsky.feed.post/3lmxjza3h2i10",
                                                                         poison)])),
                  *like_frames(range(11, 20))]
        push(redis_store.connect(), frames)
        worker = drain(batch_size=20, max_attempts=2)
        statements = prepared_statements()  # before the trigger's DROP, which makes psycopg deallocate them all
    assert (worker.stats.processed, worker.stats.dead) == (19, 1)
    assert Like.objects.count() == 18 and Post.objects.count() == 0
    assert like_upserts(statements) == [1]
    assert max(statements.values()) == 1


def test_it_prepares_again_when_a_migration_changes_a_result_type_under_it() -> None:
    # A migration run from elsewhere while the worker holds its connection: its prepared read of
    # tombstones now returns another type, which PostgreSQL refuses to run. No event is at fault: the
    # batch's rollback makes psycopg deallocate every prepared statement, and the halves it is split
    # into prepare them again.
    client = redis_store.connect()
    push(client, like_frames(range(1, 11)))
    worker = make_worker(batch_size=5)
    worker.run(drain=True)
    assert like_upserts(prepared_statements()) == [1]
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as migrator:
        migrator.execute("ALTER TABLE appview_recordtombstone ALTER COLUMN rev TYPE varchar(64)")
    try:
        push(client, like_frames(range(11, 21)))
        worker.run(drain=True)
    finally:
        connection.close()  # its plans are for the altered type
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE appview_recordtombstone ALTER COLUMN rev TYPE text")
    assert Like.objects.count() == 20
    assert client.xlen(redis_store.dead_letters_stream()) == 0
    assert (worker.stats.processed, worker.stats.dead) == (20, 0)
