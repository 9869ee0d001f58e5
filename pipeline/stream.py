"""The Redis Stream ``firehose:events``: consumer group, push, cursor, low-water mark, trimming.

Every entry carries the explicit ID ``<generation>-<seq>`` (docs/ARCHITECTURE.md): ``generation`` numbers
one continuous numbering of one relay host, so Redis itself refuses an entry whose seq is not above the
last one of its generation (a relay that re-delivers or rewinds cannot put an event in the stream twice),
while a new generation takes every event of another relay, or of a relay whose numbering started over.
Positions are ``Position(generation, seq)``, ordered as Redis orders the IDs. The functions take a
synchronous ``redis.Redis`` client (workers and run_firehose's housekeeping); ``Pusher``, on
run_firehose's hot path, an asyncio one.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis
import redis.asyncio

from pipeline import redis_store, scripts
from protocol.frames import MAX_SEQ


class Position(NamedTuple):
    """A stream entry ID: ``generation`` of the relay numbering, ``seq`` of the relay event."""

    generation: int
    seq: int

    def entry_id(self) -> str:
        return f"{self.generation}-{self.seq}"


NO_POSITION = Position(0, 0)  # below every entry ID

SECOND_BUCKET_TTL = 900
MINUTE_BUCKET_TTL = 86_400


@dataclass(slots=True)  # not frozen: one is built per frame, and a frozen __init__ costs three times more
class Entry:
    """One relay event as it goes into the stream; ``frame`` holds the bytes exactly as received."""

    generation: int
    seq: int
    type: str
    did: str
    frame: bytes
    received_at: int  # milliseconds since the epoch


@dataclass(frozen=True, slots=True)
class PushResult:
    added: int
    refused: int  # duplicates or rewinds: ID not above the stream's last ID
    cursor: Position | None  # firehose:cursor after the call
    length: int  # XLEN after the call
    cursor_mismatch: bool  # nothing pushed: firehose:cursor was not the expected value


def ensure_group(client: redis.Redis) -> None:
    """Creates the stream and the consumer group reading it from the start, unless they exist."""
    try:
        client.xgroup_create(redis_store.events_stream(), redis_store.CONSUMER_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def our_group(groups: list[dict[Any, Any]]) -> dict[Any, Any] | None:
    """The consumer group ``firehose-processors`` among the answer of XINFO GROUPS, or None."""
    return next((g for g in groups if _text(g.get("name") or "") == redis_store.CONSUMER_GROUP), None)


def entry_position(entry_id: bytes | str) -> Position:
    """The two numbers of a stream entry ID, in the order Redis sorts them. A bare number is the first
    (firehose:cursor before generations held the seq alone, for the ID ``<seq>-0``)."""
    first, _, second = _text(entry_id).partition("-")
    return Position(int(first), int(second or 0))


def _preceding(position: Position) -> Position:
    """The highest position below ``position`` that an entry can have."""
    if position.seq > 0:
        return Position(position.generation, position.seq - 1)
    return Position(position.generation - 1, MAX_SEQ)


def low_water_mark(client: redis.Redis) -> Position | None:
    """The highest position at or below which every entry has been acknowledged by the consumer group,
    or None when nothing is acknowledged yet (or the group does not exist).

    Entries up to the group's last-delivered ID were delivered; those of them still pending are not
    acknowledged, so the mark is just below the oldest pending one. The XINFO GROUPS fields
    ``entries-read`` and ``lag`` are not used: Redis 7.0 reports them as nil or stale after trims,
    deletions and explicit IDs. Both reads run in one MULTI so that a delivery in between cannot make
    the mark pass an unacknowledged entry.
    """
    stream = redis_store.events_stream()
    pipe = client.pipeline(transaction=True)
    pipe.xinfo_groups(stream)
    pipe.xpending(stream, redis_store.CONSUMER_GROUP)
    try:
        groups, pending = pipe.execute()
    except redis.ResponseError:
        return None  # no stream or no group
    group = our_group(groups)
    if group is None:
        return None
    mark = entry_position(group["last-delivered-id"])
    if pending["pending"] and pending["min"] is not None:
        mark = min(mark, _preceding(entry_position(pending["min"])))
    return mark if mark > NO_POSITION else None


def trim_acknowledged(client: redis.Redis) -> int:
    """Removes the entries at or below the low-water mark, which every worker has acknowledged;
    returns how many were removed. Never touches a pending or undelivered entry."""
    mark = low_water_mark(client)
    if mark is None:
        return 0
    minid = Position(mark.generation, mark.seq + 1).entry_id()
    return int(client.xtrim(redis_store.events_stream(), minid=minid, approximate=False))


def stream_length(client: redis.Redis) -> int:
    return int(client.xlen(redis_store.events_stream()))


def stream_top(client: redis.Redis) -> Position:
    """The position of the last entry ever added to the stream (trimming does not lower it),
    ``NO_POSITION`` if none."""
    try:
        info = client.xinfo_stream(redis_store.events_stream())
    except redis.ResponseError:
        return NO_POSITION  # no such stream
    return entry_position(info["last-generated-id"])


def read_cursor(client: redis.Redis) -> Position | None:
    """The position of the last event pushed (firehose:cursor), or None when Redis does not hold one."""
    value = client.get(redis_store.firehose_cursor())
    return entry_position(value) if value is not None else None


class Pusher:
    """Pushes batches of entries and moves firehose:cursor in one atomic call (``lua/push.lua``).

    A Lua script rather than MULTI/EXEC: it is as atomic, it checks the cursor in the same call (no
    WATCH round trip), and it answers once per batch, where a transaction answers QUEUED for every
    entry, which costs the asyncio client more than decoding the frames does. Commands are packed here
    into one buffer for the same reason.
    """

    def __init__(self, client: redis.asyncio.Redis, *, expected_cursor: Position | None) -> None:
        self._pool = client.connection_pool
        self._client = client
        self.expected_cursor = expected_cursor

    async def push(self, entries: Sequence[Entry], *, now: float) -> PushResult:
        """Pushes ``entries`` (in ascending position order) at time ``now`` (seconds since the epoch, for
        the throughput buckets). A Redis error propagates, and then nothing of the batch was pushed."""
        payload = self._pack(entries, now)
        try:
            reply = await self._call(payload)
        except redis.exceptions.NoScriptError:  # Redis restarted or SCRIPT FLUSH: load it once more
            await self._client.script_load(scripts.PUSH.source)
            reply = await self._call(payload)
        added, refused, cursor, length = reply
        position = entry_position(cursor) if cursor else None
        if added == -1:
            return PushResult(added=0, refused=0, cursor=position, length=int(length), cursor_mismatch=True)
        self.expected_cursor = position
        return PushResult(added=int(added), refused=int(refused), cursor=position, length=int(length),
                          cursor_mismatch=False)

    async def _call(self, payload: bytes) -> list[Any]:
        conn = await self._pool.get_connection()
        try:
            await conn.send_packed_command([payload], check_health=False)
            return await conn.read_response()
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await self._pool.release(conn)

    def _pack(self, entries: Sequence[Entry], now: float) -> bytes:
        second = int(now)
        head = [
            b"EVALSHA", scripts.PUSH.sha, b"4",
            redis_store.events_stream().encode(),
            redis_store.firehose_cursor().encode(),
            redis_store.throughput_bucket("received", "s", second).encode(),
            redis_store.throughput_bucket("received", "m", second // 60).encode(),
            b"" if self.expected_cursor is None else self.expected_cursor.entry_id().encode(),
            b"%d" % SECOND_BUCKET_TTL,
            b"%d" % MINUTE_BUCKET_TTL,
        ]
        parts = [b"*%d\r\n" % (len(head) + 6 * len(entries))]
        parts += (b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in head)
        append = parts.append
        generation, id_prefix = -1, b""
        for entry in entries:
            if entry.generation != generation:  # a batch rarely holds more than one: format it once
                generation = entry.generation
                id_prefix = b"%d-" % generation
            seq = b"%d" % entry.seq
            kind = entry.type.encode()
            did = entry.did.encode()
            received_at = b"%d" % entry.received_at
            append(b"$%d\r\n%b%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n"
                   % (len(id_prefix) + len(seq), id_prefix, seq, len(seq), seq, len(kind), kind, len(did), did,
                      len(entry.frame)))
            append(entry.frame)
            append(b"\r\n$%d\r\n%b\r\n" % (len(received_at), received_at))
        return b"".join(parts)
