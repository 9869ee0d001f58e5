"""The worker's stream I/O on firehose:events: reading batches through the consumer group (own pending
entries after a restart, claims of dead workers' entries, new entries in chunks), acknowledging committed
ones and sending failed ones to the dead letters (``pipeline/lua/ack.lua``), and telling when the stream
is drained. Every call waits with backoff while Redis is unreachable."""

import bisect
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from appview.indexing.events import ParsedEvent
from pipeline import redis_store, scripts, stream

logger = logging.getLogger(__name__)

DEAD_LETTERS_MAXLEN = 100_000
MAX_BACKOFF_SECONDS = 30.0
# An entry of firehose:events as read: its ID and its fields (None for an entry deleted while pending).
StreamEntry = tuple[bytes, dict[bytes, bytes] | None]
# A batch's new entries are read in chunks of at most READ_CHUNK entries until the batch size is reached
# or its frames reach BATCH_FRAME_BYTES: a batch of large frames stops early, since what a batch holds in
# memory follows its bytes (its records are copied several times on their way into PostgreSQL, and three
# batches are alive at once: one indexed, one queued, one being read). Past the budget, a batch holds at
# most one chunk more, and the chunks shrink to fit once frames are seen to be large.
READ_CHUNK = 500
BATCH_FRAME_BYTES = 6 * 2**20


class Abandon(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Shutdown was asked while PostgreSQL or Redis does not answer: leave what is unacknowledged pending."""


def latency_bucket(event: ParsedEvent, now: float) -> str:
    """The cluster:latency field for an event committed at ``now``; empty when it carries no arrival time."""
    try:
        received_ms = int(event.fields.get(b"received_at", b""))
    except ValueError:
        return ""
    latency_ms = now * 1000 - received_ms
    buckets = redis_store.LATENCY_BUCKETS_MS
    index = bisect.bisect_left(buckets, latency_ms)
    return str(buckets[index]) if index < len(buckets) else "+inf"


class StreamConsumer:
    """One consumer of the group ``firehose-processors``. ``stopping`` says when a shutdown was asked:
    a call that waits for Redis then raises Abandon instead of waiting on."""

    def __init__(self, *, client: redis.Redis, consumer: str, batch_size: int, batch_bytes: int, read_chunk: int,
                 claim_idle_ms: int, block_ms: int, stopping: Callable[[], bool],
                 sleep: Callable[[float], None]) -> None:
        self.client = client
        self.consumer = consumer
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self._chunk = min(read_chunk, batch_size)  # most entries per read; own pending entries and claims: one read
        self._frame_size = 1  # average frame size of the last chunk read (bytes)
        self.claim_idle_ms = claim_idle_ms
        self.block_ms = block_ms
        self._stopping = stopping
        self.sleep = sleep
        self._ack_script = client.register_script(scripts.ACK.source)
        # First re-read what this consumer name left pending (a restart), from this ID on; None once done.
        # Each read goes on after the last entry of the previous one: the reader thread reads the next
        # batch before this one is acknowledged, and reading from "0" again would deliver it twice.
        self._own_pending_from: str | None = "0"
        self._claim_from = "0-0"
        self._next_claim = 0.0

    def call(self, call: Callable[[], Any]) -> Any:
        """Runs a Redis call, waiting with backoff while Redis is unreachable; raises Abandon when asked
        to stop meanwhile."""
        backoff = 0.5
        while True:
            try:
                return call()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if self._stopping():
                    raise Abandon from exc
                logger.warning("Redis unreachable (%s); retrying in %.1f s", exc, backoff)
                self.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def ensure_group(self) -> None:
        self.call(lambda: stream.ensure_group(self.client))

    def read(self) -> tuple[list[StreamEntry], dict[bytes, int]]:
        """The entries of the next batch: this consumer's own pending entries first (after a restart), then
        claims of dead workers' entries when due, then new entries; with the delivery counts of re-delivered
        ones."""
        now = time.monotonic()
        if self._own_pending_from is not None:
            start = self._own_pending_from
            count = self._chunk_count(self.batch_size, self.batch_bytes)
            entries = self.call(lambda: self._xreadgroup(start, count=count, block=None))
            self._frame_bytes(entries)
            if entries:
                self._own_pending_from = _text(entries[-1][0])
                return entries, self._deliveries(entries)
            self._own_pending_from = None
        if now >= self._next_claim:
            self._next_claim = now + min(self.claim_idle_ms / 2000, 5.0)
            entries = self.call(self._autoclaim)
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
                chunk = self.call(functools.partial(self._xreadgroup, ">", count=count, block=block))
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
            # UNBLOCKED: the stream was deleted (FLUSHALL) while this read waited on it.
            if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
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
            rows = self.call(lambda: self.client.xpending_range(
                redis_store.events_stream(), redis_store.CONSUMER_GROUP, min=min(ids), max=max(ids),
                count=len(ids) * 2 + 10, consumername=self.consumer))
        except redis.ResponseError as exc:
            logger.warning("could not read delivery counts: %s", exc)
            return {}
        return {row["message_id"]: int(row["times_delivered"]) for row in rows}

    def ack_gone(self, entry_ids: list[bytes]) -> None:
        """Acknowledges entries deleted from the stream while pending: there is nothing to index."""
        self.call(lambda: self.client.xack(redis_store.events_stream(), redis_store.CONSUMER_GROUP, *entry_ids))

    def acknowledge(self, done: list[ParsedEvent], dead: list[tuple[ParsedEvent, str]]) -> tuple[int, int]:
        """Acknowledges committed events and sends failed ones to the dead letters, counting both in
        cluster:metrics (``lua/ack.lua``); returns how many entries this call acknowledged and the errors
        counted with them (0, 0 when Redis stays unreachable through a shutdown or lost the group)."""
        now = time.time()
        second = int(now)
        args: list[Any] = [redis_store.CONSUMER_GROUP, len(done), len(dead), DEAD_LETTERS_MAXLEN,
                           stream.SECOND_BUCKET_TTL, stream.MINUTE_BUCKET_TTL]
        for event in done:
            args += (event.entry_id, event.type, event.errors + (event.sync_problem is not None),
                     latency_bucket(event, now), event.sync_problem or "", event.filtered, int(event.out_of_scope))
        failed_at = f"{now:.3f}"
        for event, error in dead:
            args += (event.entry_id, event.type, error[:2000], self.consumer, failed_at, len(event.fields))
            for name, value in event.fields.items():
                args += (name, value)
        args += redis_store.EVENT_TYPES  # counted at 0 when absent from the batch, so that each field exists
        keys = [redis_store.events_stream(), redis_store.cluster_metrics(),
                redis_store.throughput_bucket("indexed", "s", second),
                redis_store.throughput_bucket("indexed", "m", second // 60), redis_store.dead_letters_stream(),
                redis_store.latency_histogram()]
        try:
            acked, errors = self.call(lambda: self._ack_script(keys=keys, args=args))
        except Abandon:
            logger.warning("worker %s: Redis unreachable at shutdown; %d committed entries stay pending and will"
                           " be redelivered (indexing them again changes nothing)", self.consumer, len(done))
            return 0, 0
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            logger.warning("consumer group missing (Redis lost its data?): nothing to acknowledge")
            stream.ensure_group(self.client)
            return 0, 0
        return int(acked), int(errors)

    def drained(self) -> bool:
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
            group = stream.our_group(groups)
            if group is None or pending["pending"]:
                return False
            return _id_tuple(group["last-delivered-id"]) >= _id_tuple(info["last-generated-id"])
        return self.call(check)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_tuple(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, sequence = _text(entry_id).partition("-")
    return int(ms), int(sequence or 0)
