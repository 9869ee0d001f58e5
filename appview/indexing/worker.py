"""The worker loop behind ``manage.py run_worker``: reads firehose:events through the consumer group,
indexes each batch in one PostgreSQL transaction, then acknowledges it and counts it in
cluster:metrics with one Lua call (docs/ARCHITECTURE.md, "Counting exactly once").

Failures: a batch that fails is split in halves until the failing events are alone; one that keeps
failing goes to firehose:dead-letters. PostgreSQL or Redis down: wait with backoff, acknowledge
nothing that is not committed. Entries left pending by a dead worker are claimed (XAUTOCLAIM).
"""

import bisect
import contextlib
import functools
import gc
import json
import logging
import os
import queue
import random
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis
from django.db import DatabaseError, InterfaceError, connection
from django.db import OperationalError as DjangoOperationalError

from appview import redis_store
from appview.indexing import services
from appview.indexing.events import Event, parse_entry
from firehose import stream

logger = logging.getLogger(__name__)

DEAD_LETTERS_MAXLEN = 100_000
HEARTBEAT_SECONDS = 2.0
LOG_SECONDS = 5.0
CURSOR_SECONDS = 1.0
COMPACT_SECONDS = 60.0
MAX_BACKOFF_SECONDS = 30.0
DEADLOCK_RETRIES = 5
LATENCY_WINDOW = 200
SWITCH_INTERVAL_SECONDS = 0.0005
# An entry of firehose:events as read: its ID and its fields (None for an entry deleted while pending).
StreamEntry = tuple[bytes, dict[bytes, bytes] | None]
# A batch's new entries are read in chunks of at most READ_CHUNK entries until the batch size is reached
# or its frames reach BATCH_FRAME_BYTES: a batch of large frames stops early, since what a batch holds in
# memory follows its bytes (its records are copied several times on their way into PostgreSQL, and three
# batches are alive at once: one indexed, one queued, one being read). Past the budget, a batch holds at
# most one chunk more, and the chunks shrink to fit once frames are seen to be large.
READ_CHUNK = 500
BATCH_FRAME_BYTES = 6 * 2**20
EVENT_TYPES = ("#commit", "#identity", "#account", "#sync")
# The cyclic garbage collector's thresholds once the worker has started (see settle_garbage_collector).
GC_THRESHOLDS = (50_000, 20, 10)

# Acknowledges the batch and counts, in cluster:metrics and the "indexed" throughput buckets, only the
# entries this call acknowledged (XACK returned 1): an entry committed twice (a redelivery after a crash
# between commit and ack, or a claim of a slow worker's entry) is counted once.
# KEYS: stream, metrics, second bucket, minute bucket, dead letters, latency histogram.
# ARGV: group, n, m, dead-letter maxlen, second TTL, minute TTL, then n x (id, type, errors, latency bucket), then
# m x (id, type, error, worker, failed_at, then the entry's fields as name/value pairs, count first).
ACK_SCRIPT = """
local group = ARGV[1]
local n = tonumber(ARGV[2])
local m = tonumber(ARGV[3])
local counts = {}
local total = 0
local errors = 0
local latencies = {}
local i = 7
for _ = 1, n do
  if redis.call('XACK', KEYS[1], group, ARGV[i]) == 1 then
    total = total + 1
    errors = errors + tonumber(ARGV[i + 2])
    counts[ARGV[i + 1]] = (counts[ARGV[i + 1]] or 0) + 1
    if ARGV[i + 3] ~= '' then latencies[ARGV[i + 3]] = (latencies[ARGV[i + 3]] or 0) + 1 end
  end
  i = i + 4
end
for _ = 1, m do
  local nfields = tonumber(ARGV[i + 5])
  if redis.call('XACK', KEYS[1], group, ARGV[i]) == 1 then
    local entry = {'XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*'}
    for j = i + 6, i + 5 + nfields * 2 do entry[#entry + 1] = ARGV[j] end
    entry[#entry + 1] = 'error'
    entry[#entry + 1] = ARGV[i + 2]
    entry[#entry + 1] = 'worker'
    entry[#entry + 1] = ARGV[i + 3]
    entry[#entry + 1] = 'failed_at'
    entry[#entry + 1] = ARGV[i + 4]
    redis.call(unpack(entry))
    total = total + 1
    errors = errors + 1
    counts[ARGV[i + 1]] = (counts[ARGV[i + 1]] or 0) + 1
  end
  i = i + 6 + nfields * 2
end
if total > 0 then
  redis.call('HINCRBY', KEYS[2], 'totalEvents', total)
  for name, count in pairs(counts) do
    if string.sub(name, 1, 1) == '#' then redis.call('HINCRBY', KEYS[2], name, count) end
  end
  if errors > 0 then redis.call('HINCRBY', KEYS[2], 'errors', errors) end
  redis.call('INCRBY', KEYS[3], total)
  redis.call('EXPIRE', KEYS[3], ARGV[5])
  redis.call('INCRBY', KEYS[4], total)
  redis.call('EXPIRE', KEYS[4], ARGV[6])
  for bucket, count in pairs(latencies) do redis.call('HINCRBY', KEYS[6], bucket, count) end
end
return {total, errors}
"""


# Upper bounds (ms) of the buckets of cluster:latency: the time from run_firehose reading an event to its commit.
LATENCY_BUCKETS_MS = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000, 1500, 2000,
                      3000, 5000, 10000, 30000, 60000)


def latency_bucket(event: Event, now: float) -> str:
    """The cluster:latency field for an event committed at ``now``; empty when it carries no arrival time."""
    try:
        received_ms = int(event.fields.get(b"received_at", b""))
    except ValueError:
        return ""
    latency_ms = now * 1000 - received_ms
    index = bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)
    return str(LATENCY_BUCKETS_MS[index]) if index < len(LATENCY_BUCKETS_MS) else "+inf"


def settle_garbage_collector() -> None:
    """Called by run_worker once start-up is over. With Python's defaults (a collection every 700 new
    objects) the collector scanned each batch's tens of thousands of live objects again and again while
    the batch was parsed and indexed, and its full collections walked every object Django made at
    start-up: 16-21 µs per event, about a tenth of the worker's CPU, to find almost nothing, since parsed
    events hold no reference cycles. The start-up objects now leave the collector's sight (gc.freeze),
    and a collection waits for 50,000 net new objects: a batch is freed before that, and garbage in
    cycles, if any, is still collected."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Abandon(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Shutdown was asked while PostgreSQL or Redis does not answer: leave what is unacknowledged pending."""


@dataclass(slots=True)
class Stats:
    processed: int = 0
    errors: int = 0
    dead: int = 0
    batches: int = 0
    last_batch_size: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def p95_ms(self) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


@dataclass(slots=True)
class Batch:
    events: list[Event]
    gone: list[bytes]  # entries deleted from the stream while pending
    deliveries: dict[bytes, int]  # delivery counts of re-delivered entries
    read_at: float


class _Reader:
    """Reads and decodes batches in a thread, one batch ahead of the indexing."""

    def __init__(self, worker: "Worker") -> None:
        self._worker = worker
        self._queue: queue.Queue[Batch | BaseException | None] = queue.Queue(maxsize=1)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"reader-{worker.consumer}", daemon=True)
        self._late: Batch | None = None  # read while closing

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._closing.is_set() and not self._worker.stop:
                self._put(self._worker.read_batch())
        except Abandon:
            self._put(None)
        except BaseException as exc:
            self._put(exc)

    def _put(self, item: "Batch | BaseException | None") -> None:
        while not self._closing.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        if isinstance(item, Batch):
            self._late = item

    def next(self) -> "Batch | None":
        """The next batch, or None when a read found nothing."""
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._worker.stop or not self._thread.is_alive():
                    raise Abandon from None
                continue
            if isinstance(item, BaseException):
                raise item
            return item

    def close(self) -> list[Batch]:
        """Stops the thread; returns the batches it read that were not indexed yet."""
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(self._worker.block_ms / 1000, 1) + 15)
        left: list[Batch] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Batch):
                left.append(item)
        if self._late is not None:
            left.append(self._late)
        return left


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    def __init__(self, *, consumer: str, batch_size: int, claim_idle_ms: int, max_attempts: int,
                 block_ms: int = 1000, batch_bytes: int = BATCH_FRAME_BYTES, read_chunk: int = READ_CHUNK,
                 client: redis.Redis | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.consumer = consumer
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self._chunk = min(read_chunk, batch_size)  # most entries per read; own pending entries and claims: one read
        self._frame_size = 1  # average frame size of the last chunk read (bytes)
        self.claim_idle_ms = claim_idle_ms
        self.max_attempts = max_attempts
        self.block_ms = block_ms
        self.client = client or redis_store.connect()
        self.sleep = sleep
        self.stop = False
        self.stats = Stats()
        self.started_at = time.time()
        self._ack_script = self.client.register_script(ACK_SCRIPT)
        self._known_actors: set[str] = set()
        # First re-read what this consumer name left pending (a restart), from this ID on; None once done.
        # Each read goes on after the last entry of the previous one: the reader thread reads the next
        # batch before this one is acknowledged, and reading from "0" again would deliver it twice.
        self._own_pending_from: str | None = "0"
        self._claim_from = "0-0"
        self._next_claim = 0.0
        self._next_heartbeat = 0.0
        self._next_cursor = 0.0
        self._next_compact = time.monotonic() + COMPACT_SECONDS
        self._next_log = time.monotonic() + LOG_SECONDS
        self._logged = (0, 0, time.monotonic())

    # The loop

    def run(self, *, drain: bool = False) -> None:
        """Indexes until stopped (or, with ``drain``, until nothing is undelivered or pending). A reader
        thread reads and decodes the next batch while this one waits on PostgreSQL."""
        logger.info("worker %s reading %s as group %s, batches of %d", self.consumer,
                    redis_store.events_stream(), redis_store.CONSUMER_GROUP, self.batch_size)
        reader = _Reader(self)
        # The reader thread decodes without releasing the GIL; this thread needs it back at once after
        # each PostgreSQL round trip, which the default 5 ms switch interval would delay (dozens per batch).
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        try:
            self._with_redis(lambda: stream.ensure_group(self.client))
            reader.start()
            while not self.stop:
                batch = reader.next()
                handled = self._handle(batch) if batch is not None else 0
                self._periodic()
                if handled == 0 and drain and self._drained():
                    logger.info("worker %s: stream drained", self.consumer)
                    break
        except Abandon:
            pass
        finally:
            # Batches the reader took meanwhile are pending on this consumer: index them before leaving.
            for batch in reader.close():
                try:
                    self._handle(batch)
                except Abandon:
                    break
            self._finish()

    def step(self) -> int:
        """Reads one batch (own pending entries first, then claims of dead workers' entries when due,
        then new entries), indexes and acknowledges it; returns how many entries it handled. Raises
        Abandon when asked to stop while Redis is unreachable."""
        batch = self.read_batch()
        handled = self._handle(batch) if batch is not None else 0
        self._periodic()
        return handled

    def _handle(self, batch: "Batch") -> int:
        try:
            handled = self._process(batch)
        except Abandon:
            logger.warning("worker %s: stopping with %d entries unacknowledged (they stay pending)",
                           self.consumer, len(batch.events) + len(batch.gone))
            raise
        self.stats.last_batch_size = handled
        self.stats.latencies_ms.append((time.monotonic() - batch.read_at) * 1000)
        self.stats.batches += 1
        return handled

    def read_batch(self) -> "Batch | None":
        read_at = time.monotonic()
        entries, deliveries = self._read()
        if not entries:
            return None
        return Batch(
            events=[parse_entry(entry_id, fields) for entry_id, fields in entries if fields is not None],
            gone=[entry_id for entry_id, fields in entries if fields is None],
            deliveries=deliveries,
            read_at=read_at,
        )

    def _read(self) -> tuple[list[StreamEntry], dict[bytes, int]]:
        now = time.monotonic()
        if self._own_pending_from is not None:
            start = self._own_pending_from
            count = self._chunk_count(self.batch_size, self.batch_bytes)
            entries = self._with_redis(lambda: self._xreadgroup(start, count=count, block=None))
            self._frame_bytes(entries)
            if entries:
                self._own_pending_from = _text(entries[-1][0])
                return entries, self._deliveries(entries)
            self._own_pending_from = None
        if now >= self._next_claim:
            self._next_claim = now + min(self.claim_idle_ms / 2000, 5.0)
            entries = self._with_redis(self._autoclaim)
            if entries:
                return entries, self._deliveries(entries)
        return self._read_new(), {}

    def _read_new(self) -> list[StreamEntry]:
        """New entries for one batch, in chunks, until the batch size or the frame budget is reached (see
        READ_CHUNK). Only the first chunk waits for entries to arrive."""
        entries: list[StreamEntry] = []
        frame_bytes = 0
        while len(entries) < self.batch_size and frame_bytes < self.batch_bytes:
            count = self._chunk_count(self.batch_size - len(entries), self.batch_bytes - frame_bytes)
            block = None if entries else self.block_ms
            try:
                chunk = self._with_redis(functools.partial(self._xreadgroup, ">", count=count, block=block))
            except Abandon:
                if entries:  # delivered to this worker: part of its batch, pending until indexed
                    break
                raise
            if not chunk:
                break
            entries += chunk
            frame_bytes += self._frame_bytes(chunk)
            if len(chunk) < count:  # nothing more is waiting
                break
        return entries

    def _chunk_count(self, entries_left: int, bytes_left: int) -> int:
        """How many entries the next read asks for: a chunk, or less when the batch has room for less,
        counting frames at the size of the last ones read."""
        return max(1, min(self._chunk, entries_left, bytes_left // self._frame_size))

    def _frame_bytes(self, entries: list[StreamEntry]) -> int:
        """The frame bytes of these entries; notes their average size for the next reads."""
        size = sum(len(fields.get(b"frame", b"")) for _, fields in entries if fields is not None)
        if entries:
            self._frame_size = max(1, size // len(entries))
        return size

    def _xreadgroup(self, start: str, *, count: int, block: int | None) -> list[StreamEntry]:
        try:
            reply = self.client.xreadgroup(redis_store.CONSUMER_GROUP, self.consumer,
                                           {redis_store.events_stream(): start}, count=count,
                                           block=block)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            logger.warning("consumer group missing (Redis lost its data?): creating it again")
            stream.ensure_group(self.client)
            return []
        if not reply:
            return []
        return [(entry_id, fields or None) for entry_id, fields in reply[0][1]]

    def _autoclaim(self) -> list[StreamEntry]:
        try:
            reply = self.client.xautoclaim(redis_store.events_stream(), redis_store.CONSUMER_GROUP,
                                           self.consumer, self.claim_idle_ms, start_id=self._claim_from,
                                           count=self._chunk_count(self.batch_size, self.batch_bytes))
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            stream.ensure_group(self.client)
            return []
        next_id, claimed = reply[0], reply[1]
        # Each call scans at most ten times its count. After a claim, the scan goes on at the next read
        # (more of the dead worker's entries may follow). After a scan that found nothing idle, the next
        # one starts over: a dead worker's entries are the oldest pending ones, and under a backlog the
        # live workers' entries pile up behind them faster than a cursor chasing them would come round.
        self._claim_from = _text(next_id) if claimed else "0-0"
        if self._claim_from != "0-0":
            self._next_claim = 0.0
        self._frame_bytes(claimed)
        if claimed:
            logger.info("worker %s claimed %d entries idle for over %d ms", self.consumer, len(claimed),
                        self.claim_idle_ms)
        return [(entry_id, fields or None) for entry_id, fields in claimed]

    def _deliveries(self, entries: list[tuple[bytes, Any]]) -> dict[bytes, int]:
        """How many times each re-delivered entry was delivered, to spot one that kills its workers."""
        ids = [entry_id for entry_id, _ in entries]
        try:
            rows = self._with_redis(lambda: self.client.xpending_range(
                redis_store.events_stream(), redis_store.CONSUMER_GROUP, min=min(ids), max=max(ids),
                count=len(ids) * 2 + 10, consumername=self.consumer))
        except redis.ResponseError as exc:
            logger.warning("could not read delivery counts: %s", exc)
            return {}
        return {row["message_id"]: int(row["times_delivered"]) for row in rows}

    # Indexing

    def _process(self, batch: "Batch") -> int:
        if batch.gone:  # deleted from the stream while pending: nothing to index
            self._with_redis(lambda: self.client.xack(redis_store.events_stream(), redis_store.CONSUMER_GROUP,
                                                      *batch.gone))
        events, deliveries = batch.events, batch.deliveries
        dead: list[tuple[Event, str]] = []
        normal: list[Event] = []
        suspects: list[Event] = []
        for event in events:
            delivered = deliveries.get(event.entry_id, 1)
            if delivered > 2 * self.max_attempts:
                dead.append((event, f"delivered {delivered} times without being acknowledged"))
            elif delivered > self.max_attempts:
                suspects.append(event)
            else:
                normal.append(event)
        done = self._apply_splitting(normal, dead)
        # Entries that were delivered often may be what killed earlier workers: alone, they harm no other.
        for event in suspects:
            done += self._apply_splitting([event], dead)
        self._ack(done, dead)
        return len(events) + len(batch.gone)

    def _apply_splitting(self, events: list[Event], dead: list[tuple[Event, str]]) -> list[Event]:
        if not events:
            return []
        error = self._try_apply(events)
        if error is None:
            return events
        if len(events) > 1:
            middle = len(events) // 2
            return self._apply_splitting(events[:middle], dead) + self._apply_splitting(events[middle:], dead)
        (event,) = events
        attempts = 1
        while error is not None and attempts < self.max_attempts:
            self.sleep(0.05 * attempts)
            error = self._try_apply(events)
            attempts += 1
        if error is None:
            return events
        logger.error("seq %d (entry %s) failed %d times, sent to dead letters: %s", event.seq,
                     event.entry_id.decode(), attempts, error)
        dead.append((event, error))
        return []

    def _try_apply(self, events: list[Event]) -> str | None:
        """Applies the events in one transaction: None on success, else the error. Waits (with backoff)
        while PostgreSQL is unreachable; raises Abandon if asked to stop meanwhile."""
        backoff = 0.5
        deadlocks = 0
        while True:
            try:
                services.index_events(events=events, known_actors=self._known_actors)
                return None
            except Exception as exc:
                if services.is_transaction_rollback(exc):
                    deadlocks += 1
                    if deadlocks > DEADLOCK_RETRIES:
                        return _describe(exc)
                    logger.info("worker %s: %s; retrying the batch", self.consumer, _describe(exc))
                    self.sleep(random.uniform(0.01, 0.1) * deadlocks)
                    continue
                if not _database_down(exc):
                    return _describe(exc)
                logger.warning("PostgreSQL unreachable or not migrated (%s); retrying in %.1f s",
                               _describe(exc), backoff)
                _close_connection()
                self._heartbeat()
                if self.stop:
                    raise Abandon from exc
                self.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _ack(self, done: list[Event], dead: list[tuple[Event, str]]) -> None:
        now = time.time()
        second = int(now)
        args: list[Any] = [redis_store.CONSUMER_GROUP, len(done), len(dead), DEAD_LETTERS_MAXLEN,
                           stream.SECOND_BUCKET_TTL, stream.MINUTE_BUCKET_TTL]
        for event in done:
            args += (event.entry_id, event.type, event.errors, latency_bucket(event, now))
        failed_at = f"{now:.3f}"
        for event, error in dead:
            args += (event.entry_id, event.type, error[:2000], self.consumer, failed_at, len(event.fields))
            for name, value in event.fields.items():
                args += (name, value)
        keys = [redis_store.events_stream(), redis_store.cluster_metrics(),
                redis_store.throughput_bucket("indexed", "s", second),
                redis_store.throughput_bucket("indexed", "m", second // 60), redis_store.dead_letters_stream(),
                redis_store.latency_histogram()]
        try:
            acked, errors = self._with_redis(lambda: self._ack_script(keys=keys, args=args))
        except Abandon:
            logger.warning("worker %s: Redis unreachable at shutdown; %d committed entries stay pending and will"
                           " be redelivered (indexing them again changes nothing)", self.consumer, len(done))
            return
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            logger.warning("consumer group missing (Redis lost its data?): nothing to acknowledge")
            stream.ensure_group(self.client)
            return
        self.stats.processed += int(acked)
        self.stats.errors += int(errors)
        self.stats.dead += len(dead)

    # Housekeeping

    def _periodic(self) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + HEARTBEAT_SECONDS
            self._heartbeat()
        if now >= self._next_cursor:
            self._next_cursor = now + CURSOR_SECONDS
            self._advance_cursor()
        if now >= self._next_compact:
            self._next_compact = now + COMPACT_SECONDS
            try:
                services.compact_row_counts()
            except (DatabaseError, psycopg.Error) as exc:
                logger.warning("could not fold the row-count ledger: %s", _describe(exc))
        if now >= self._next_log:
            self._log(now)

    def _advance_cursor(self) -> None:
        try:
            mark = stream.low_water_mark(self.client)
            if mark is not None:
                services.advance_cursor(seq=mark)
        except (redis.RedisError, DatabaseError, psycopg.Error) as exc:
            logger.warning("could not advance the durable cursor: %s", _describe(exc))
            _close_connection()

    def _heartbeat(self) -> None:
        latency = self.stats.latencies_ms[-1] if self.stats.latencies_ms else None
        beat = {
            "name": self.consumer,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "processed": self.stats.processed,
            "errors": self.stats.errors,
            "deadLetters": self.stats.dead,
            "batchLatencyMs": None if latency is None else round(latency, 1),
            "batchLatencyP95Ms": None if (p95 := self.stats.p95_ms()) is None else round(p95, 1),
            "lastBatchSize": self.stats.last_batch_size,
            "heartbeat": time.time(),
            "startedAt": self.started_at,
        }
        try:
            self.client.hset(redis_store.cluster_workers(), self.consumer, json.dumps(beat))
        except redis.RedisError as exc:
            logger.warning("heartbeat failed: %s", exc)

    def _log(self, now: float) -> None:
        processed, errors, since = self._logged
        elapsed = max(now - since, 1e-9)
        done = self.stats.processed - processed
        logger.info("worker %s: %d events in %.1f s (%.0f/s), %d errors, %d dead letters, p95 batch %.0f ms",
                    self.consumer, done, elapsed, done / elapsed, self.stats.errors - errors, self.stats.dead,
                    self.stats.p95_ms() or 0.0)
        self._logged = (self.stats.processed, self.stats.errors, now)
        self._next_log = now + LOG_SECONDS

    def _drained(self) -> bool:
        """No undelivered entry (the group has delivered up to the stream's last ID) and none pending."""
        def check() -> bool:
            pipe = self.client.pipeline(transaction=True)
            pipe.xinfo_stream(redis_store.events_stream())
            pipe.xinfo_groups(redis_store.events_stream())
            pipe.xpending(redis_store.events_stream(), redis_store.CONSUMER_GROUP)
            try:
                info, groups, pending = pipe.execute()
            except redis.ResponseError:  # the stream or the group is gone (Redis lost its data)
                stream.ensure_group(self.client)
                return False
            group = next((g for g in groups if _text(g["name"]) == redis_store.CONSUMER_GROUP), None)
            if group is None or pending["pending"]:
                return False
            return _id_tuple(group["last-delivered-id"]) >= _id_tuple(info["last-generated-id"])
        return self._with_redis(check)

    def _finish(self) -> None:
        self._advance_cursor()
        try:
            self.client.hdel(redis_store.cluster_workers(), self.consumer)
        except redis.RedisError as exc:
            logger.warning("could not remove the heartbeat: %s", exc)
        logger.info("worker %s stopped: %d events, %d errors, %d dead letters", self.consumer,
                    self.stats.processed, self.stats.errors, self.stats.dead)

    def _with_redis(self, call: Callable[[], Any]) -> Any:
        """Runs a Redis call, waiting with backoff while Redis is unreachable; raises Abandon when asked
        to stop meanwhile."""
        backoff = 0.5
        while True:
            try:
                return call()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if self.stop:
                    raise Abandon from exc
                logger.warning("Redis unreachable (%s); retrying in %.1f s", exc, backoff)
                self.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_tuple(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, sequence = _text(entry_id).partition("-")
    return int(ms), int(sequence or 0)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


# The schema is behind the code (run_worker started before `migrate`): no event is at fault.
SCHEMA_NOT_MIGRATED = (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)


def _database_down(exc: BaseException) -> bool:
    """Connection loss or a schema not migrated yet (as opposed to an error caused by the batch's data):
    waiting is right, setting the events aside as dead letters is not."""
    if isinstance(exc, SCHEMA_NOT_MIGRATED) or isinstance(exc.__cause__, SCHEMA_NOT_MIGRATED):
        return True
    if isinstance(exc, InterfaceError | psycopg.InterfaceError):
        return True
    if isinstance(exc, DjangoOperationalError | psycopg.OperationalError):
        raw = connection.connection
        return raw is None or raw.closed or raw.broken
    return False


def _close_connection() -> None:
    with contextlib.suppress(DatabaseError, psycopg.Error):
        connection.close()
