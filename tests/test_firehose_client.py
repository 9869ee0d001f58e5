"""run_firehose's relay client against a scripted relay in this process: what each kind of frame does,
where it reconnects from, the relay URL forms, and the backoff."""

import asyncio
from collections.abc import Awaitable, Callable

import libipld
import pytest
from websockets.asyncio.server import ServerConnection, serve

from firehose.client import Firehose, FirehoseConfig, RelayUrlError, backoff_delay, relay_base_url, subscribe_url
from pipeline import redis_store
from pipeline.models import IndexCursor
from protocol.testing import encode_frame
from tests.firehose_helpers import config, stream_positions, stream_seqs

pytestmark = pytest.mark.timeout(30)

DID = "did:plc:abcdefghijklmnopqrstuvwx"


def identity(seq: int) -> bytes:
    return encode_frame({"op": 1, "t": "#identity"},
                        {"seq": seq, "did": DID, "time": f"2025-01-01T00:00:{seq:02d}.000Z", "handle": "a.test"})


def error(name: str) -> bytes:
    return encode_frame({"op": -1}, {"error": name, "message": f"{name} from the test"})


def info(name: str) -> bytes:
    return encode_frame({"op": 1, "t": "#info"}, {"name": name, "message": "hello"})


Script = list[list[bytes | str]]  # the frames sent on each connection, in order; the connection then closes


def run_against(script: Script, firehose_config: Callable[[str], FirehoseConfig],
                done: Callable[[Firehose], bool]) -> tuple[Firehose, list[str]]:
    """Serves ``script`` (connection N gets script[N], later ones nothing) and runs the firehose loop
    until ``done``; returns it and the request paths the relay saw."""
    paths: list[str] = []

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        paths.append(ws.request.path)
        frames = script[len(paths) - 1] if len(paths) <= len(script) else []
        for frame in frames:
            await ws.send(frame)
        if len(paths) <= len(script):
            await ws.close()
        else:
            await ws.wait_closed()

    async def main() -> Firehose:
        async with serve(handler, "127.0.0.1", 0, compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            async_client = redis_store.connect_async()
            firehose = Firehose(firehose_config(f"ws://127.0.0.1:{port}"), redis_store.connect(), async_client)
            task = asyncio.create_task(firehose.run())
            try:
                await until(lambda: done(firehose), task)
            finally:
                firehose.stop()
                await asyncio.wait_for(task, 10)
                await async_client.aclose()
        return firehose

    return asyncio.run(main()), paths


async def until(condition: Callable[[], bool], task: Awaitable[None]) -> None:
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.025)
    raise AssertionError("timed out")


# The firehose loop claims a stream generation for the relay in PostgreSQL.
@pytest.mark.django_db(transaction=True)
def test_it_counts_and_skips_what_is_not_a_repo_event() -> None:
    script: Script = [[
        identity(1),
        "a text message",
        encode_frame({"op": 1, "t": "#labels"}, {"seq": 5}),  # a type it does not know
        encode_frame({"op": 2, "t": "#identity"}, {"seq": 6}),  # an op it does not know
        info("SomethingNew"),
        libipld.encode_dag_cbor({"op": 1, "t": "#identity"}),  # a header without a body
        identity(2),
    ]]
    firehose, _ = run_against(script, config, lambda f: f.counters.frames == 7 and f.counters.pushed == 2)
    assert stream_seqs(redis_store.connect()) == [1, 2]
    counters = firehose.counters
    assert (counters.frames, counters.events, counters.unknown, counters.infos, counters.errors) == (7, 2, 1, 1, 3)
    assert firehose.last_event_time == "2025-01-01T00:00:02.000Z"


@pytest.mark.django_db(transaction=True)  # no cursor anywhere: it looks for the durable one, finds none
def test_it_reconnects_from_the_last_event_after_error_frames() -> None:
    script: Script = [
        [identity(10), identity(11)],  # then the connection closes
        [error("InternalError")],
        [identity(11), identity(12), error("ConsumerTooSlow")],
        [info("OutdatedCursor"), identity(13)],
    ]
    firehose, paths = run_against(script, lambda url: config(url, cursor=None),
                                  lambda f: f.counters.pushed == 4)
    assert stream_positions(redis_store.connect()) == [(1, 10), (1, 11), (1, 12), (1, 13)]
    cursors = [path.partition("?")[2] for path in paths[:4]]
    assert cursors == ["", "cursor=11", "cursor=11", "cursor=12"]
    assert firehose.counters.error_frames == 2
    # 11 again first after cursor=11, as relays do (indigo #837): a duplicate, not a restarted numbering.
    assert firehose.counters.duplicates == 1
    assert firehose.counters.infos == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("restart", [
    [error("FutureCursor")],  # the relay's numbering is below our cursor
    [identity(3), identity(4)],  # the relay ignores our cursor and sends its own, lower numbering
])
def test_it_reads_a_relay_whose_numbering_restarted_live_in_a_new_generation(restart: list[bytes | str]) -> None:
    script: Script = [
        [identity(10), identity(11)],
        restart,
        [identity(3), identity(4), identity(5)],
    ]
    firehose, paths = run_against(script, lambda url: config(url, cursor=None),
                                  lambda f: f.counters.pushed == 5)
    assert [path.partition("?")[2] for path in paths[:3]] == ["", "cursor=11", ""]
    assert stream_positions(redis_store.connect()) == [(1, 10), (1, 11), (2, 3), (2, 4), (2, 5)]
    # The relay's cursor went back to zero with the new generation (no worker ran to move it since).
    row = IndexCursor.objects.get(name=firehose.relay_host)
    assert (row.generation, row.seq) == (2, 0)


@pytest.mark.parametrize(("given", "expected"), [
    ("bsky.network", "wss://bsky.network"),
    ("wss://bsky.network/", "wss://bsky.network"),
    ("https://relay.example.com:8443", "wss://relay.example.com:8443"),
    ("http://127.0.0.1:5010", "ws://127.0.0.1:5010"),
    ("127.0.0.1:5010", "ws://127.0.0.1:5010"),
    ("localhost:5010", "ws://localhost:5010"),
    ("ws://[::1]:5010", "ws://[::1]:5010"),
    ("wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos", "wss://bsky.network"),
])
def test_it_accepts_a_bare_host_or_a_url_for_the_relay(given: str, expected: str) -> None:
    assert relay_base_url(given) == expected


@pytest.mark.parametrize("given", ["", "ftp://relay.example", "ws://", "ws://host:notaport"])
def test_it_refuses_a_relay_url_it_cannot_use(given: str) -> None:
    with pytest.raises(RelayUrlError):
        relay_base_url(given)


def test_it_puts_a_64_bit_cursor_in_the_subscription_url() -> None:
    assert subscribe_url("wss://bsky.network", None) == "wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos"
    assert subscribe_url("ws://h:1", 30_000_000_123) == "ws://h:1/xrpc/com.atproto.sync.subscribeRepos?cursor=30000000123"


def test_its_backoff_grows_with_jitter_up_to_its_cap() -> None:
    delays = [[backoff_delay(attempt, base=0.5, cap=30.0) for _ in range(200)] for attempt in range(10)]
    assert all(0.25 <= d <= 0.5 for d in delays[0])
    assert all(2.0 <= d <= 4.0 for d in delays[3])
    assert all(15.0 <= d <= 30.0 for d in delays[9])
    assert len(set(delays[3])) > 100  # jitter: reconnecting consumers do not move in step
