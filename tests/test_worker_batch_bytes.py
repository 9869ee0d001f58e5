"""A batch's new entries are read in chunks until the batch size or the frame budget is reached: large
frames make small batches, small frames full ones."""

import pytest

from appview.models import Like, Post
from harness.events import WHEN, commit_frame, push
from pipeline import redis_store
from tests.worker_helpers import drain, likes, make_worker

pytestmark = pytest.mark.django_db(transaction=True)

BIG_TEXT = "x" * 50_000


def big_posts(first: int, last: int) -> list[tuple[int, bytes]]:
    return [(seq, commit_frame(seq, [("create", f"app.bsky.feed.post/3lmxjza3p{seq:04d}",
                                      {"$type": "app.bsky.feed.post", "text": BIG_TEXT, "createdAt": WHEN})]))
            for seq in range(first, last + 1)]


def test_it_ends_a_batch_once_its_frames_reach_the_budget_and_fills_it_with_small_frames() -> None:
    push(redis_store.connect(), [*big_posts(1, 20), *likes(21, 60)])
    worker = make_worker(batch_size=20, batch_bytes=200_000, read_chunk=5)
    batches = []
    while (batch := worker.read_batch()) is not None:
        batches.append([len(event.fields[b"frame"]) for event in batch.events])
    assert sum(map(len, batches)) == 60
    # Nothing is known of the frames before the first chunk: it is read whole, 250 kB.
    assert len(batches[0]) == 5
    for sizes in batches[1:]:
        # Chunks fit what is left of the budget: a batch ends with the frame that reaches it, or full.
        assert sum(sizes[:-1]) < 200_000
        assert sum(sizes) >= 200_000 or len(sizes) == 20 or sizes is batches[-1]
    assert [len(sizes) for sizes in batches[1:4]] == [4, 4, 4]  # 50 kB frames: four reach 200 kB
    assert len(batches[4]) == 20  # the last three large frames, then likes


def test_it_indexes_everything_through_its_reader_thread_with_a_small_budget() -> None:
    push(redis_store.connect(), [*big_posts(1, 10), *likes(11, 40), *big_posts(41, 50)])
    worker = drain(batch_size=20, batch_bytes=100_000, read_chunk=3)
    assert worker.stats.processed == 50
    assert (Post.objects.count(), Like.objects.count()) == (20, 30)
