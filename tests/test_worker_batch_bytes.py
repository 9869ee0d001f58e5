"""Batches are bounded by frame bytes as well as by count: after large frames the worker reads fewer."""

import pytest

from appview import redis_store
from appview.models import Like, Post
from tests.test_worker_lifecycle import likes
from tests.worker_helpers import WHEN, commit_frame, make_worker, push

pytestmark = pytest.mark.django_db(transaction=True)

BIG_TEXT = "x" * 50_000


def big_posts(first: int, last: int) -> list[tuple[int, bytes]]:
    return [(seq, commit_frame(seq, [("create", f"app.bsky.feed.post/3lmxjza3p{seq:04d}",
                                      {"$type": "app.bsky.feed.post", "text": BIG_TEXT, "createdAt": WHEN})]))
            for seq in range(first, last + 1)]


def test_it_reads_fewer_entries_after_large_frames_and_full_batches_after_small_ones() -> None:
    posts = big_posts(1, 20)
    frame_bytes = max(len(frame) for _, frame in posts)
    push(redis_store.connect(), [*posts, *likes(21, 60)])
    worker = make_worker(batch_size=20, batch_bytes=200_000)
    handled = [worker.step() for _ in range(4)]
    fitting = 200_000 // frame_bytes
    assert 0 < fitting < 20
    # The first read asks for a full batch; the large frames it gets shrink the next one, whose small
    # frames bring the count back to the batch size.
    assert handled == [20, fitting, 20, 20 - fitting]
    assert Post.objects.count() == 20
    assert Like.objects.count() == 40


def test_it_reads_one_entry_at_a_time_while_each_frame_is_over_the_budget() -> None:
    push(redis_store.connect(), big_posts(1, 6))
    worker = make_worker(batch_size=2, batch_bytes=1000)
    assert [worker.step() for _ in range(6)] == [2, 1, 1, 1, 1, 0]
    assert Post.objects.count() == 6
