"""firehose.websocket, the firehose's receiving WebSocket client, against servers in this process: the
websockets library's (handshake, TLS, close) and a raw one that sends hand-made frames in odd pieces."""

import asyncio
import base64
import hashlib
import shutil
import ssl
import struct
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from firehose import websocket

pytestmark = pytest.mark.timeout(20)

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def frame(opcode: int, payload: bytes, *, final: bool = True, masked: bool = False, rsv: int = 0) -> bytes:
    first = (0x80 if final else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    if len(payload) < 126:
        head = bytes((first, mask_bit | len(payload)))
    elif len(payload) < 65536:
        head = bytes((first, mask_bit | 126)) + struct.pack("!H", len(payload))
    else:
        head = bytes((first, mask_bit | 127)) + struct.pack("!Q", len(payload))
    return head + (b"\0\0\0\0" if masked else b"") + payload


async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = await reader.readuntil(b"\r\n\r\n")
    key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1(key + websocket.ACCEPT_GUID).digest())
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")


def with_raw_server(handler: RawHandler, client: Callable[[str], Awaitable[object]]) -> object:
    async def main() -> object:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await client(f"ws://127.0.0.1:{port}/xrpc/x?cursor=1")
        finally:
            server.close()

    return asyncio.run(main())


async def receive_all(connection: websocket.Connection) -> tuple[list[websocket.Message], websocket.ConnectionClosed]:
    messages: list[websocket.Message] = []
    while True:
        try:
            messages += await connection.receive()
        except websocket.ConnectionClosed as closed:
            return messages, closed


def test_it_receives_messages_from_a_websockets_server_and_its_close() -> None:
    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None and ws.request.path == "/xrpc/x?cursor=1"
        for index in range(300):
            await ws.send(bytes([index % 256]) * (index * 50))
        await ws.send("text")
        await ws.close(4000, "done")

    async def main() -> tuple[list[websocket.Message], websocket.ConnectionClosed]:
        async with serve(handler, "127.0.0.1", 0, compression="deflate") as server:
            port = server.sockets[0].getsockname()[1]
            connection = await websocket.connect(f"ws://127.0.0.1:{port}/xrpc/x?cursor=1", max_message_bytes=2**20)
            return await receive_all(connection)

    messages, closed = asyncio.run(main())
    assert messages == [bytes([index % 256]) * (index * 50) for index in range(300)] + ["text"]
    assert (closed.code, closed.reason, closed.by_peer) == (4000, "done", True)


def test_it_reassembles_fragments_answers_pings_and_survives_any_split_of_the_bytes() -> None:
    pongs: list[bytes] = []
    big = bytes(range(256)) * 300

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handshake(reader, writer)
        data = (frame(2, b"one") + frame(2, b"tw", final=False) + frame(9, b"ping!") + frame(0, b"o", final=False)
                + frame(0, b"", final=True) + frame(2, big) + frame(1, "é".encode(), final=False)
                + frame(0, b"t") + frame(8, struct.pack("!H", 1000)))
        for start in range(0, len(data), 7):  # 7-byte pieces: headers and lengths split anywhere
            writer.write(data[start : start + 7])
            await writer.drain()
        head = await reader.readexactly(2)
        assert head[0] == 0x8A and head[1] & 0x80  # a masked pong
        key = await reader.readexactly(4)
        payload = await reader.readexactly(head[1] & 0x7F)
        pongs.append(bytes(byte ^ key[index % 4] for index, byte in enumerate(payload)))
        await reader.read()  # the client's close frame, then its end of the connection
        writer.close()

    async def client(url: str) -> tuple[list[websocket.Message], websocket.ConnectionClosed]:
        return await receive_all(await websocket.connect(url, max_message_bytes=2**20))

    messages, closed = with_raw_server(handler, client)  # type: ignore[misc]
    assert messages == [b"one", b"two", big, "ét"]
    assert pongs == [b"ping!"]
    assert closed.code == 1000


def test_it_skips_messages_over_its_limit_unread_and_goes_on() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handshake(reader, writer)
        writer.write(frame(2, b"before"))
        writer.write(frame(2, b"x" * 5000))  # one frame over the limit
        writer.write(frame(2, b"y" * 600, final=False) + frame(0, b"y" * 600))  # fragments over it together
        writer.write(frame(2, b"after"))
        await writer.drain()
        writer.close()

    async def client(url: str) -> tuple[list[websocket.Message], websocket.ConnectionClosed]:
        return await receive_all(await websocket.connect(url, max_message_bytes=1000))

    messages, _ = with_raw_server(handler, client)  # type: ignore[misc]
    assert messages == [b"before", websocket.Oversize(5000), websocket.Oversize(1200), b"after"]


@pytest.mark.parametrize(("bad", "reason"), [
    (frame(2, b"x", masked=True), "masked"),
    (frame(2, b"x", rsv=0x40), "reserved bits"),
    (frame(0, b"x"), "continuation frame without a message"),
    (frame(2, b"x", final=False) + frame(2, b"y"), "new message began"),
    (frame(9, b"p", final=False), "control frame"),
    (frame(3, b"x"), "unknown opcode"),
])
def test_it_closes_the_connection_on_a_protocol_error(bad: bytes, reason: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handshake(reader, writer)
        writer.write(frame(2, b"good") + bad + frame(2, b"never"))
        await writer.drain()
        await reader.read()

    async def client(url: str) -> tuple[list[websocket.Message], websocket.ConnectionClosed]:
        return await receive_all(await websocket.connect(url, max_message_bytes=1000))

    messages, closed = with_raw_server(handler, client)  # type: ignore[misc]
    assert messages == [b"good"]
    assert closed.code == 1002 and not closed.by_peer and reason in closed.reason


@pytest.mark.parametrize(("response", "problem"), [
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "404"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBvbmU=\r\n\r\n", "Sec-WebSocket-Accept"),
    (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n", "Upgrade: websocket"),
])
def test_it_refuses_a_handshake_that_is_not_a_websocket_upgrade(response: bytes, problem: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        await reader.read()

    async def client(url: str) -> None:
        await websocket.connect(url, max_message_bytes=1000)

    with pytest.raises(websocket.WebSocketError, match=problem):
        with_raw_server(handler, client)


def test_it_gives_up_on_a_server_that_never_answers_the_handshake() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def client(url: str) -> None:
        await websocket.connect(url, max_message_bytes=1000, open_timeout=0.3)

    with pytest.raises(TimeoutError):
        with_raw_server(handler, client)


def test_it_stops_reading_while_messages_wait_and_resumes_when_they_are_taken() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handshake(reader, writer)
        for index in range(2000):
            writer.write(frame(2, index.to_bytes(2, "big") * 500))
        await writer.drain()
        writer.close()

    async def client(url: str) -> list[int]:
        connection = await websocket.connect(url, max_message_bytes=2000, max_pending=10, max_pending_bytes=10**6)
        batches = []
        messages: list[websocket.Message] = []
        while True:
            await asyncio.sleep(0.001)
            try:
                batch = await connection.receive()
            except websocket.ConnectionClosed:
                break
            batches.append(len(batch))
            messages += batch
        assert messages == [index.to_bytes(2, "big") * 500 for index in range(2000)]
        return batches

    batches: list[int] = with_raw_server(handler, client)  # type: ignore[assignment]
    assert max(batches) < 10 + 300  # a pause holds the queue near its bound (plus one read's worth)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_it_connects_over_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))

    async def handler(ws: ServerConnection) -> None:
        await ws.send(b"over tls")
        await ws.close()

    async def main() -> tuple[list[websocket.Message], websocket.ConnectionClosed]:
        async with serve(handler, "localhost", 0, ssl=server_context) as server:
            port = server.sockets[0].getsockname()[1]
            connection = await websocket.connect(f"wss://localhost:{port}/", max_message_bytes=1000,
                                                 ssl_context=client_context)
            return await receive_all(connection)

    messages, closed = asyncio.run(main())
    assert messages == [b"over tls"]
    assert closed.code == 1000
