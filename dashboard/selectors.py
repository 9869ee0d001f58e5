"""Every read the dashboard and ``/metrics`` make of Redis and PostgreSQL, and the snapshot they add up to.

A snapshot is built from what the pipeline writes (SPEC section 3): nothing running yet means zeros and
``connected: false``, never an error. Key names come from ``pipeline.redis_store`` only. What a snapshot
shows may be public: relay URLs lose their credentials, and worker hosts can be hidden
(``DASHBOARD_SHOW_HOSTS``).
"""

import json
import logging
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict
from urllib.parse import unquote, urlsplit, urlunsplit

import redis
from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError
from django.utils.crypto import salted_hmac

from appview import selectors as appview_selectors
from pipeline import redis_store, stream

logger = logging.getLogger(__name__)

PER_SECOND_HISTORY = 15 * 60
PER_MINUTE_HISTORY = 24 * 60
# The indexing rate behind "time to clear" is averaged over this many complete seconds.
RATE_WINDOW_SECONDS = 10
# A worker whose heartbeat is older than this is shown as stale (it may have died).
WORKER_STALE_SECONDS = 30.0
# A backfill run publishes its progress every second: one silent this long was stopped without saying so.
BACKFILL_STALE_SECONDS = 10.0
RECORD_COUNTS_CACHE_KEY = "dashboard:record-counts"
RECORD_COUNTS_CACHE_SECONDS = 5
LAST_RECORD_COUNTS_CACHE_KEY = "dashboard:record-counts:last"
LAST_RECORD_COUNTS_CACHE_SECONDS = 24 * 3600
REPO_SYNC_CACHE_KEY = "dashboard:repo-sync-counts"
# After the first message, a websocket gets only the newest points of the throughput history: the last
# few seconds and minutes, sent again each time, since a bucket can still grow for a moment after its
# second ends (workers' clocks a little apart) and a message or two may be dropped on a slow socket.
UPDATE_SECONDS = 5
UPDATE_MINUTES = 2
# Query parameters whose value is a secret in a URL shown to the public (relay URLs).
SECRET_PARAMETER = re.compile(r"token|key|secret|pass|auth|sig|jwt|session|cred|bearer|code", re.IGNORECASE)
REDACTED = "redacted"


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


class SyncState(TypedDict):
    """Repositories out of sync by state (from PostgreSQL; {} while it does not answer), resyncs done and
    failed, the commits not applied, by reason (``errors:<reason>`` in cluster:metrics), the live record writes
    COLLECTION_FILTERS left out and the live events of repositories LIVE_SCOPE left out."""

    repos: dict[str, int]
    resyncs: int
    resyncFailures: int
    commitsRefused: dict[str, int]
    filtered: int
    outOfScope: int


class BackfillProgress(TypedDict):
    """The latest ``manage.py backfill`` run, as it publishes itself (``backfill:progress``) every second.
    ``state``: none (no run yet), running, finished, stopped, or stale (a run that stopped publishing without
    saying so: killed)."""

    state: str
    reposDone: int
    reposTotal: int
    reposFailed: int
    reposInProgress: int
    reposRemaining: int
    records: int
    recordsPerSecond: float
    etaSeconds: int | None
    updatedSecondsAgo: float | None


class _State(TypedDict):
    """What every message of the dashboard carries."""

    eventsProcessed: int
    eventCounts: dict[str, int]
    errors: int
    errorRate: float
    firehoseStatus: FirehoseStatus
    queue: QueueState
    workers: list[WorkerState]
    records: dict[str, int]
    databaseAvailable: bool
    sync: SyncState
    backfill: BackfillProgress
    lastUpdate: str


class Snapshot(_State):
    throughput: Throughput


class SnapshotUpdate(_State):
    """A snapshot whose ``throughput`` history is replaced by its newest points (``throughputUpdate``)."""

    throughputUpdate: Throughput


@dataclass(frozen=True, slots=True)
class PipelineState:
    """What the pipeline's Redis keys say at one moment (one round trip)."""

    counters: dict[str, int]  # every numeric field of cluster:metrics
    firehose: FirehoseStatus
    queue: QueueState
    workers: list[WorkerState]
    per_second: list[list[int]]  # [epoch second, received, indexed], oldest first
    per_minute: list[list[int]]  # [epoch second of the minute, received, indexed], oldest first
    latency_ms: dict[str, int]  # cluster:latency: bucket upper bound in ms (or "+inf") -> events
    pending_summary: dict[str, Any]
    last_delivered_id: str | None  # the consumer group's, None when there is no group yet
    backfill: BackfillProgress


def read_pipeline(*, now: float, history_seconds: int, history_minutes: int, show_hosts: bool) -> PipelineState:
    """The pipeline's state at ``now`` (seconds since the epoch) with that much throughput history (at
    least one second and one minute)."""
    client = redis_store.connect()
    second, minute = int(now), int(now // 60)
    seconds = range(second - history_seconds, second)
    minutes = range(minute - history_minutes, minute)

    pipe = client.pipeline(transaction=False)
    pipe.hgetall(redis_store.cluster_metrics())
    pipe.get(redis_store.firehose_status())
    pipe.xlen(redis_store.events_stream())
    pipe.xpending(redis_store.events_stream(), redis_store.CONSUMER_GROUP)
    pipe.xinfo_groups(redis_store.events_stream())
    pipe.xlen(redis_store.dead_letters_stream())
    pipe.hgetall(redis_store.cluster_workers())
    pipe.hgetall(redis_store.latency_histogram())
    pipe.hgetall(redis_store.backfill_progress())
    for series in ("received", "indexed"):
        pipe.mget([redis_store.throughput_bucket(series, "s", t) for t in seconds])
    for series in ("received", "indexed"):
        pipe.mget([redis_store.throughput_bucket(series, "m", m) for m in minutes])
    # A missing stream or consumer group answers with an error: that is "nothing running yet".
    (metrics_raw, status_raw, length, pending_raw, groups_raw, dead_letters, workers_raw, latency_raw, backfill_raw,
     received_s, indexed_s, received_m, indexed_m) = pipe.execute(raise_on_error=False)

    per_second = [[t, _int(r), _int(i)] for t, r, i in zip(seconds, received_s, indexed_s, strict=True)]
    per_minute = [[m * 60, _int(r), _int(i)] for m, r, i in zip(minutes, received_m, indexed_m, strict=True)]
    recent = per_second[-RATE_WINDOW_SECONDS:]
    indexed_rate = sum(point[2] for point in recent) / len(recent)
    groups = _ok(groups_raw, [])
    pending_summary = _ok(pending_raw, {})
    group = stream.our_group(groups)
    return PipelineState(
        counters=_counters(_ok(metrics_raw, {})),
        firehose=_firehose_status(_ok(status_raw, None), now=now),
        queue=_queue_state(length=_int(_ok(length, 0)), pending_summary=pending_summary, group=group,
                           dead_letters=_int(_ok(dead_letters, 0)), indexed_rate=indexed_rate),
        workers=_workers(_ok(workers_raw, {}), now=now, show_hosts=show_hosts),
        per_second=per_second,
        per_minute=per_minute,
        latency_ms=_counters(_ok(latency_raw, {})),
        pending_summary=pending_summary,
        last_delivered_id=None if group is None else _text(group.get("last-delivered-id")),
        backfill=_backfill(_ok(backfill_raw, {}), now=now),
    )


def build_snapshot(*, now: float | None = None) -> Snapshot:
    """The whole dashboard state at ``now`` (seconds since the epoch), from one Redis round trip."""
    now = time.time() if now is None else now
    state = read_pipeline(now=now, history_seconds=PER_SECOND_HISTORY, history_minutes=PER_MINUTE_HISTORY,
                          show_hosts=settings.DASHBOARD_SHOW_HOSTS)
    total = state.counters.get("totalEvents", 0)
    errors = state.counters.get("errors", 0)
    records, database_available = record_counts()
    return {
        "eventsProcessed": total,
        "eventCounts": {event_type: state.counters.get(event_type, 0) for event_type in redis_store.EVENT_TYPES},
        "errors": errors,
        "errorRate": errors / total if total else 0.0,
        "firehoseStatus": state.firehose,
        "queue": state.queue,
        "workers": state.workers,
        "records": records,
        "databaseAvailable": database_available,
        "sync": sync_state(state.counters),
        "backfill": state.backfill,
        "throughput": {"perSecond": state.per_second, "perMinute": state.per_minute},
        "lastUpdate": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
    }


def snapshot_update(snapshot: Snapshot) -> SnapshotUpdate:
    """What a websocket gets after its first message: the snapshot with only the newest points of its
    throughput history (``UPDATE_SECONDS`` and ``UPDATE_MINUTES``, which the page puts in place of the
    points it has for the same times), about 1 kB instead of the whole history's 40."""
    history = snapshot["throughput"]
    return {
        "eventsProcessed": snapshot["eventsProcessed"],
        "eventCounts": snapshot["eventCounts"],
        "errors": snapshot["errors"],
        "errorRate": snapshot["errorRate"],
        "firehoseStatus": snapshot["firehoseStatus"],
        "queue": snapshot["queue"],
        "workers": snapshot["workers"],
        "records": snapshot["records"],
        "databaseAvailable": snapshot["databaseAvailable"],
        "sync": snapshot["sync"],
        "backfill": snapshot["backfill"],
        "throughputUpdate": {"perSecond": history["perSecond"][-UPDATE_SECONDS:],
                             "perMinute": history["perMinute"][-UPDATE_MINUTES:]},
        "lastUpdate": snapshot["lastUpdate"],
    }


def newest_second(snapshot: dict[str, Any]) -> int | None:
    """The time of the newest per-second throughput point a snapshot or an update carries."""
    history = snapshot.get("throughput") or snapshot.get("throughputUpdate") or {}
    points = history.get("perSecond") if isinstance(history, dict) else None
    return int(points[-1][0]) if points else None


def snapshot_json(snapshot: Snapshot | SnapshotUpdate) -> str:
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


def sync_state(counters: dict[str, int]) -> SyncState:
    """The sync figures of a snapshot; the repository counts cached like the record counts."""
    repos = cache.get(REPO_SYNC_CACHE_KEY)
    if repos is None:
        try:
            repos = appview_selectors.repo_sync_counts()
        except DatabaseError as exc:
            logger.warning("repository sync counts unavailable, PostgreSQL failed: %s: %s", type(exc).__name__, exc)
            repos = {}
        cache.set(REPO_SYNC_CACHE_KEY, repos, RECORD_COUNTS_CACHE_SECONDS)
    return {
        "repos": repos,
        "resyncs": counters.get("resyncs", 0),
        "resyncFailures": counters.get("resyncFailures", 0),
        "commitsRefused": {name.removeprefix("errors:"): count for name, count in counters.items()
                           if name.startswith("errors:")},
        "filtered": counters.get("filtered", 0),
        "outOfScope": counters.get("outOfScope", 0),
    }


def oldest_waiting_age(state: PipelineState, *, now: float) -> float:
    """Seconds since run_firehose read the oldest entry not yet indexed (pending, or else the first one
    the group has not delivered): how far behind the relay the workers are. 0 when nothing waits."""
    client = redis_store.connect()
    stream_key = redis_store.events_stream()
    if state.queue["pending"] > 0 and state.pending_summary.get("min") is not None:
        # The oldest pending entry, or the next one if it was trimmed meanwhile.
        entries = client.xrange(stream_key, min=_text(state.pending_summary["min"]), count=1)
    elif state.queue["undelivered"] == 0:
        return 0.0
    elif state.last_delivered_id is None:
        entries = client.xrange(stream_key, count=1)
    else:
        entries = client.xrange(stream_key, min="(" + state.last_delivered_id, count=1)
    if not entries:
        return 0.0
    received_ms = _int(entries[0][1].get(b"received_at"))
    return round(max(now - received_ms / 1000, 0.0), 3) if received_ms else 0.0


def public_url(url: str | None) -> str | None:
    """``url`` safe to show anyone: without user name and password, fragment, or the value of any query
    parameter whose name says it is a secret (``token``, ``key``, ``sig`` ...). None when it does not parse."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a malformed port
    except ValueError:
        return None
    host = parts.netloc.rpartition("@")[2]
    query = "&".join(_public_parameter(pair) for pair in parts.query.split("&") if pair)
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def _public_parameter(pair: str) -> str:
    name = pair.partition("=")[0]
    return f"{name}={REDACTED}" if SECRET_PARAMETER.search(unquote(name)) else pair


def _counters(raw: dict[Any, Any]) -> dict[str, int]:
    """Numeric fields of a Redis hash of counters; anything else is left out."""
    counters: dict[str, int] = {}
    for name, value in raw.items():
        try:
            counters[_text(name)] = int(value)
        except (TypeError, ValueError):
            continue
    return counters


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
        "url": public_url(status.get("url")) if isinstance(status.get("url"), str) else None,
        "currentCursor": None if cursor is None else str(cursor),
        # The relay's clock may run a little ahead of ours: never show a negative age.
        "freshnessSeconds": None if last_event is None else round(max(measured_at - last_event, 0.0), 1),
        "reconnects": _int(status.get("reconnects")),
        "paused": status.get("paused") is True,
        "eventsReceived": _int(status.get("eventsReceived")),
        "errors": _int(status.get("errors")),
    }


def _backfill(raw: dict[bytes, bytes], *, now: float) -> BackfillProgress:
    fields = {_text(name): _text(value) for name, value in raw.items()}
    updated = _decimal(fields.get("updatedAt"))
    age = None if updated is None else max(now - updated, 0.0)
    state = fields.get("state", "none")
    if state == "running" and (age is None or age > BACKFILL_STALE_SECONDS):
        state = "stale"
    eta = _int(fields.get("etaSeconds"))
    return {
        "state": state,
        "reposDone": _int(fields.get("reposDone")),
        "reposTotal": _int(fields.get("reposTotal")),
        "reposFailed": _int(fields.get("reposFailed")),
        "reposInProgress": _int(fields.get("reposInProgress")),
        "reposRemaining": _int(fields.get("reposRemaining")),
        "records": _int(fields.get("records")),
        "recordsPerSecond": _decimal(fields.get("recordsPerSecond")) or 0.0,
        "etaSeconds": eta if state == "running" and eta else None,
        "updatedSecondsAgo": None if age is None else round(age, 1),
    }


def _decimal(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _queue_state(
    *, length: int, pending_summary: dict[str, Any], group: dict[Any, Any] | None, dead_letters: int,
    indexed_rate: float,
) -> QueueState:
    pending = _int(pending_summary.get("pending"))
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


def _workers(raw: dict[bytes, bytes], *, now: float, show_hosts: bool) -> list[WorkerState]:
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
        name = str(beat.get("name") or _text(consumer))
        workers.append({
            # A default consumer name is <host>-<pid>: hidden hosts hide it too, behind a stable pseudonym.
            "name": name if show_hosts else _pseudonym(name),
            "host": beat.get("host") if show_hosts else None,
            "pid": beat.get("pid") if show_hosts else None,
            "heartbeatAgeSeconds": age,
            "stale": age is None or age > WORKER_STALE_SECONDS,
            "processed": _int(beat.get("processed")),
            "errors": _int(beat.get("errors")),
            "batchLatencyMs": _number(beat.get("batchLatencyMs")),
            "lastBatchSize": beat.get("lastBatchSize") if isinstance(beat.get("lastBatchSize"), int) else None,
            "startedAt": beat.get("startedAt"),
        })
    return sorted(workers, key=lambda worker: worker["name"])


def _pseudonym(worker_name: str) -> str:
    """The same for the same worker, and no way back to its name without SECRET_KEY."""
    return "worker-" + salted_hmac("dashboard.worker-pseudonym", worker_name).hexdigest()[:8]


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
