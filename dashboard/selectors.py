"""Every read the dashboard makes of Redis and PostgreSQL, and the snapshot they add up to.

A snapshot is built from what the pipeline writes (SPEC section 3): nothing running yet means zeros and
``connected: false``, never an error. Key names come from ``appview.redis_store`` only.
"""

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any, TypedDict

import redis
from django.core.cache import cache
from django.db import DatabaseError

from appview import selectors as appview_selectors
from pipeline import redis_store

logger = logging.getLogger(__name__)

PER_SECOND_HISTORY = 15 * 60
PER_MINUTE_HISTORY = 24 * 60
# The indexing rate behind "time to clear" is averaged over this many complete seconds.
RATE_WINDOW_SECONDS = 10
# A worker whose heartbeat is older than this is shown as stale (it may have died).
WORKER_STALE_SECONDS = 30.0
RECORD_COUNTS_CACHE_KEY = "dashboard:record-counts"
RECORD_COUNTS_CACHE_SECONDS = 5
LAST_RECORD_COUNTS_CACHE_KEY = "dashboard:record-counts:last"
LAST_RECORD_COUNTS_CACHE_SECONDS = 24 * 3600


class FirehoseStatus(TypedDict):
    connected: bool
    url: str | None
    currentCursor: str | None
    freshnessSeconds: float | None
    reconnects: int
    paused: bool
    eventsReceived: int
    errors: int


class QueueState(TypedDict):
    length: int
    pending: int
    undelivered: int | None
    deadLetters: int
    estimatedSecondsToClear: float | None


class WorkerState(TypedDict):
    name: str
    host: str | None
    pid: int | None
    heartbeatAgeSeconds: float | None
    stale: bool
    processed: int
    errors: int
    batchLatencyMs: float | None
    lastBatchSize: int | None
    startedAt: Any


class Throughput(TypedDict):
    perSecond: list[list[int]]
    perMinute: list[list[int]]


class Snapshot(TypedDict):
    eventsProcessed: int
    eventCounts: dict[str, int]
    errors: int
    errorRate: float
    firehoseStatus: FirehoseStatus
    queue: QueueState
    workers: list[WorkerState]
    records: dict[str, int]
    databaseAvailable: bool
    throughput: Throughput
    lastUpdate: str


def build_snapshot(*, now: float | None = None) -> Snapshot:
    """The whole dashboard state at ``now`` (seconds since the epoch), from one Redis round trip."""
    now = time.time() if now is None else now
    client = redis_store.connect()
    second, minute = int(now), int(now // 60)
    seconds = range(second - PER_SECOND_HISTORY, second)
    minutes = range(minute - PER_MINUTE_HISTORY, minute)

    pipe = client.pipeline(transaction=False)
    pipe.hgetall(redis_store.cluster_metrics())
    pipe.get(redis_store.firehose_status())
    pipe.xlen(redis_store.events_stream())
    pipe.xpending(redis_store.events_stream(), redis_store.CONSUMER_GROUP)
    pipe.xinfo_groups(redis_store.events_stream())
    pipe.xlen(redis_store.dead_letters_stream())
    pipe.hgetall(redis_store.cluster_workers())
    for series in ("received", "indexed"):
        pipe.mget([redis_store.throughput_bucket(series, "s", t) for t in seconds])
    for series in ("received", "indexed"):
        pipe.mget([redis_store.throughput_bucket(series, "m", m) for m in minutes])
    # A missing stream or consumer group answers with an error: that is "nothing running yet".
    (metrics_raw, status_raw, length, pending_raw, groups_raw, dead_letters, workers_raw,
     received_s, indexed_s, received_m, indexed_m) = pipe.execute(raise_on_error=False)

    metrics = {_text(name): _int(value) for name, value in _ok(metrics_raw, {}).items()}
    total = metrics.get("totalEvents", 0)
    errors = metrics.get("errors", 0)
    per_second = [[t, _int(r), _int(i)] for t, r, i in zip(seconds, received_s, indexed_s, strict=True)]
    per_minute = [[m * 60, _int(r), _int(i)] for m, r, i in zip(minutes, received_m, indexed_m, strict=True)]
    recent = per_second[-RATE_WINDOW_SECONDS:]
    indexed_rate = sum(point[2] for point in recent) / len(recent)
    records, database_available = record_counts()
    return {
        "eventsProcessed": total,
        "eventCounts": {event_type: metrics.get(event_type, 0) for event_type in redis_store.EVENT_TYPES},
        "errors": errors,
        "errorRate": errors / total if total else 0.0,
        "firehoseStatus": _firehose_status(_ok(status_raw, None), now=now),
        "queue": _queue_state(
            length=_int(_ok(length, 0)),
            pending_summary=_ok(pending_raw, {}),
            groups=_ok(groups_raw, []),
            dead_letters=_int(_ok(dead_letters, 0)),
            indexed_rate=indexed_rate,
        ),
        "workers": _workers(_ok(workers_raw, {}), now=now),
        "records": records,
        "databaseAvailable": database_available,
        "throughput": {"perSecond": per_second, "perMinute": per_minute},
        "lastUpdate": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
    }


def snapshot_json(snapshot: Snapshot) -> str:
    return json.dumps(snapshot, separators=(",", ":"))


def latest_snapshot_json() -> str:
    """The snapshot the broadcaster sent last, or a fresh one when it has not sent any yet."""
    stored = redis_store.connect().get(redis_store.dashboard_snapshot())
    if stored is not None:
        return stored.decode()
    return snapshot_json(build_snapshot())


def record_counts() -> tuple[dict[str, int], bool]:
    """Stored records per collection NSID (exact, from the indexer's row-count ledger), and whether
    PostgreSQL answered. Cached a few seconds for every web process at once, failures included: while
    PostgreSQL is down, the last counts it gave, so that the rest of the dashboard still shows."""
    cached = cache.get(RECORD_COUNTS_CACHE_KEY)
    if cached is not None:
        return cached
    try:
        result = (appview_selectors.record_counts(), True)
        cache.set(LAST_RECORD_COUNTS_CACHE_KEY, result[0], LAST_RECORD_COUNTS_CACHE_SECONDS)
    except DatabaseError as exc:
        logger.warning("record counts unavailable, PostgreSQL failed: %s: %s", type(exc).__name__, exc)
        result = (cache.get(LAST_RECORD_COUNTS_CACHE_KEY) or {}, False)
    cache.set(RECORD_COUNTS_CACHE_KEY, result, RECORD_COUNTS_CACHE_SECONDS)
    return result


def _firehose_status(raw: bytes | None, *, now: float) -> FirehoseStatus:
    status: dict[str, Any] = {}
    if raw is not None:
        try:
            decoded = json.loads(raw)
            status = decoded if isinstance(decoded, dict) else {}
        except ValueError:
            logger.warning("firehose:status is not JSON; showing the firehose as disconnected")
    cursor = status.get("currentCursor")
    last_event = _parse_time(status.get("lastEventTime"))
    # Measured when run_firehose wrote its status (every 5 s): "now" would add up to 5 s of our own delay.
    measured_at = _parse_time(status.get("updatedAt")) or now
    return {
        "connected": status.get("connected") is True,
        "url": status.get("url") if isinstance(status.get("url"), str) else None,
        "currentCursor": None if cursor is None else str(cursor),
        # The relay's clock may run a little ahead of ours: never show a negative age.
        "freshnessSeconds": None if last_event is None else round(max(measured_at - last_event, 0.0), 1),
        "reconnects": _int(status.get("reconnects")),
        "paused": status.get("paused") is True,
        "eventsReceived": _int(status.get("eventsReceived")),
        "errors": _int(status.get("errors")),
    }


def _queue_state(
    *, length: int, pending_summary: dict[str, Any], groups: list[dict[Any, Any]], dead_letters: int,
    indexed_rate: float,
) -> QueueState:
    pending = _int(pending_summary.get("pending"))
    group = next((g for g in groups if _text(g.get("name")) == redis_store.CONSUMER_GROUP), None)
    undelivered: int | None
    if group is None:
        # No worker has created the group yet: nothing in the stream was delivered.
        undelivered = length
    else:
        # Entries the group has not been given yet; after deletions Redis cannot tell (lag is None).
        lag = group.get("lag")
        undelivered = None if lag is None else _int(lag)
    backlog = pending + (undelivered or 0)
    if backlog == 0:
        to_clear: float | None = 0.0
    elif indexed_rate > 0:
        to_clear = round(backlog / indexed_rate, 1)
    else:
        to_clear = None
    return {
        "length": length,
        "pending": pending,
        "undelivered": undelivered,
        "deadLetters": dead_letters,
        "estimatedSecondsToClear": to_clear,
    }


def _workers(raw: dict[bytes, bytes], *, now: float) -> list[WorkerState]:
    workers: list[WorkerState] = []
    for consumer, value in raw.items():
        try:
            beat = json.loads(value)
        except ValueError:
            beat = None
        if not isinstance(beat, dict):
            logger.warning("cluster:workers entry %r is not a JSON object; skipped", _text(consumer))
            continue
        heartbeat = beat.get("heartbeat")
        age = round(max(now - heartbeat, 0.0), 1) if isinstance(heartbeat, int | float) else None
        workers.append({
            "name": str(beat.get("name") or _text(consumer)),
            "host": beat.get("host"),
            "pid": beat.get("pid"),
            "heartbeatAgeSeconds": age,
            "stale": age is None or age > WORKER_STALE_SECONDS,
            "processed": _int(beat.get("processed")),
            "errors": _int(beat.get("errors")),
            "batchLatencyMs": _number(beat.get("batchLatencyMs")),
            "lastBatchSize": beat.get("lastBatchSize") if isinstance(beat.get("lastBatchSize"), int) else None,
            "startedAt": beat.get("startedAt"),
        })
    return sorted(workers, key=lambda worker: worker["name"])


def _ok(value: Any, default: Any) -> Any:
    """A pipeline answer, or ``default`` when the command failed because its key does not exist yet."""
    if isinstance(value, redis.ResponseError):
        return default
    if isinstance(value, Exception):
        raise value
    return default if value is None else value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int:
    if isinstance(value, bytes | str):
        try:
            return int(value)
        except ValueError:
            return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
