"""Peak memory of run_worker on large records: posts whose texts are ``--text-bytes`` long.

    .venv/bin/python bench/worker_memory.py [--events 20000] [--text-bytes 3000] [--batch-size N]

The simulator's frames are small (0.9 kB on average); what a batch holds in memory follows its bytes, so
this fills firehose:events (a Redis key prefix of its own) with ``--events`` single-post commits of one
account and runs ``manage.py run_worker --drain`` on a fresh database (``appview_worker_bench``, dropped
at the end), as bench/worker_bench.py does, and prints the worker's peak RSS and rate. Not a test.
"""

import argparse
import sys
import time
import uuid
from pathlib import Path

import libipld

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.worker_bench import BENCH_DB, admin_sql, recreate_database, remove_keys, run_worker, setup_environment

DID = "did:plc:44ybard66vv44zksje25o7dz"
REV = "3lmxjza3h2i27"


def post_frame(seq: int, text: str) -> bytes:
    from firehose import wire
    from firehose.simulation import tid

    record = libipld.encode_dag_cbor({"$type": "app.bsky.feed.post", "text": text,
                                      "createdAt": "2025-01-01T00:00:00.000Z"})
    commit = libipld.encode_dag_cbor({"did": DID, "version": 3, "rev": REV})
    root = wire.cid_for_block(commit)
    body = {"seq": seq, "rebase": False, "tooBig": False, "repo": DID, "commit": root, "rev": REV,
            "since": None, "blocks": wire.encode_car([root], [commit, record]), "blobs": [],
            "ops": [{"action": "create", "path": f"app.bsky.feed.post/{tid(seq, 0)}",
                     "cid": wire.cid_for_block(record)}],
            "time": "2025-01-01T00:00:00.000Z"}
    return wire.encode_frame({"op": 1, "t": "#commit"}, body)


def fill_stream(events: int, text_bytes: int) -> float:
    """Pushes the posts; returns the average frame size in bytes."""
    from appview import redis_store
    from firehose import stream

    client = redis_store.connect()
    stream.ensure_group(client)
    text = "y" * text_bytes
    total = 0
    now = int(time.time() * 1000)
    for start in range(1, events + 1, 1000):
        pipe = client.pipeline(transaction=False)
        for seq in range(start, min(start + 1000, events + 1)):
            frame = post_frame(seq, text)
            total += len(frame)
            pipe.xadd(redis_store.events_stream(), {"seq": seq, "t": "#commit", "did": DID, "frame": frame,
                                                    "received_at": now}, id=f"{seq}-0")
        pipe.execute()
    return total / events


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

    from appview import redis_store

    batch_size = settings.WORKER_BATCH_SIZE if args.batch_size is None else args.batch_size
    client = redis_store.connect()
    recreate_database()
    try:
        frame_size = fill_stream(args.events, args.text_bytes)
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
