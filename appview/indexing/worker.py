"""The worker loop behind ``manage.py run_worker``: reads firehose:events through the consumer group,
indexes each batch in one PostgreSQL transaction, then acknowledges it and counts it in
cluster:metrics with one Lua call (docs/ARCHITECTURE.md, "Counting exactly once").

Failures: a batch that fails is split in halves until the failing events are alone; one that keeps
failing goes to firehose:dead-letters. PostgreSQL or Redis down: wait with backoff, acknowledge
nothing that is not committed. Entries left pending by a dead worker are claimed (XAUTOCLAIM).
"""

import contextlib
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
from datetime import timedelta
from typing import TypeVar

import psycopg
import redis
from django.conf import settings
from django.db import DatabaseError, InterfaceError, connection
from django.db import OperationalError as DjangoOperationalError

from appview.indexing import services
from appview.indexing.consumer import BATCH_FRAME_BYTES, READ_CHUNK, Abandon, StreamConsumer
from appview.indexing.events import ParsedEvent, parse_body, read_entry
from appview.sync.handles import copy_confirmed_handles
from appview.sync.live_scope import admit_signalled, mark_out_of_scope
from appview.sync.signatures import check_signatures
from identity import services as identity
from pipeline import redis_store, stream
from pipeline.cursor import advance_durable_cursor

logger = logging.getLogger(__name__)
T = TypeVar("T")

HEARTBEAT_SECONDS = 2.0
LOG_SECONDS = 5.0
CURSOR_SECONDS = 1.0
COMPACT_SECONDS = 60.0
HANDLES_SECONDS = 2.0
# Documents fetched this long ago at most are copied on each pass; the first pass of a worker looks further back,
# over what was fetched while no worker ran.
HANDLES_WINDOW_SECONDS = 600.0
FIRST_HANDLES_WINDOW_SECONDS = 86_400.0
MAX_BACKOFF_SECONDS = 30.0  # while PostgreSQL is unreachable
DEADLOCK_RETRIES = 5
LATENCY_WINDOW = 200
SWITCH_INTERVAL_SECONDS = 0.0005
# The cyclic garbage collector's thresholds once the worker has started (see settle_garbage_collector).
GC_THRESHOLDS = (50_000, 20, 10)

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
    events: list[ParsedEvent]
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
        finally:
            connection.close()  # this thread's own, opened when it read the signing keys of a batch

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
        self.max_attempts = max_attempts
        self.block_ms = block_ms
        self.client = client or redis_store.connect()
        self.sleep = sleep
        self.stop = False
        self.stats = Stats()
        self.started_at = time.time()
        self.stream_io = StreamConsumer(client=self.client, consumer=consumer, batch_size=batch_size,
                                        batch_bytes=batch_bytes, read_chunk=read_chunk, claim_idle_ms=claim_idle_ms,
                                        block_ms=block_ms, stopping=lambda: self.stop, sleep=sleep)
        self._known_actors: set[str] = set()
        self._next_heartbeat = 0.0
        self._next_cursor = 0.0
        self._next_handles = 0.0
        self._handles_window = FIRST_HANDLES_WINDOW_SECONDS
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
            self.stream_io.ensure_group()
            reader.start()
            while not self.stop:
                batch = reader.next()
                handled = self._handle(batch) if batch is not None else 0
                self._periodic()
                if handled == 0 and drain and self.stream_io.drained():
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
        entries, deliveries = self.stream_io.read()
        if not entries:
            return None
        verify = settings.VERIFY_COMMITS
        headed = [read_entry(entry_id, fields) for entry_id, fields in entries if fields is not None]
        signal_collection = settings.SIGNAL_COLLECTION
        candidates: set[str] = set()
        if settings.LIVE_SCOPE == "tracked":
            candidates = self._with_database(
                "the live scope", lambda: mark_out_of_scope(headed, signal_collection=signal_collection))
        for event, frame in headed:
            if frame is not None and not event.out_of_scope:
                parse_body(event, frame, verify=verify)
        events = [event for event, _ in headed]
        if verify:
            check_signatures(events, wait=settings.SIGNING_KEY_WAIT)
        if candidates:
            self._with_database("the live scope", lambda: admit_signalled(
                headed, candidates, signal_collection=signal_collection))
        identity.refresh_in_background(event.did for event in events
                                       if event.identity_changed and not event.out_of_scope)
        return Batch(
            events=events,
            gone=[entry_id for entry_id, fields in entries if fields is None],
            deliveries=deliveries,
            read_at=read_at,
        )

    def _with_database(self, what: str, task: Callable[[], T]) -> T:
        """``task``'s result, waiting (with backoff) while PostgreSQL is unreachable; raises Abandon if asked to
        stop meanwhile, and any other error at once."""
        backoff = 0.5
        while True:
            try:
                return task()
            except Exception as exc:
                if not _database_down(exc):
                    raise
                logger.warning("%s waits: PostgreSQL unreachable or not migrated (%s); retrying in %.1f s", what,
                               _describe(exc), backoff)
                _close_connection()
                self._heartbeat()
                if self.stop:
                    raise Abandon from exc
                self.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    # Indexing

    def _process(self, batch: "Batch") -> int:
        if batch.gone:  # deleted from the stream while pending: nothing to index
            self.stream_io.ack_gone(batch.gone)
        events, deliveries = batch.events, batch.deliveries
        dead: list[tuple[ParsedEvent, str]] = []
        normal: list[ParsedEvent] = []
        suspects: list[ParsedEvent] = []
        skipped = [event for event in events if event.out_of_scope]
        for event in events:
            if event.out_of_scope:
                continue
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
        self._acknowledge(done + skipped, dead)
        return len(events) + len(batch.gone)

    def _apply_splitting(self, events: list[ParsedEvent], dead: list[tuple[ParsedEvent, str]]) -> list[ParsedEvent]:
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

    def _try_apply(self, events: list[ParsedEvent]) -> str | None:
        """Applies the events in one transaction: None on success, else the error. Waits (with backoff)
        while PostgreSQL is unreachable; raises Abandon if asked to stop meanwhile."""
        deadlocks = 0
        while True:
            try:
                self._with_database("the batch", lambda: services.index_events(
                    events=events, known_actors=self._known_actors))
                return None
            except Abandon:
                raise
            except Exception as exc:
                if not services.is_transaction_rollback(exc):
                    return _describe(exc)
                deadlocks += 1
                if deadlocks > DEADLOCK_RETRIES:
                    return _describe(exc)
                logger.info("worker %s: %s; retrying the batch", self.consumer, _describe(exc))
                self.sleep(random.uniform(0.01, 0.1) * deadlocks)

    def _acknowledge(self, done: list[ParsedEvent], dead: list[tuple[ParsedEvent, str]]) -> None:
        acked, errors = self.stream_io.acknowledge(done, dead)
        self.stats.processed += acked
        self.stats.errors += errors
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
        if now >= self._next_handles:
            self._next_handles = now + HANDLES_SECONDS
            self._housekeep("copy the handles of fetched DID documents", lambda: copy_confirmed_handles(
                fetched_within=timedelta(seconds=self._handles_window)))
            self._handles_window = HANDLES_WINDOW_SECONDS
        if now >= self._next_compact:
            self._next_compact = now + COMPACT_SECONDS
            self._housekeep("fold the row-count ledger", services.compact_row_counts)
            self._housekeep("queue the repos that missed commits", lambda: services.queue_repos_missing_commits(
                grace=timedelta(seconds=settings.MISSING_COMMIT_GRACE)))
            self._housekeep("drop empty hidden shares", services.drop_empty_hidden_shares)
            self._housekeep("collect old tombstones", lambda: services.collect_tombstones(
                retention=timedelta(seconds=settings.TOMBSTONE_RETENTION)))
        if now >= self._next_log:
            self._log(now)

    def _housekeep(self, what: str, task: Callable[[], object]) -> None:
        try:
            task()
        except (DatabaseError, psycopg.Error) as exc:
            logger.warning("could not %s: %s", what, _describe(exc))
            _close_connection()

    def _advance_cursor(self) -> None:
        try:
            mark = stream.low_water_mark(self.client)
            if mark is not None:
                advance_durable_cursor(generation=mark.generation, seq=mark.seq)
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
        lookups = identity.stats()
        failures = sum(count for name, count in lookups.items() if name.startswith("failures:"))
        logger.info("worker %s: %d events in %.1f s (%.0f/s), %d errors, %d dead letters, p95 batch %.0f ms;"
                    " identities: %d from memory, %d from PostgreSQL, %d fetched, %d failed",
                    self.consumer, done, elapsed, done / elapsed, self.stats.errors - errors, self.stats.dead,
                    self.stats.p95_ms() or 0.0, lookups.get("memory_hits", 0), lookups.get("db_hits", 0),
                    lookups.get("resolutions", 0), failures)
        self._logged = (self.stats.processed, self.stats.errors, now)
        self._next_log = now + LOG_SECONDS

    def _finish(self) -> None:
        self._advance_cursor()
        try:
            self.client.hdel(redis_store.cluster_workers(), self.consumer)
        except redis.RedisError as exc:
            logger.warning("could not remove the heartbeat: %s", exc)
        logger.info("worker %s stopped: %d events, %d errors, %d dead letters", self.consumer,
                    self.stats.processed, self.stats.errors, self.stats.dead)



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
