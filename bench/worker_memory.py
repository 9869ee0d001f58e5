"""Peak memory of run_worker on large records: posts whose texts are ``--text-bytes`` long.

    .venv/bin/python bench/worker_memory.py [--events 20000] [--text-bytes 3000] [--batch-size N]

The simulator's frames are small (0.9 kB on average); what a batch holds in memory follows its bytes, so
this fills firehose:events (a Redis key prefix of its own) with ``--events`` single-post commits of one
account and runs ``manage.py run_worker --drain`` on a fresh database (``appview_worker_bench``, dropped
at the end), as bench/worker_bench.py does, and prints the worker's peak RSS and rate. Not a test.
"""

import argparse
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.worker_bench import (
    BENCH_DB,
    admin_sql,
    push_frames,
    recreate_database,
    remove_keys,
    run_worker,
    setup_environment,
)


def post_frames(events: int, text_bytes: int) -> list[tuple[int, bytes]]:
    """Single-post commits of one account, seqs 1 to ``events``."""
    from harness.events import WHEN, commit_frame
    from relaysim.simulation import tid

    record = {"$type": "app.bsky.feed.post", "text": "y" * text_bytes, "createdAt": WHEN}
    return [(seq, commit_frame(seq, [("create", f"app.bsky.feed.post/{tid(seq, 0)}", record)]))
            for seq in range(1, events + 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--text-bytes", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=None, help="default: run_worker's (WORKER_BATCH_SIZE)")
    args = parser.parse_args()
    setup_environment(f"bench-memory-{uuid.uuid4().hex[:8]}:")
    import django

    django.setup()
    from django.conf import settings

    from pipeline import redis_store

    batch_size = settings.WORKER_BATCH_SIZE if args.batch_size is None else args.batch_size
    client = redis_store.connect()
    recreate_database()
    try:
        frames = post_frames(args.events, args.text_bytes)
        frame_size = sum(len(frame) for _, frame in frames) / len(frames)
        push_frames(frames)
        elapsed, rate, rss = run_worker(batch_size)
    finally:
        remove_keys(client)
        from django.db import connection

        connection.close()
        admin_sql(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
    print(f"{args.events:,} posts of {args.text_bytes:,}-byte texts (frames of {frame_size:,.0f} bytes on average),"
          f" batches of up to {batch_size}: run_worker peak RSS {rss:.0f} MB, {rate:,.0f} events/s"
          f" ({elapsed:.1f} s from start to exit)")


if __name__ == "__main__":
    main()
