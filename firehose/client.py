"""run_firehose: the relay's subscribeRepos websocket into the Redis Stream ``firehose:events``.

Tasks on one event loop:
- the reader connects (``firehose.websocket``; again after any drop, stall or error frame, with
  exponential backoff and jitter), decodes each frame and appends repo events to an in-memory buffer.
  It stops reading while the buffer is full (Redis slow or down) or the stream is above its high-water
  mark (workers behind);
- the pusher moves the buffer into Redis in batches (``stream.Pusher``, asyncio, so that the round
  trip overlaps with reading);
- housekeeping keeps ``firehose:status`` fresh, trims acknowledged entries, lifts backpressure, watches
  for stalls and logs throughput.

Positions: entries go into the stream under a generation, a number claimed in PostgreSQL for one
continuous numbering of one relay host (docs/ARCHITECTURE.md, "The stream entry"). ``firehose:cursor`` (in
Redis, written with each push) is where a restarted process resumes when its generation is still the one of
this relay; otherwise a new generation starts from the relay's durable cursor in PostgreSQL (another relay
was read meanwhile, or Redis lost its data). While running, the reader reconnects from the last seq it
accepted into the buffer, since every buffered event will be pushed. Events at or below the highest seq of
the generation already in the stream are skipped: the stream's explicit IDs would refuse them anyway. A
relay whose numbering started over (it answers ``FutureCursor`` to the cursor, or sends first an event
below it) gets a new generation, read live.
"""

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
from django import db
from django.db import transaction

from firehose import websocket
from pipeline import cursor, status, stream
from protocol.frames import OP_ERROR, REPO_EVENT_TYPES, FrameError, decode_frame, event_of

T = TypeVar("T")

log = logging.getLogger("firehose")

SUBSCRIBE_PATH = "/xrpc/com.atproto.sync.subscribeRepos"
READ_SLICE = 64  # frames decoded between two turns of the event loop
LOOPBACK_HOSTS = ("localhost", "::1")


def backoff_delay(attempt: int, *, base: float, cap: float) -> float:
    """Exponential backoff with jitter: between half and all of base * 2^attempt, capped."""
    delay = min(cap, base * 2 ** min(attempt, 30))
    return delay / 2 + random.uniform(0, delay / 2)


class RelayUrlError(ValueError):
    pass


def relay_base_url(value: str) -> str:
    """The relay's base URL as ws(s)://host[:port]: a bare host means wss:// (ws:// on loopback), and
    http(s):// means ws(s)://. A path to subscribeRepos, if given, is dropped (it is added back)."""
    text = value.strip()
    if not text:
        raise RelayUrlError("the relay URL is empty")
    if "://" not in text:
        host = urlsplit("//" + text).hostname or ""
        text = ("ws://" if host in LOOPBACK_HOSTS or host.startswith("127.") else "wss://") + text
    parts = urlsplit(text)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise RelayUrlError(f"the relay URL {value!r} must be ws://, wss://, http://, https:// or a bare host")
    try:
        parts.port  # noqa: B018 -- raises on a malformed port
    except ValueError:
        raise RelayUrlError(f"the relay URL {value!r} has an invalid port") from None
    if not parts.hostname:
        raise RelayUrlError(f"the relay URL {value!r} has no host")
    path = parts.path.removesuffix(SUBSCRIBE_PATH).rstrip("/")
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def subscribe_url(base_url: str, cursor: int | None) -> str:
    url = base_url + SUBSCRIBE_PATH
    return url if cursor is None else f"{url}?{urlencode({'cursor': cursor})}"


@dataclass(frozen=True)
class FirehoseConfig:
    relay_url: str  # as returned by relay_base_url
    high_water: int
    low_water: int
    stall_seconds: float
    max_frame_bytes: int
    cursor: int | None = None  # overrides every stored cursor
    batch_size: int = 2000
    batch_bytes: int = 8 * 1024 * 1024
    batch_delay: float = 0.005  # lets a batch gather at moderate rates instead of one push per event
    buffer_events: int = 10_000
    buffer_bytes: int = 16 * 1024 * 1024
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    healthy_seconds: float = 30.0
    status_interval: float = 5.0
    log_interval: float = 5.0
    housekeeping_interval: float = 1.0
    shutdown_push_seconds: float = 10.0


@dataclass
class Counters:
    frames: int = 0
    events: int = 0  # repo events accepted into the buffer
    pushed: int = 0
    duplicates: int = 0  # at or below the stream's position: re-deliveries and rewinds
    errors: int = 0  # frames that do not decode or fail validation, oversize frames
    error_frames: int = 0  # op -1 frames sent by the relay
    infos: int = 0
    unknown: int = 0  # unknown t: skipped
    reconnects: int = 0
    redis_errors: int = 0


@dataclass
class _Connection:
    started: float
    resumed_from: int | None  # the cursor it was opened with, until its first repo event
    accepted: int = 0
    stop_reason: str | None = None  # set by whoever closes the connection on purpose


class _RelayErrorFrame(Exception):  # noqa: N818 -- a signal, not a failure
    """The relay said something that ends this connection (an error frame)."""


class _StoppedError(Exception):
    """stop() was called while waiting for a server."""


class _RateLimitedLog:
    """Logs a repeated problem at most once per interval, saying how many were not logged."""

    def __init__(self, interval: float = 5.0) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self._interval) < self._interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += f" ({suppressed} more like it not logged)"
        log.warning(message, *args)


@dataclass
class _Buffer:
    entries: list[stream.Entry] = field(default_factory=list)
    size: int = 0  # bytes of frames


class Firehose:
    def __init__(self, config: FirehoseConfig, client: redis.Redis, async_client: redis.asyncio.Redis) -> None:
        """``client`` serves housekeeping (in threads), ``async_client`` the pushes."""
        self.config = config
        self.client = client
        self.async_client = async_client
        self.relay_host = cursor.relay_host(config.relay_url)
        self.generation = 0  # of the entries read now; claimed in PostgreSQL before the first is read
        self.counters = Counters()
        self.connected = False
        self.paused = False  # backpressure: the stream is above its high-water mark
        self.last_event_time: str | None = None  # the relay's time of the last event accepted
        self.stream_length = 0
        self._pusher: stream.Pusher | None = None
        self._cursor: int | None = None  # where to reconnect: the last seq accepted (None: live)
        self._floor = 0  # events at or below this seq are already in the stream, in this generation
        self._restarted_numbering: str | None = None  # why the relay's numbering seems to have started over
        self._position_lock = asyncio.Lock()  # one change of generation and cursor at a time
        self._buffer = _Buffer()
        self._data_ready = asyncio.Event()
        self._can_read = asyncio.Event()
        self._stopping = asyncio.Event()
        self._ws: websocket.Connection | None = None
        self._conn: _Connection | None = None
        self._last_frame = time.monotonic()
        self._resetting = False  # finding the position again after firehose:cursor changed under us
        self._rate_limited = _RateLimitedLog()

    # -- life cycle ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Asks run() to stop reading, push what was read and return (signal handlers call this)."""
        if not self._stopping.is_set():
            log.info("stopping: pushing what was read, then exiting")
            self._stopping.set()
            self._can_read.set()

    async def run(self) -> None:
        if not await self._start():
            return
        await self._trim()
        self._update_can_read()
        reader = asyncio.create_task(self._reader(), name="firehose-reader")
        pusher = asyncio.create_task(self._push_loop(), name="firehose-pusher")
        helpers = [
            asyncio.create_task(self._status_loop(), name="firehose-status"),
            asyncio.create_task(self._housekeeping_loop(), name="firehose-housekeeping"),
            asyncio.create_task(self._log_loop(), name="firehose-log"),
        ]
        stopping = asyncio.create_task(self._stopping.wait())
        await asyncio.wait([reader, pusher, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        for task in (reader, pusher):
            if task.done() and task.exception() is not None:
                self.stop()
                for other in (reader, pusher, *helpers):
                    other.cancel()
                raise task.exception()  # type: ignore[misc]
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        self.connected = False
        # Whatever was read goes into the stream; if Redis stays down, it is dropped from memory only:
        # firehose:cursor is still at the last pushed event, so the next start reads it again.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.shutdown_push_seconds):
                await pusher
        if not pusher.done():
            log.error("Redis did not take the last %d events before the deadline: the next start reads them "
                      "again from the relay", len(self._buffer.entries))
            pusher.cancel()
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        await self._publish_status()
        log.info("stopped at cursor %s; %s", self._pushed_id(), self.counters)

    async def _start(self) -> bool:
        """Creates the group and finds where to resume, waiting for Redis and PostgreSQL if needed; False
        if asked to stop meanwhile."""
        state = await self._stored_state()
        if state is None:
            return False
        saved, top = state
        self._pusher = stream.Pusher(self.async_client, expected_cursor=saved)
        try:
            await self._resume_position(saved=saved, top=top, initial=True)
        except _StoppedError:
            return False
        return True

    async def _stored_state(self) -> tuple[stream.Position | None, stream.Position] | None:
        """Makes sure the group exists; returns firehose:cursor and the stream's top, waiting for Redis
        as long as it takes (None if asked to stop meanwhile)."""
        attempt = 0
        while True:
            try:
                await asyncio.to_thread(stream.ensure_group, self.client)
                saved = await asyncio.to_thread(stream.read_cursor, self.client)
                return saved, await asyncio.to_thread(stream.stream_top, self.client)
            except redis.RedisError as exc:
                delay = self._backoff(attempt)
                attempt += 1
                log.warning("Redis unavailable (%s): retrying in %.2fs", exc, delay)
                if await self._sleep_or_stop(delay):
                    return None

    async def _resume_position(self, *, saved: stream.Position | None, top: stream.Position,
                               initial: bool) -> None:
        """Sets the generation and where to read from. firehose:cursor when its generation is still this
        relay's (Redis kept its data); else a new generation from the relay's durable cursor in PostgreSQL
        (live without one). --cursor, at start only, overrides the seq. Raises _StoppedError if stopped
        while waiting for PostgreSQL."""
        durable, held = await self._database(cursor.read_durable_cursor, self.relay_host)
        if saved is not None and held is not None and saved.generation == held:
            self.generation = held
            self._cursor, origin = saved.seq, "firehose:cursor in Redis"
        else:
            await self._new_generation(above=top.generation, restarted=False)
            self._cursor = durable
            origin = "durable cursor in PostgreSQL" if durable is not None else "nothing stored: live events only"
        if initial and self.config.cursor is not None:
            self._cursor, origin = self.config.cursor, "--cursor"
        in_stream = top.seq if top.generation == self.generation else 0
        self._floor = max(in_stream, self._cursor or 0)
        log.info("resuming from cursor %s (%s) of relay %s in generation %d; stream top %s", self._cursor, origin,
                 self.relay_host, self.generation, top.entry_id())

    async def _new_generation(self, *, above: int, restarted: bool) -> None:
        """Claims a generation above every other one (and ``above``) for this relay's events from now on."""
        self.generation = await self._database(_claim_new_generation, self.relay_host, above, restarted)
        self._floor = 0
        log.info("relay %s: new stream generation %d", self.relay_host, self.generation)

    async def _database(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` in a thread, again while PostgreSQL is unavailable; raises _StoppedError if
        stop() is called meanwhile."""
        attempt = 0
        while True:
            try:
                return await asyncio.to_thread(_closing_connection, call, *args)
            except db.Error as exc:
                delay = self._backoff(attempt)
                attempt += 1
                log.warning("PostgreSQL unavailable for the durable cursor (%s): retrying in %.1fs", exc, delay)
                if await self._sleep_or_stop(delay):
                    raise _StoppedError from None

    # -- reading ------------------------------------------------------------------------------------

    async def _reader(self) -> None:
        attempt = 0
        first = True
        while not self._stopping.is_set():
            await self._can_read.wait()
            if self._stopping.is_set():
                return
            if not first:
                self.counters.reconnects += 1
            first = False
            conn = _Connection(started=time.monotonic(), resumed_from=self._cursor)
            self._conn = conn
            reason = await self._connection(conn)
            self.connected = False
            if self._stopping.is_set():
                return
            if self._restarted_numbering is not None:
                try:
                    await self._follow_new_numbering()
                except _StoppedError:
                    return
            await self._publish_status()
            healthy = conn.accepted > 0 or time.monotonic() - conn.started >= self.config.healthy_seconds
            attempt = 0 if healthy else attempt + 1
            delay = self._backoff(attempt)
            log.warning("reconnecting to %s in %.2fs from cursor %s after: %s (reconnect #%d)",
                        self.config.relay_url, delay, self._cursor, reason, self.counters.reconnects + 1)
            await self._sleep_or_stop(delay)

    async def _follow_new_numbering(self) -> None:
        """The relay started its numbering over: its old seqs mean nothing now, so its events go on in a
        new generation, read live, and its durable cursor starts again from zero."""
        async with self._position_lock:
            log.warning("relay %s restarted its numbering (%s): reading it live in a new stream generation; its "
                        "durable cursor starts again from 0", self.relay_host, self._restarted_numbering)
            self._restarted_numbering = None
            await self._new_generation(above=self.generation, restarted=True)
            self._cursor = None

    async def _connection(self, conn: _Connection) -> str:
        """One connection, from opening to the end; returns why it ended."""
        url = subscribe_url(self.config.relay_url, self._cursor)
        try:
            # Frames over the limit arrive as websocket.Oversize, skipped unread: the connection stays.
            ws = await websocket.connect(url, max_message_bytes=self.config.max_frame_bytes, open_timeout=10,
                                         max_pending=2048, max_pending_bytes=8 * 1024 * 1024)
        except (OSError, TimeoutError, websocket.WebSocketError) as exc:
            return conn.stop_reason or f"connection failed: {type(exc).__name__}: {exc}"
        self._ws = ws
        self.connected = True
        self._last_frame = time.monotonic()
        log.info("connected to %s", url)
        try:
            await self._publish_status()
            return await self._read(ws, conn)
        except _RelayErrorFrame as exc:
            return str(exc)
        except websocket.ConnectionClosed as exc:
            return conn.stop_reason or str(exc)
        finally:
            self._ws = None
            await ws.close()

    async def _read(self, ws: websocket.Connection, conn: _Connection) -> str:
        handle = self._handle_frame
        can_read = self._can_read
        messages: list[websocket.Message] = []
        while True:
            if not can_read.is_set():
                await can_read.wait()
            if conn.stop_reason is not None:
                return conn.stop_reason
            if not messages:
                messages = await ws.receive()
                self._last_frame = time.monotonic()
            # A slice at a time, then a turn of the event loop: the pusher's socket writes and replies
            # must not wait for thousands of frames to be decoded.
            chunk, messages = messages[:READ_SLICE], messages[READ_SLICE:]
            for index, data in enumerate(chunk):
                if conn.stop_reason is not None:  # e.g. the position was reset meanwhile
                    return conn.stop_reason
                handle(data, conn)
                if not can_read.is_set():  # the buffer is full: the rest waits
                    messages = chunk[index + 1 :] + messages
                    break
            await asyncio.sleep(0)

    def _handle_frame(self, data: websocket.Message, conn: _Connection) -> None:
        counters = self.counters
        counters.frames += 1
        if not isinstance(data, bytes):
            counters.errors += 1
            if isinstance(data, websocket.Oversize):
                self._rate_limited.warning("oversize", "skipped a frame of over %d bytes, the limit, unread",
                                           self.config.max_frame_bytes)
            else:
                self._rate_limited.warning("text", "skipped a text message: the relay sends binary frames only")
            return
        try:
            frame = decode_frame(data, max_bytes=self.config.max_frame_bytes)
            if frame.op == OP_ERROR:
                self._on_error_frame(frame.body)
                return
            if frame.type in REPO_EVENT_TYPES:
                event = event_of(frame)
            elif frame.type == "#info":
                self._on_info(frame.body)
                return
            else:
                counters.unknown += 1
                self._rate_limited.warning("unknown", "skipped a frame of unknown type %r", str(frame.type)[:100])
                return
        except FrameError as exc:
            counters.errors += 1
            self._rate_limited.warning("frame", "skipped a bad frame: %s", exc)
            return
        seq = event.seq
        if conn.resumed_from is not None:
            # Relays may send the cursor's own event again (indigo #837), never one below it.
            if seq < conn.resumed_from:
                self._restarted_numbering = f"its first event after cursor {conn.resumed_from} is seq {seq}"
                self._drop_connection("the relay restarted its numbering")
                return
            conn.resumed_from = None
        if seq <= self._floor:
            counters.duplicates += 1
            return
        self._floor = self._cursor = seq
        counters.events += 1
        conn.accepted += 1
        relay_time = frame.body.get("time")
        if type(relay_time) is str and len(relay_time) <= 64:
            self.last_event_time = relay_time
        buffer = self._buffer
        buffer.entries.append(stream.Entry(self.generation, seq, event.type, event.did, data,
                                           int(time.time() * 1000)))
        buffer.size += len(data)
        if not self._data_ready.is_set():
            self._data_ready.set()
        if len(buffer.entries) >= self.config.buffer_events or buffer.size >= self.config.buffer_bytes:
            self._update_can_read()

    def _on_error_frame(self, body: dict[str, Any]) -> None:
        self.counters.error_frames += 1
        name = str(body.get("error"))[:100]
        message = str(body.get("message"))[:300]
        if name == "FutureCursor" and self._cursor is not None:
            # The relay's numbering is below ours: it started over (rebuilt, or another relay behind the
            # same host). Waiting for it to pass our cursor would stall and then skip its events.
            self._restarted_numbering = f"FutureCursor for cursor {self._cursor}: {message}"
        elif name == "FutureCursor":
            log.error("the relay says it is in the future without a cursor (%s)", message)
        elif name == "ConsumerTooSlow":
            log.warning("the relay cut this consumer off as too slow (%s)", message)
        else:
            log.warning("the relay sent error %s (%s)", name, message)
        raise _RelayErrorFrame(f"error frame {name}: {message}")

    def _on_info(self, body: dict[str, Any]) -> None:
        self.counters.infos += 1
        name = str(body.get("name"))[:100]
        message = str(body.get("message"))[:300]
        if name == "OutdatedCursor":
            log.warning("the relay says cursor %s is older than what it keeps (%s): events before its oldest "
                        "are not available", self._cursor, message)
        else:
            log.info("the relay sent info %s (%s)", name, message)

    def _drop_connection(self, reason: str) -> None:
        """Ends the current connection at once; the reader reconnects and logs ``reason``."""
        conn, ws = self._conn, self._ws
        if conn is not None and conn.stop_reason is None:
            conn.stop_reason = reason
        if ws is not None:
            ws.abort()

    def _update_can_read(self) -> None:
        buffer = self._buffer
        full = len(buffer.entries) >= self.config.buffer_events or buffer.size >= self.config.buffer_bytes
        if self._stopping.is_set() or not (full or self.paused or self._resetting):
            if not self._can_read.is_set():
                self._last_frame = time.monotonic()  # time spent not reading is no stall
            self._can_read.set()
        else:
            self._can_read.clear()

    # -- pushing ------------------------------------------------------------------------------------

    async def _push_loop(self) -> None:
        attempt = 0
        buffer = self._buffer
        while True:
            if not buffer.entries:
                if self._stopping.is_set():
                    return
                self._data_ready.clear()
                await self._wait_data()
                continue
            if len(buffer.entries) < self.config.batch_size and not self._stopping.is_set():
                await asyncio.sleep(self.config.batch_delay)
            batch = self._take_batch()
            try:
                result = await self._pusher.push(batch, now=time.time())  # type: ignore[union-attr]
            except redis.RedisError as exc:
                self.counters.redis_errors += 1
                delay = self._backoff(attempt)
                attempt += 1
                self._rate_limited.warning("redis-push", "Redis refused or failed a push of %d events (%s): "
                                           "holding %d events, retrying in %.2fs", len(batch), exc,
                                           len(buffer.entries), delay)
                await asyncio.sleep(delay)
                continue
            if attempt:
                log.info("Redis took a push again after %d failed tries; %d events held", attempt,
                         len(buffer.entries))
            attempt = 0
            if result.cursor_mismatch:
                await self._on_position_lost(result.cursor)
                continue
            del buffer.entries[: len(batch)]
            buffer.size -= sum(len(entry.frame) for entry in batch)
            self.counters.pushed += result.added
            self.counters.duplicates += result.refused
            self.stream_length = result.length
            if result.length >= self.config.high_water and not self.paused:
                await self._apply_backpressure()
            self._update_can_read()

    async def _wait_data(self) -> None:
        waiter = asyncio.create_task(self._data_ready.wait())
        stopping = asyncio.create_task(self._stopping.wait())
        await asyncio.wait([waiter, stopping], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopping.cancel()

    def _take_batch(self) -> list[stream.Entry]:
        entries = self._buffer.entries
        count = min(len(entries), self.config.batch_size)
        size = 0
        for index in range(count):
            size += len(entries[index].frame)
            if size > self.config.batch_bytes and index > 0:
                count = index
                break
        return entries[:count]

    async def _on_position_lost(self, found: stream.Position | None) -> None:
        """firehose:cursor is not what this process wrote: Redis lost its data, a push went through but
        its answer was lost, or another process pushed. The buffer is dropped (the relay sends it again)
        and reading resumes from the position the stored state gives, as after a restart."""
        log.error("firehose:cursor is %s, not %s as last written (Redis lost its data, a push went through but "
                  "its answer was lost, or another run_firehose is pushing): resuming from the stored position",
                  found.entry_id() if found else None, self._pushed_id())
        # No frame of the current connection is accepted from here on, and none is read until the new
        # position is known.
        self._resetting = True
        self._update_can_read()
        self._drop_connection("the stream position was reset")
        self._buffer.entries.clear()
        self._buffer.size = 0
        try:
            async with self._position_lock:
                state = await self._stored_state()
                if state is not None:
                    saved, top = state
                    self._pusher.expected_cursor = saved  # type: ignore[union-attr]
                    await self._resume_position(saved=saved, top=top, initial=False)
        except _StoppedError:
            pass
        finally:
            self._resetting = False
            self._update_can_read()

    async def _apply_backpressure(self) -> None:
        """Trims what the workers acknowledged; if the stream is still at its high-water mark, stops
        reading from the relay until housekeeping sees it at the low-water mark."""
        if not await self._trim_and_measure():
            return
        if self.stream_length >= self.config.high_water:
            self.paused = True
            log.warning("stream at %d entries (high-water mark %d): paused reading from the relay until the "
                        "workers bring it to %d", self.stream_length, self.config.high_water,
                        self.config.low_water)
            self._update_can_read()
            await self._publish_status()

    # -- housekeeping -------------------------------------------------------------------------------

    async def _status_loop(self) -> None:
        while True:
            await self._publish_status()
            await asyncio.sleep(self.config.status_interval)

    async def _housekeeping_loop(self) -> None:
        tick = min(self.config.housekeeping_interval, self.config.stall_seconds) / 5
        last_trim = 0.0
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if (self.connected and self._can_read.is_set()
                    and now - self._last_frame > self.config.stall_seconds):
                self._drop_connection(f"stall: no frame for {self.config.stall_seconds:g}s")
            # While paused, every tick: reading resumes as soon as the workers have made room.
            if self.paused or now - last_trim >= self.config.housekeeping_interval:
                last_trim = now
                await self._trim()

    async def _trim_and_measure(self) -> bool:
        """Trims what every worker acknowledged and refreshes ``stream_length``; False if Redis failed."""
        try:
            await asyncio.to_thread(stream.trim_acknowledged, self.client)
            self.stream_length = await asyncio.to_thread(stream.stream_length, self.client)
        except redis.RedisError as exc:
            self._rate_limited.warning("redis-trim", "Redis failed a trim (%s)", exc)
            return False
        return True

    async def _trim(self) -> None:
        if not await self._trim_and_measure():
            return
        if self.paused and self.stream_length <= self.config.low_water:
            self.paused = False
            log.info("stream down to %d entries: reading from the relay again", self.stream_length)
            self._update_can_read()
            await self._publish_status()
        elif not self.paused and self.stream_length >= self.config.high_water:
            await self._apply_backpressure()

    async def _log_loop(self) -> None:
        last_time, last_frames, last_pushed = time.monotonic(), 0, 0
        while True:
            await asyncio.sleep(self.config.log_interval)
            now = time.monotonic()
            self._log_throughput(now - last_time, last_frames, last_pushed)
            last_time, last_frames, last_pushed = now, self.counters.frames, self.counters.pushed

    def _log_throughput(self, elapsed: float, last_frames: int, last_pushed: int) -> None:
        c = self.counters
        rate = (c.frames - last_frames) / elapsed if elapsed > 0 else 0.0
        log.info("%.0f frames/s; frames %d, pushed %d (+%d), duplicates skipped %d, errors %d, error frames %d, "
                 "reconnects %d, stream %d, buffered %d, paused %s, cursor %s",
                 rate, c.frames, c.pushed, c.pushed - last_pushed, c.duplicates, c.errors, c.error_frames,
                 c.reconnects, self.stream_length, len(self._buffer.entries), "yes" if self.paused else "no",
                 self._pushed_id())

    def _pushed_id(self) -> str | None:
        pushed = self._pusher.expected_cursor if self._pusher else None
        return pushed.entry_id() if pushed else None

    def status_fields(self) -> dict[str, Any]:
        c = self.counters
        pushed = self._pusher.expected_cursor if self._pusher else None
        return {
            "connected": self.connected,
            "url": self.config.relay_url,
            "relay": self.relay_host,
            "generation": self.generation,
            # The seq of the last event pushed from this relay's current numbering.
            "cursor": pushed.seq if pushed and pushed.generation == self.generation else None,
            "reconnects": c.reconnects,
            "lastEventTime": self.last_event_time,
            "eventsReceived": c.events,
            "errors": c.errors,
            "paused": self.paused,
            "framesReceived": c.frames,
            "eventsPushed": c.pushed,
            "duplicates": c.duplicates,
            "errorFrames": c.error_frames,
            "infos": c.infos,
            "unknownFrames": c.unknown,
            "streamLength": self.stream_length,
            "buffered": len(self._buffer.entries),
            "redisErrors": c.redis_errors,
        }

    async def _publish_status(self) -> None:
        try:
            fields = self.status_fields()  # taken here, in the loop, not in the thread
            await asyncio.to_thread(lambda: status.publish_status(self.client, **fields))
        except redis.RedisError as exc:
            self._rate_limited.warning("redis-status", "Redis failed a status update (%s)", exc)

    # -- helpers ------------------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, base=self.config.backoff_base, cap=self.config.backoff_max)

    async def _sleep_or_stop(self, delay: float) -> bool:
        """Sleeps ``delay`` seconds or until stop() is called; True if stopping."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stopping.wait()
        return self._stopping.is_set()


def _closing_connection(call: Callable[..., T], *args: Any) -> T:
    try:
        return call(*args)
    finally:
        db.connection.close()  # this runs in a pool thread: leave no connection behind in it


def _claim_new_generation(host: str, above: int, restarted: bool) -> int:
    """Claims for ``host`` a generation above every one PostgreSQL holds and above ``above`` (the stream's
    own, which may hold entries of generations PostgreSQL no longer knows); ``restarted``: the relay's
    numbering started over, so its durable cursor goes back to zero."""
    with transaction.atomic():
        generation = 1 + max(cursor.max_generation() or 0, above)
        cursor.claim_generation(host, generation)
        if restarted:
            cursor.reset_durable_cursor(host)
    return generation
