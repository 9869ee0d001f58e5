"""The /ws/metrics/ websocket and the broadcaster behind it, through the real ASGI app, channels-redis
layer, Redis and PostgreSQL."""

import asyncio
import json
import random
import time
from collections.abc import Coroutine
from typing import Any

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings

from config.asgi import application
from dashboard.broadcaster import GROUP, MESSAGE_TYPE, Broadcaster
from dashboard.selectors import UPDATE_MINUTES, UPDATE_SECONDS
from pipeline import redis_store

LOCAL = [(b"origin", b"http://127.0.0.1:5002"), (b"host", b"127.0.0.1:5002")]
SNAPSHOT_KEYS = {
    "eventsProcessed", "eventCounts", "errors", "errorRate", "firehoseStatus", "queue", "workers", "records",
    "databaseAvailable", "sync", "backfill", "throughput", "lastUpdate",
}
# Every message after the first: the history replaced by its newest points.
UPDATE_KEYS = SNAPSHOT_KEYS - {"throughput"} | {"throughputUpdate"}

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def short_lived_db_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """The broadcaster's thread keeps its connection between ticks; here it must not outlive the test database."""
    monkeypatch.setitem(settings.DATABASES["default"], "CONN_MAX_AGE", 0)


def run(scenario: Coroutine[Any, Any, None], timeout: float = 30) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout))


async def open_socket() -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, "/ws/metrics/", headers=LOCAL)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    return communicator


def test_it_sends_a_whole_snapshot_on_connect() -> None:
    redis_store.connect().hset(redis_store.cluster_metrics(), mapping={"totalEvents": 5, "#commit": 5})

    async def scenario() -> None:
        socket = await open_socket()
        try:
            snapshot = await socket.receive_json_from(timeout=5)
        finally:
            await socket.disconnect()
        assert set(snapshot) == SNAPSHOT_KEYS
        assert snapshot["eventsProcessed"] == 5
        assert snapshot["eventCounts"]["#commit"] == 5
        assert snapshot["firehoseStatus"]["connected"] is False
        assert len(snapshot["throughput"]["perSecond"]) == 15 * 60
        assert len(snapshot["throughput"]["perMinute"]) == 24 * 60

    run(scenario())


def test_it_pushes_a_fresh_snapshot_every_second_with_only_the_newest_throughput_points() -> None:
    client = redis_store.connect()

    async def scenario() -> None:
        socket = await open_socket()
        try:
            first_text = await socket.receive_from(timeout=5)
            client.hset(redis_store.cluster_metrics(), "totalEvents", 42)
            # Counted now: the second being counted shows in the updates once it is complete.
            counted_second = int(time.time())
            client.set(redis_store.throughput_bucket("received", "s", counted_second), 7, ex=60)
            later_texts = [await socket.receive_from(timeout=3) for _ in range(3)]
        finally:
            await socket.disconnect()
        first, later = json.loads(first_text), [json.loads(text) for text in later_texts]
        times = [first["lastUpdate"], *(snapshot["lastUpdate"] for snapshot in later)]
        assert times == sorted(times)
        assert len(set(times[1:])) == 3
        assert later[-1]["eventsProcessed"] == 42
        assert all(set(update) == UPDATE_KEYS for update in later)
        newest = [first["throughput"]["perSecond"][-1][0]]
        for update in later:
            seconds = [point[0] for point in update["throughputUpdate"]["perSecond"]]
            # Only the newest points (a few seconds, sent again while they may still grow), never the history.
            assert len(seconds) == UPDATE_SECONDS and seconds == list(range(seconds[0], seconds[0] + len(seconds)))
            assert len(update["throughputUpdate"]["perMinute"]) == UPDATE_MINUTES
            newest.append(seconds[-1])
        # Two snapshots can fall in the same second (the one sent on connect and the first broadcast).
        assert newest == sorted(newest) and newest[-1] > newest[0]
        assert [point[1] for update in later for point in update["throughputUpdate"]["perSecond"]
                if point[0] == counted_second][-1:] == [7]
        assert all(len(text) * 10 < len(first_text) for text in later_texts)

    run(scenario())


def test_it_sends_the_whole_snapshot_again_to_a_socket_that_missed_updates() -> None:
    async def scenario() -> None:
        socket = await open_socket()
        try:
            first = await socket.receive_json_from(timeout=5)
            newest = first["throughput"]["perSecond"][-1][0]
            # An update whose points start well after the newest one this socket got: some were missed.
            layer = get_channel_layer()
            assert layer is not None
            await layer.group_send(GROUP, {"type": MESSAGE_TYPE, "text": '{"forged": true}',
                                           "lastUpdate": "2999-01-01T00:00:00.000+00:00",
                                           "firstSecond": newest + 60, "lastSecond": newest + 64})
            messages = [await socket.receive_json_from(timeout=3) for _ in range(3)]
        finally:
            await socket.disconnect()
        assert {"forged": True} not in messages
        wholes = [message for message in messages if "throughput" in message]
        assert len(wholes) == 1 and set(wholes[0]) == SNAPSHOT_KEYS
        # Updates go on after it.
        assert set(messages[-1]) in (SNAPSHOT_KEYS, UPDATE_KEYS)

    run(scenario())


def test_it_shows_the_relay_url_without_credentials() -> None:
    redis_store.connect().set(redis_store.firehose_status(), json.dumps(
        {"connected": True, "url": "wss://me:hunter2@relay.example?auth=xyz", "currentCursor": "1"}), ex=10)

    async def scenario() -> None:
        socket = await open_socket()
        try:
            texts = [await socket.receive_from(timeout=5) for _ in range(2)]
        finally:
            await socket.disconnect()
        assert all("hunter2" not in text and "xyz" not in text for text in texts)
        assert json.loads(texts[0])["firehoseStatus"]["url"] == "wss://relay.example?auth=redacted"

    run(scenario())


def test_it_refuses_a_websocket_from_a_foreign_origin() -> None:
    async def scenario() -> None:
        socket = WebsocketCommunicator(
            application, "/ws/metrics/", headers=[(b"origin", b"http://evil.example"), (b"host", b"127.0.0.1")]
        )
        connected, _ = await socket.connect(timeout=5)
        await socket.disconnect()
        assert connected is False

    run(scenario())


def test_it_ignores_whatever_a_client_sends() -> None:
    redis_store.connect().hset(redis_store.cluster_metrics(), "totalEvents", 1)

    async def scenario() -> None:
        socket = await open_socket()
        try:
            await socket.receive_json_from(timeout=5)
            await socket.send_to(text_data="{not json")
            await socket.send_json_to({"type": "metrics.snapshot", "text": "forged"})
            await socket.send_to(bytes_data=b"\x00\x01")
            snapshot = await socket.receive_json_from(timeout=3)
        finally:
            await socket.disconnect()
        assert snapshot["eventsProcessed"] == 1

    run(scenario())


def test_it_builds_one_snapshot_a_second_whatever_the_number_of_websockets() -> None:
    async def scenario() -> None:
        sockets = [await open_socket() for _ in range(4)]
        try:
            for socket in sockets:
                await socket.receive_json_from(timeout=5)
            started = time.monotonic()
            await asyncio.sleep(3.0)
            seen = [await drain(socket) for socket in sockets]
            elapsed = time.monotonic() - started
        finally:
            for socket in sockets:
                await socket.disconnect()
        assert all(len(snapshots) >= 2 for snapshots in seen)
        # Built once a second for all four sockets: one loop per socket would make four times as many.
        assert len(set.union(*seen)) <= elapsed + 2
        assert len(set.intersection(*seen)) >= 2

    run(scenario())


async def drain(socket: WebsocketCommunicator) -> set[str]:
    texts = set()
    while not await socket.receive_nothing(timeout=0.2):
        texts.add(json.loads(await socket.receive_from())["lastUpdate"])
    return texts


def test_it_broadcasts_from_one_web_process_at_a_time_and_hands_over() -> None:
    async def scenario() -> None:
        first, second = Broadcaster(lease_seconds=1.5), Broadcaster(lease_seconds=1.5)
        first.subscribe()
        second.subscribe()
        try:
            await asyncio.sleep(3.2)
            assert sorted([first.broadcasts > 0, second.broadcasts > 0]) == [False, True]
            leader, follower = (first, second) if first.broadcasts else (second, first)
            leader.unsubscribe()
            await asyncio.sleep(2.2)
            assert follower.broadcasts >= 1
        finally:
            first.unsubscribe()
            second.unsubscribe()
            await asyncio.sleep(0.2)

    run(scenario())


def test_it_takes_over_once_a_dead_broadcasters_lease_expires() -> None:
    redis_store.connect().set(redis_store.dashboard_broadcaster_lease(), "a-process-that-died", px=2000)

    async def scenario() -> None:
        survivor = Broadcaster()
        survivor.subscribe()
        try:
            await asyncio.sleep(1.2)
            assert survivor.broadcasts == 0
            await asyncio.sleep(2.0)
            assert survivor.broadcasts >= 1
        finally:
            survivor.unsubscribe()
            await asyncio.sleep(0.2)

    run(scenario())



def test_it_stops_whenever_it_is_cancelled() -> None:
    # A cancellation that lands inside a Redis call of the channel layer can come back as a normal return;
    # the loop then went on broadcasting, and asyncio.run waited for it forever (a hung test run).
    rng = random.Random(7)

    async def scenario() -> None:
        for _ in range(60):
            broadcaster = Broadcaster(interval=0.01)
            broadcaster.subscribe()
            task = broadcaster._task
            assert task is not None
            await asyncio.sleep(rng.uniform(0, 0.08))
            broadcaster.unsubscribe()
            done, _ = await asyncio.wait([task], timeout=3)
            assert done, "the broadcaster went on after it was cancelled"

    run(scenario(), timeout=240)
