"""Shared by the worker tests: filling firehose:events, building commit frames, running workers in
this process or as subprocesses, and reading the whole index for comparisons."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import libipld
import redis
from django.conf import settings
from django.db import connection

from appview.indexing.consumer import BATCH_FRAME_BYTES, READ_CHUNK
from appview.indexing.worker import Worker
from appview.models import HIDDEN_STATUSES
from harness.compare import WALL_CLOCK_COLUMNS
from harness.events import DID, TID, WHEN, commit_frame
from pipeline import redis_store, stream
from protocol.cid import cid_for_block
from protocol.testing import encode_car, encode_frame

ROOT = Path(__file__).resolve().parent.parent
OTHER = "did:plc:yk4dd2qkboz2yv6tpubpc6co"
CID = "bafyreigaqcu4loopk4dkd57c6zulsivi6lnsrwkpyt5t3khnixglnvwx2i"  # a valid record CID


def push_raw(client: redis.Redis, seq: int, frame: bytes, *, event_type: str = "#commit", did: str = DID) -> None:
    """An entry whose frame need not decode."""
    stream.ensure_group(client)
    client.xadd(redis_store.events_stream(), {"seq": seq, "t": event_type, "did": did, "frame": frame,
                                              "received_at": int(time.time() * 1000)}, id=f"1-{seq}")


def likes(first: int, last: int) -> list[tuple[int, bytes]]:
    """One like of the same post per seq, each of a record of its own."""
    subject = {"uri": f"at://{OTHER}/app.bsky.feed.post/{TID}", "cid": CID}
    return [(seq, commit_frame(seq, [("create", f"app.bsky.feed.like/3lmxjza3h{seq:04d}",
                                      {"$type": "app.bsky.feed.like", "subject": subject, "createdAt": WHEN})]))
            for seq in range(first, last + 1)]


def event_frame(seq: int, event_type: str, did: str = DID, **fields: Any) -> bytes:
    body = {"seq": seq, "did": did, "time": WHEN, **fields}
    if event_type == "#sync":
        commit_block = libipld.encode_dag_cbor({"did": did, "version": 3, "rev": fields.get("rev")})
        body["blocks"] = encode_car([cid_for_block(commit_block)], [commit_block])
    return encode_frame({"op": 1, "t": event_type}, body)


def make_worker(name: str = "test-worker", *, batch_size: int = 100, max_attempts: int = 3, claim_idle_ms: int = 60_000,
                batch_bytes: int = BATCH_FRAME_BYTES, read_chunk: int = READ_CHUNK) -> Worker:
    return Worker(consumer=name, batch_size=batch_size, claim_idle_ms=claim_idle_ms, max_attempts=max_attempts,
                  block_ms=50, batch_bytes=batch_bytes, read_chunk=read_chunk, sleep=lambda _: None)


def drain(name: str = "test-worker", **options: Any) -> Worker:
    worker = make_worker(name, **options)
    worker.run(drain=True)
    return worker


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment a subprocess needs to use this test run's database and Redis keys."""
    db = settings.DATABASES["default"]
    credentials = quote(str(db["USER"] or "")) + (f":{quote(str(db['PASSWORD']))}" if db["PASSWORD"] else "")
    authority = f"{credentials}@" if credentials else ""
    url = f"postgres://{authority}{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"
    return {**os.environ, "DATABASE_URL": url, "REDIS_KEY_PREFIX": settings.REDIS_KEY_PREFIX, **extra}


def start_worker(name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "run_worker", "--consumer", name, *args],
        cwd=ROOT, env=subprocess_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def terminate(process: subprocess.Popen[bytes]) -> str:
    """Sends SIGTERM, checks that the process exits 0 within a minute, and returns its output."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    return process.stdout.read().decode()  # type: ignore[union-attr]


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


def app_tables() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                       " AND tablename LIKE 'appview\\_%%' ORDER BY tablename")
        return [name for (name,) in cursor.fetchall()]


def truncate_index() -> None:
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE " + ", ".join(app_tables()))


def snapshot() -> dict[str, Any]:
    """Every row of every table of the index (time columns left out), the ledger as its sums."""
    result: dict[str, Any] = {}
    with connection.cursor() as cursor:
        for table in app_tables():
            if table == "appview_rowcountdelta":
                cursor.execute(f"SELECT key, sum(delta) FROM {table} GROUP BY key HAVING sum(delta) <> 0 ORDER BY key")
                result[table] = cursor.fetchall()
                continue
            cursor.execute(f"SELECT * FROM {table} LIMIT 0")
            columns = [c.name for c in cursor.description if c.name not in WALL_CLOCK_COLUMNS]
            # A hidden share back to zero is the same as none (the worker deletes such rows from time to time).
            where = " WHERE like_count <> 0 OR repost_count <> 0 OR reply_count <> 0 OR quote_count <> 0" \
                " OR followers_count <> 0 OR follows_count <> 0" if table == "appview_hiddenshare" else ""
            cursor.execute(f"SELECT {', '.join(columns)} FROM {table}{where} ORDER BY 1")
            result[table] = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    return result


def diff(left: dict[str, Any], right: dict[str, Any]) -> list[str]:
    """Readable differences between two snapshots (empty when identical)."""
    problems = []
    for table in sorted(set(left) | set(right)):
        a, b = left.get(table, []), right.get(table, [])
        if a != b:
            missing = [row for row in a if row not in b]
            extra = [row for row in b if row not in a]
            problems.append(f"{table}: {len(a)} vs {len(b)} rows; only left {missing[:3]}; only right {extra[:3]}")
            # Rows that differ in a few columns: name those columns.
            key = next(iter(a[0])) if a and isinstance(a[0], dict) else None
            right_by_key = {row[key]: row for row in extra} if key else {}
            for row in missing[:3]:
                other = right_by_key.get(row[key]) if key else None
                if other is not None:
                    problems.append(f"  {row[key]}: " + ", ".join(
                        f"{column} {value!r} != {other[column]!r}" for column, value in row.items()
                        if other[column] != value))
    return problems


def metrics(client: redis.Redis) -> dict[str, int]:
    return {name.decode(): int(value) for name, value in client.hgetall(redis_store.cluster_metrics()).items()}


def wait_for(condition: Any, *, timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@contextlib.contextmanager
def post_trigger(body: str, *, on: str = "INSERT") -> Iterator[None]:
    """A PL/pgSQL row trigger that runs ``body`` before every ``on`` of a post, dropped on exit: a database
    that refuses some writes, as no event could make it."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE FUNCTION test_post_trigger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} RETURN NEW;"
            f" END $$; CREATE TRIGGER test_post_trigger BEFORE {on} ON appview_post"
            " FOR EACH ROW EXECUTE FUNCTION test_post_trigger()"
        )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER test_post_trigger ON appview_post; DROP FUNCTION test_post_trigger()")


def assert_aggregates_match_rows() -> None:
    """Every stored count equals the count of the rows it summarises."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p.uri FROM appview_post p WHERE"
            " p.like_count <> (SELECT count(*) FROM appview_like l WHERE l.subject_uri = p.uri)"
            " OR p.repost_count <> (SELECT count(*) FROM appview_repost r WHERE r.subject_uri = p.uri)"
            " OR p.reply_count <> (SELECT count(*) FROM appview_post c WHERE c.reply_parent_uri = p.uri)"
            " OR p.quote_count <> (SELECT count(*) FROM appview_post q WHERE q.quote_uri = p.uri)"
        )
        assert cursor.fetchall() == []
        cursor.execute(
            "SELECT a.did FROM appview_actor a WHERE"
            " a.followers_count <> (SELECT count(*) FROM appview_follow f WHERE f.subject_did = a.did)"
            " OR a.follows_count <> (SELECT count(*) FROM appview_follow f WHERE f.did = a.did)"
            " OR a.posts_count <> (SELECT count(*) FROM appview_post p WHERE p.did = a.did)"
        )
        assert cursor.fetchall() == []
        # The hidden accounts' shares equal what their rows add up to (keys whose share is all zero may keep a row).
        cursor.execute(
            "WITH h AS (SELECT did FROM appview_actor WHERE status = ANY(%s)),"
            " expected AS (SELECT key, sum(l) l, sum(r) r, sum(p) p, sum(q) q, sum(fr) fr, sum(fo) fo FROM ("
            "  SELECT x.subject_uri, 1, 0, 0, 0, 0, 0 FROM appview_like x JOIN h ON h.did = x.did"
            "  UNION ALL SELECT x.subject_uri, 0, 1, 0, 0, 0, 0 FROM appview_repost x JOIN h ON h.did = x.did"
            "  UNION ALL SELECT x.reply_parent_uri, 0, 0, 1, 0, 0, 0 FROM appview_post x JOIN h ON h.did = x.did"
            "   WHERE x.reply_parent_uri IS NOT NULL"
            "  UNION ALL SELECT x.quote_uri, 0, 0, 0, 1, 0, 0 FROM appview_post x JOIN h ON h.did = x.did"
            "   WHERE x.quote_uri IS NOT NULL"
            "  UNION ALL SELECT x.subject_did, 0, 0, 0, 0, 1, 0 FROM appview_follow x JOIN h ON h.did = x.did"
            "  UNION ALL SELECT x.did, 0, 0, 0, 0, 0, 1 FROM appview_follow x JOIN h ON h.did = x.subject_did"
            " ) AS s(key, l, r, p, q, fr, fo) GROUP BY key),"
            " stored AS (SELECT key, like_count l, repost_count r, reply_count p, quote_count q, followers_count fr,"
            "  follows_count fo FROM appview_hiddenshare"
            "  WHERE (like_count, repost_count, reply_count, quote_count, followers_count, follows_count)"
            "   <> (0, 0, 0, 0, 0, 0))"
            " (SELECT * FROM expected EXCEPT SELECT * FROM stored) UNION ALL"
            " (SELECT * FROM stored EXCEPT SELECT * FROM expected) LIMIT 5",
            [list(HIDDEN_STATUSES)],
        )
        assert cursor.fetchall() == []
