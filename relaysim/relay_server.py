"""The local relay behind ``run_relay_sim``: serves ``com.atproto.sync.subscribeRepos`` over websockets.

``RelaySimulator(source, options=RelayOptions(...))`` takes an iterator of ``(seq, frame)`` (a
``SyntheticFirehose.frames()`` or replayed frames) and serves it with the relay's cursor semantics:

- Events enter a backlog (bounded by ``backlog_bytes``; the oldest are evicted first) at ``rate`` events
  per second, starting when the first client subscribes (``start_immediately`` starts at once). Rate 0
  is as fast as possible, except that emission waits for the slowest connected client rather than
  evict what it has yet to read (so a benchmark of any length runs in bounded memory and loses
  nothing); at a fixed rate, as on a real relay, a client that falls a whole backlog behind is cut
  off. Frames are encoded ahead of time, in the idle time between emissions, and ``prefill()``
  encodes a whole bounded stream before the server listens.
- ``?cursor=N``: every backlog event with seq > N, then live events. A cursor whose successors were
  evicted gets an ``#info`` OutdatedCursor frame, then the oldest event kept. A cursor above the newest
  seq gets an error frame FutureCursor and the connection closes; so does a cursor that is not a
  non-negative integer (InvalidRequest). No cursor: live events only. A client the backlog evicts
  from under it gets ConsumerTooSlow.
- ``Faults`` inject the failures consumers must survive; counts are of events first delivered on the
  connection (bad frames and re-sent frames are not counted).
- ``seq_offset`` renumbers the source's events (seq + offset): two relays fed the same events, one with an
  offset, are the same network seen through two relays (a relay switch).
- Any other path answers HTTP 404.
"""

import asyncio
import contextlib
import logging
import random
from bisect import bisect_right
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from protocol.frames import OP_ERROR
from protocol.testing import encode_frame
from relaysim.simulation import MALFORMED_KINDS, malformed_frame, renumbered

logger = logging.getLogger("relaysim")

PATH = "/xrpc/com.atproto.sync.subscribeRepos"
SEND_BATCH = 256
EMIT_CHUNK = 512
PREFETCH_EVENTS = 20_000
ENCODE_CHUNK = 64
REWIND_FRAMES = 3
TICK_SECONDS = 0.01


@dataclass(frozen=True, kw_only=True)
class Faults:
    drop_every: int = 0  # close the TCP connection (no close frame) after every N events
    malformed_every: int = 0  # a bad frame before every Nth event, rotating through MALFORMED_KINDS
    stall_after: int = 0  # after N events, send nothing for stall_seconds (socket open)
    stall_seconds: float = 0.0
    error_after: int = 0  # after N events, an error frame ConsumerTooSlow, then close
    rewind_every: int = 0  # after every N events, send the last REWIND_FRAMES events again

    @property
    def enabled(self) -> bool:
        return bool(
            self.drop_every or self.malformed_every or self.stall_after or self.error_after or self.rewind_every
        )


@dataclass(frozen=True, kw_only=True)
class RelayOptions:
    rate: float = 0.0
    backlog_bytes: int = 512 * 1024 * 1024
    start_immediately: bool = False
    faults: Faults = field(default_factory=Faults)
    log_interval: float = 5.0
    # Events encoded ahead of their emission; 0 when they carry the wall-clock time they are sent at.
    prefetch_events: int = PREFETCH_EVENTS
    # Added to every event's seq: a second relay serving the same events under its own numbering.
    seq_offset: int = 0


def error_frame(name: str, message: str) -> bytes:
    return encode_frame({"op": OP_ERROR}, {"error": name, "message": message})


def info_frame(name: str, message: str) -> bytes:
    return encode_frame({"op": 1, "t": "#info"}, {"name": name, "message": message})


class Backlog:
    """Events in emission order, addressed by absolute position (positions survive eviction)."""

    def __init__(self, *, max_bytes: int, head: int) -> None:
        self.max_bytes = max_bytes
        self._seqs: list[int] = []
        self._frames: list[bytes] = []
        self.base = 0  # absolute position of the oldest kept event
        self.bytes = 0
        self.head = head  # highest seq emitted (a cursor above it is in the future)
        self.evicted_through = 0  # highest seq evicted: a cursor below it has missed events
        self._ordered = True  # seqs never decrease (only a replay of bad scenarios breaks this)
        self.changed = asyncio.Event()

    @property
    def end(self) -> int:
        return self.base + len(self._frames)

    def __len__(self) -> int:
        return len(self._frames)

    def extend(self, entries: list[tuple[int | None, bytes]], *, keep_from: int | None = None) -> None:
        """Appends events, then evicts the oldest beyond the memory bound, but none at or after
        position ``keep_from`` when given."""
        seqs, frames = self._seqs, self._frames
        for seq, frame in entries:
            previous = seqs[-1] if seqs else self.head
            # A frame without a usable seq travels with the one before it, for cursor purposes.
            value = previous if seq is None else seq
            if value < previous:
                self._ordered = False
            seqs.append(value)
            frames.append(frame)
            self.bytes += len(frame)
            self.head = max(self.head, value)
        self.trim(keep_from=keep_from)
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def trim(self, *, keep_from: int | None = None) -> None:
        if self.bytes <= self.max_bytes:
            return
        # Evict down to nine tenths of the bound at once: deleting a list prefix is O(n).
        target = self.max_bytes * 9 // 10
        limit = len(self._frames) - 1
        if keep_from is not None:
            limit = min(limit, keep_from - self.base)
        count = 0
        freed = 0
        while count < limit and self.bytes - freed > target:
            freed += len(self._frames[count])
            count += 1
        self.evicted_through = max(self.evicted_through, max(self._seqs[:count], default=0))
        del self._seqs[:count]
        del self._frames[:count]
        self.base += count
        self.bytes -= freed

    def position_after(self, cursor: int) -> int:
        """The position of the first kept event with seq > cursor."""
        if self._ordered:
            return self.base + bisect_right(self._seqs, cursor)
        for index, seq in enumerate(self._seqs):
            if seq > cursor:
                return self.base + index
        return self.end

    def frames(self, start: int, stop: int) -> list[bytes]:
        return self._frames[start - self.base : stop - self.base]

    def seq_at(self, position: int) -> int:
        return self._seqs[position - self.base]

    def wake_all(self) -> None:
        self.changed.set()


class RelaySimulator:
    def __init__(
        self, source: Iterator[tuple[int | None, bytes]], *, options: RelayOptions, first_seq: int = 1
    ) -> None:
        self.options = options
        self.backlog = Backlog(max_bytes=options.backlog_bytes, head=first_seq - 1)
        self._source = source
        self._pending: deque[tuple[int | None, bytes]] = deque()
        self._pending_bytes = 0
        self._exhausted = False
        self._started = asyncio.Event()
        if options.start_immediately:
            self._started.set()
        self._stopping = False
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._fault_rng = random.Random(0)
        self._malformed_sent = 0
        self._positions: dict[int, int] = {}  # connection id -> position of its next event
        self.emitted = 0
        self.sent = 0
        self.finished = asyncio.Event()  # the source is exhausted and every event emitted

    @property
    def clients(self) -> int:
        return len(self._positions)

    # -- producing events ---------------------------------------------------------------------------

    def _encode_ahead(self, count: int) -> int:
        produced = 0
        offset = self.options.seq_offset
        for entry in self._source:
            seq = entry[0]
            if offset and seq is not None:
                entry = (seq + offset, renumbered(entry[1], seq + offset))
            self._pending.append(entry)
            self._pending_bytes += len(entry[1])
            produced += 1
            if produced == count:
                return produced
        self._exhausted = True
        return produced

    async def prefill(self, *, max_events: int | None) -> int:
        """Encodes up to ``max_events`` (all when None) ahead, within the backlog's memory bound."""
        while not self._exhausted and not self._stopping and self._pending_bytes < self.options.backlog_bytes:
            wanted = EMIT_CHUNK if max_events is None else min(EMIT_CHUNK, max_events - len(self._pending))
            if wanted <= 0:
                break
            self._encode_ahead(wanted)
            await asyncio.sleep(0)
        return len(self._pending)

    def _take(self, count: int) -> list[tuple[int | None, bytes]]:
        if len(self._pending) < count and not self._exhausted:
            self._encode_ahead(count - len(self._pending))
        entries = []
        pending = self._pending
        while pending and len(entries) < count:
            entry = pending.popleft()
            self._pending_bytes -= len(entry[1])
            entries.append(entry)
        return entries

    async def _emit(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._started.is_set():
            if len(self._pending) < self.options.prefetch_events and not self._exhausted:
                self._encode_ahead(ENCODE_CHUNK)
                await asyncio.sleep(0)
            else:
                await self._started.wait()
        rate = self.options.rate
        keep_from: int | None = None
        started_at = loop.time()
        emitted = 0
        while not self._stopping:
            if rate > 0:
                due = int((loop.time() - started_at) * rate) - emitted
                if due <= 0:
                    if len(self._pending) < self.options.prefetch_events and not self._exhausted:
                        self._encode_ahead(ENCODE_CHUNK)
                        await asyncio.sleep(0)
                    else:
                        wait = (emitted + 1) / rate - (loop.time() - started_at)
                        await asyncio.sleep(min(TICK_SECONDS, max(wait, 0.0)))
                    continue
                count = min(due, EMIT_CHUNK)
            else:
                # As fast as possible, but without evicting what a connected client has yet to read:
                # a benchmark of any length then runs in bounded memory and loses nothing.
                keep_from = min(self._positions.values(), default=None)
                self.backlog.trim(keep_from=keep_from)
                if self.backlog.bytes > self.backlog.max_bytes:
                    await asyncio.sleep(0.002)
                    continue
                count = EMIT_CHUNK
            entries = self._take(count)
            if not entries:
                break
            self.backlog.extend(entries, keep_from=keep_from)
            emitted += len(entries)
            self.emitted += len(entries)
            await asyncio.sleep(0)
        if not self._stopping:
            logger.info(
                "relay-sim: all %d events emitted, head seq %d; idle until stopped", self.emitted, self.backlog.head
            )
            self.finished.set()

    # -- serving ----------------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        """Starts listening; returns the port (useful with port 0)."""
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._check_path,
            compression=None,  # a relay sends raw frames; deflate would cost more than the network saves here
            max_size=2**16,
            write_limit=2**20,
        )
        self._tasks = [asyncio.create_task(self._emit()), asyncio.create_task(self._log_throughput())]
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._stopping = True
        self.backlog.wake_all()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @staticmethod
    def _check_path(connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        backlog = self.backlog
        assert ws.request is not None
        values = parse_qs(urlsplit(ws.request.path).query, keep_blank_values=True).get("cursor")
        cursor: int | None = None
        if values is not None:
            text = values[0]
            if not (text.isascii() and text.isdigit()):
                await ws.send(
                    error_frame("InvalidRequest", f"cursor must be a non-negative integer, got {text[:40]!r}")
                )
                return
            cursor = int(text)
            if cursor > backlog.head:
                await ws.send(error_frame("FutureCursor", "Cursor in the future."))
                return
        self._started.set()
        if cursor is None:
            position = backlog.end
        elif cursor < backlog.evicted_through:
            await ws.send(info_frame("OutdatedCursor", "Requested cursor exceeded limit. Possibly missing events"))
            position = backlog.base
        else:
            position = backlog.position_after(cursor)
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            await self._stream(ws, position, closed)
        except ConnectionClosed:
            pass
        finally:
            self._positions.pop(id(ws), None)
            closed.cancel()

    async def _stream(self, ws: ServerConnection, position: int, closed: asyncio.Future[None]) -> None:
        backlog = self.backlog
        faults = self.options.faults
        delivered = 0
        malformed_at = -1
        self._positions[id(ws)] = position
        while not self._stopping:
            if position < backlog.base:
                await ws.send(error_frame("ConsumerTooSlow", "Consumer fell behind the relay's backlog."))
                return
            available = backlog.end - position
            if available == 0:
                if not await self._wait_for_events(closed):
                    return
                continue
            count = min(available, SEND_BATCH)
            if faults.enabled:
                every = faults.malformed_every
                if every and delivered % every == every - 1 and malformed_at != delivered:
                    malformed_at = delivered
                    await self._send_malformed(ws, position)
                count = min(count, self._until_next_fault(delivered))
            await self._send_batch(ws, backlog.frames(position, position + count))
            position += count
            delivered += count
            self.sent += count
            self._positions[id(ws)] = position
            if faults.enabled and not await self._after_events(ws, delivered, position, closed):
                return

    async def _wait_for_events(self, closed: asyncio.Future[None]) -> bool:
        """Waits for new events; False when the client has gone or the server stops."""
        changed = asyncio.ensure_future(self.backlog.changed.wait())
        try:
            await asyncio.wait((changed, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
        return not closed.done() and not self._stopping

    @staticmethod
    async def _send_batch(ws: ServerConnection, frames: list[bytes]) -> None:
        # One write and one drain per batch instead of per frame: ws.send() per frame costs about three
        # times the CPU, and the firehose benchmark needs this process to stay far below one core.
        async with ws.send_context():
            for frame in frames:
                ws.protocol.send_binary(frame)

    def _until_next_fault(self, delivered: int) -> int:
        """How many events can go out before the next fault point."""
        faults = self.options.faults
        limit = SEND_BATCH
        for every in (faults.drop_every, faults.rewind_every):
            if every:
                limit = min(limit, every - delivered % every)
        for after in (faults.stall_after, faults.error_after):
            if after > delivered:
                limit = min(limit, after - delivered)
        every = faults.malformed_every
        if every:
            limit = min(limit, (every - 1 - delivered) % every or every)
        return limit

    async def _send_malformed(self, ws: ServerConnection, position: int) -> None:
        kind = MALFORMED_KINDS[self._malformed_sent % len(MALFORMED_KINDS)]
        self._malformed_sent += 1
        seq = self.backlog.seq_at(position)
        real = self.backlog.frames(position, position + 1)[0]
        await ws.send(malformed_frame(kind, seq=seq, frame=real, rng=self._fault_rng))

    async def _after_events(
        self, ws: ServerConnection, delivered: int, position: int, closed: asyncio.Future[None]
    ) -> bool:
        """Applies the faults due after ``delivered`` events; False when the connection must end."""
        faults = self.options.faults
        if faults.rewind_every and delivered % faults.rewind_every == 0:
            start = max(position - min(REWIND_FRAMES, faults.rewind_every), self.backlog.base)
            await self._send_batch(ws, self.backlog.frames(start, position))
        if faults.stall_after and delivered == faults.stall_after:
            logger.info("relay-sim: stalling a client for %.1f s after %d events", faults.stall_seconds, delivered)
            await asyncio.wait((closed,), timeout=faults.stall_seconds)
        if faults.error_after and delivered == faults.error_after:
            await ws.send(error_frame("ConsumerTooSlow", "Stream consumer too slow"))
            await ws.close()
            return False
        if faults.drop_every and delivered % faults.drop_every == 0:
            # A dropped connection: the frames already sent arrive, then TCP closes without a close frame.
            while ws.transport.get_write_buffer_size() and not closed.done():
                await asyncio.sleep(0.001)
            ws.transport.abort()
            await asyncio.wait((closed,), timeout=1.0)
            return False
        return True

    async def _log_throughput(self) -> None:
        loop = asyncio.get_running_loop()
        last_time, last_emitted, last_sent = loop.time(), self.emitted, self.sent
        while True:
            await asyncio.sleep(self.options.log_interval)
            now = loop.time()
            elapsed = max(now - last_time, 1e-9)
            logger.info(
                "relay-sim: head seq %d, %d events emitted (%.0f/s), %d frames sent (%.0f/s), %d clients, "
                "backlog %d events (%.1f MB)",
                self.backlog.head,
                self.emitted,
                (self.emitted - last_emitted) / elapsed,
                self.sent,
                (self.sent - last_sent) / elapsed,
                self.clients,
                len(self.backlog),
                self.backlog.bytes / 1e6,
            )
            last_time, last_emitted, last_sent = now, self.emitted, self.sent
