"""A receiving WebSocket client (RFC 6455) for the relay's firehose.

Why not the ``websockets`` library here (the relay simulator uses it): on this hot path its
per-message machinery (a generator-based frame parser, a Frame object and an enum lookup per frame, a
future per message) cost about 40% of run_firehose's CPU, some 8 us per frame, where parsing frames
straight out of the receive buffer costs 1.5 us, and this client hands its reader every complete
message at once. It also skips a message over the size limit without reading it into memory and keeps
the connection, where ``websockets`` closes it (1009), and a relay then sends the same frame again
after every reconnect.

Only what a subscriber needs: the opening handshake (ws:// and wss://), binary and text messages,
fragmented or not, ping (answered with a pong), pong, and the closing handshake. No extension is
offered, so none (compression) can be negotiated. Frames from the server must not be masked; frames
this client sends (pong, close) are.
"""

import asyncio
import base64
import hashlib
import os
import ssl
import struct
from dataclasses import dataclass
from urllib.parse import urlsplit

ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_RESPONSE_HEAD = 16 * 1024
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_ABNORMAL = 1000, 1002, 1006

_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


class WebSocketError(Exception):
    """The connection could not be opened, or broke the protocol; the message says how."""


class ConnectionClosed(WebSocketError):  # noqa: N818 -- the usual name of this event
    def __init__(self, code: int, reason: str, *, by_peer: bool) -> None:
        self.code = code
        self.reason = reason
        self.by_peer = by_peer
        who = "the relay" if by_peer else "this client"
        super().__init__(f"{who} closed the connection (code {code}{': ' + reason if reason else ''})"
                         if code != CLOSE_ABNORMAL else f"the connection dropped ({reason})")


@dataclass(frozen=True, slots=True)
class Oversize:
    """A message over the size limit, skipped unread."""

    size: int  # bytes announced by its frame headers, up to the point it went over


Message = bytes | str | Oversize


def _mask(payload: bytes, key: bytes) -> bytes:
    return bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked, unfragmented frame of at most 125 bytes (all this client sends are control frames)."""
    key = os.urandom(4)
    return bytes((0x80 | opcode, 0x80 | len(payload))) + key + _mask(payload, key)


class _Protocol(asyncio.Protocol):
    def __init__(self, *, max_message_bytes: int, max_pending: int, max_pending_bytes: int) -> None:
        self._max_message = max_message_bytes
        self._max_pending = max_pending
        self._max_pending_bytes = max_pending_bytes
        self._pending_bytes = 0
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.head: asyncio.Future[bytes] = self._loop.create_future()  # the handshake response's head
        self._open = False
        self._buffer = bytearray()
        self._messages: list[Message] = []
        self._waiter: asyncio.Future[None] | None = None
        self.closed: ConnectionClosed | None = None
        self._close_sent = False
        self._paused = False
        self._fragments: list[bytes] | None = None  # the message being assembled
        self._fragment_text = False
        self._message_size = 0
        self._oversize = False  # the message being received went over the limit: its data is dropped
        self._skip = 0  # bytes of an oversize frame's payload still to drop as they arrive

    # -- asyncio callbacks ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.closed is not None:
            return
        self._buffer += data
        if not self._open:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_RESPONSE_HEAD:
                    self._fail(CLOSE_PROTOCOL_ERROR, "the handshake response is too long")
                return
            head = bytes(self._buffer[: end + 4])
            del self._buffer[: end + 4]
            self._open = True
            if not self.head.done():
                self.head.set_result(head)
        try:
            self._parse()
        except WebSocketError as exc:
            self._fail(CLOSE_PROTOCOL_ERROR, str(exc))
            return
        if self._messages:
            self._wake()
            full = len(self._messages) >= self._max_pending or self._pending_bytes >= self._max_pending_bytes
            if full and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed is None:
            self.closed = ConnectionClosed(CLOSE_ABNORMAL, str(exc) if exc else "no close frame", by_peer=True)
        if not self.head.done():
            self.head.set_exception(WebSocketError(f"the connection closed during the handshake ({self.closed})"))
        self._wake()

    # -- frames ---------------------------------------------------------------------------------------

    def _parse(self) -> None:
        buffer = self._buffer
        with memoryview(buffer) as view:  # payloads are copied once, out of the view
            pos = self._parse_frames(buffer, view)
        del buffer[:pos]

    def _parse_frames(self, buffer: bytearray, view: memoryview) -> int:
        """Takes every complete frame out of ``buffer``; returns how many bytes were consumed."""
        end = len(buffer)
        pos = min(self._skip, end)
        self._skip -= pos
        messages = self._messages
        while end - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            length = second & 0x7F
            header = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = _U16.unpack_from(buffer, pos + 2)[0]
                header = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = _U64.unpack_from(buffer, pos + 2)[0]
                header = 10
            if second & 0x80:
                raise WebSocketError("a frame from the server is masked")
            if first & 0x70:
                raise WebSocketError("a frame has reserved bits set, and no extension was negotiated")
            opcode = first & 0x0F
            final = first & 0x80
            if opcode >= OP_CLOSE:
                if length > 125 or not final:
                    raise WebSocketError("a control frame is fragmented or over 125 bytes")
                if end - pos < header + length:
                    break
                self._control(opcode, bytes(view[pos + header : pos + header + length]))
                pos += header + length
                if self.closed is not None:
                    break
                continue
            if opcode == OP_CONTINUATION:
                if self._fragments is None:
                    raise WebSocketError("a continuation frame without a message to continue")
                size = self._message_size + length
                oversize = self._oversize or size > self._max_message
            elif opcode in (OP_TEXT, OP_BINARY):
                if self._fragments is not None:
                    raise WebSocketError("a new message began before the previous one ended")
                size = length
                oversize = size > self._max_message
            else:
                raise WebSocketError(f"a frame has the unknown opcode {opcode}")
            if not oversize and end - pos < header + length:
                break  # the rest of the frame has not arrived: nothing is changed until it has
            if opcode != OP_CONTINUATION:
                self._fragments = []
                self._fragment_text = opcode == OP_TEXT
            self._message_size = size
            self._oversize = oversize
            if oversize:
                # Dropped as it arrives: a frame's length is known before its payload is read.
                available = end - pos - header
                if available < length:
                    self._skip = length - available
                    pos = end
                else:
                    pos += header + length
                if final:
                    messages.append(Oversize(size))
                    self._fragments = None
                else:
                    self._fragments = []  # what came before the limit was passed is dropped too
                if self._skip:
                    break
                continue
            payload = bytes(view[pos + header : pos + header + length])
            pos += header + length
            self._pending_bytes += length
            if final and not self._fragments:
                messages.append(payload.decode("utf-8", "replace") if self._fragment_text else payload)
                self._fragments = None
            else:
                self._fragments.append(payload)
                if final:
                    whole = b"".join(self._fragments)
                    messages.append(whole.decode("utf-8", "replace") if self._fragment_text else whole)
                    self._fragments = None
        return pos

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self._write(_client_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            code = _U16.unpack_from(payload)[0] if len(payload) >= 2 else 1005
            reason = payload[2:].decode("utf-8", "replace")
            self.closed = ConnectionClosed(code, reason, by_peer=True)
            if not self._close_sent:
                self._close_sent = True
                self._write(_client_frame(OP_CLOSE, payload[:2]))
            if self.transport is not None:
                self.transport.close()
            self._wake()

    # -- helpers --------------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, code: int, reason: str) -> None:
        """Ends the connection for a protocol error of the server."""
        self.close(code, reason)
        self.closed = ConnectionClosed(code, reason, by_peer=False)
        if self.transport is not None:
            self.transport.close()
        if not self.head.done():
            self.head.set_exception(WebSocketError(reason))
        self._wake()

    def close(self, code: int, reason: str = "") -> None:
        if not self._close_sent and self._open:
            self._close_sent = True
            self._write(_client_frame(OP_CLOSE, _U16.pack(code) + reason.encode()[:120]))

    async def receive(self) -> list[Message]:
        while not self._messages:
            if self.closed is not None:
                raise self.closed
            self._waiter = self._loop.create_future()
            await self._waiter
            self._waiter = None
        messages, self._messages = self._messages, []
        self._pending_bytes = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return messages


class Connection:
    """An open connection: ``receive()`` returns every complete message that arrived, at least one."""

    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol

    async def receive(self) -> list[Message]:
        """The messages received so far, in order; raises ``ConnectionClosed`` once they are all taken
        and the connection has ended."""
        return await self._protocol.receive()

    def abort(self) -> None:
        """Drops the connection at once (no closing handshake)."""
        if self._protocol.transport is not None:
            self._protocol.transport.abort()

    async def close(self, *, timeout: float = 2.0) -> None:
        """The closing handshake: sends a close frame and waits up to ``timeout`` for the relay's."""
        protocol = self._protocol
        protocol.close(CLOSE_NORMAL)
        try:
            async with asyncio.timeout(timeout):
                while protocol.closed is None:
                    await protocol.receive()
        except (TimeoutError, ConnectionClosed):
            pass
        finally:
            self.abort()


async def connect(url: str, *, max_message_bytes: int, open_timeout: float = 10.0, max_pending: int = 4096,
                  max_pending_bytes: int = 16 * 1024 * 1024, user_agent: str = "appview-firehose",
                  ssl_context: ssl.SSLContext | None = None) -> Connection:
    """Opens a WebSocket connection to ``url`` (ws:// or wss://). Messages over ``max_message_bytes`` are
    received as ``Oversize``; reading from the socket pauses while ``max_pending`` messages or
    ``max_pending_bytes`` wait to be taken by ``receive()``."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise WebSocketError(f"not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    host_header = host if port == (443 if secure else 80) else f"{host}:{port}"
    key = base64.b64encode(os.urandom(16))
    request = (
        f"GET {resource} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: {user_agent}\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    context = (ssl_context or ssl.create_default_context()) if secure else None
    protocol: _Protocol | None = None
    try:
        async with asyncio.timeout(open_timeout):
            _, protocol = await loop.create_connection(
                lambda: _Protocol(max_message_bytes=max_message_bytes, max_pending=max_pending,
                                  max_pending_bytes=max_pending_bytes),
                parts.hostname, port, ssl=context, server_hostname=parts.hostname if secure else None,
            )
            protocol._write(request)
            head = await protocol.head
        _check_response(head, key)
    except BaseException:
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()
        raise
    return Connection(protocol)


def _check_response(head: bytes, key: bytes) -> None:
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/1.") or status[1] != "101":
        raise WebSocketError(f"the relay answered {lines[0][:100]!r} instead of switching to WebSocket")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    accept = base64.b64encode(hashlib.sha1(key + ACCEPT_GUID).digest()).decode()
    if headers.get("upgrade", "").lower() != "websocket" or "upgrade" not in headers.get("connection", "").lower():
        raise WebSocketError("the relay's handshake response lacks Upgrade: websocket")
    if headers.get("sec-websocket-accept") != accept:
        raise WebSocketError("the relay's handshake response has a wrong Sec-WebSocket-Accept")
    if headers.get("sec-websocket-extensions"):
        raise WebSocketError("the relay accepted an extension this client did not offer")
