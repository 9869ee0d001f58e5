"""The /ws/metrics/ websocket and the broadcaster behind it, through the real ASGI app, channels-redis
layer, Redis and PostgreSQL."""

import asyncio
import json
import random
import time
from collections.abc import Coroutine
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings

from config.asgi import application
from dashboard.broadcaster import Broadcaster
from pipeline import redis_store

LOCAL = [(b"origin", b"http://127.0.0.1:5002"), (b"host", b"127.0.0.1:5002")]
SNAPSHOT_KEYS = {
    "eventsProcessed", "eventCounts", "errors", "errorRate", "firehoseStatus", "queue", "workers", "records",
    "databaseAvailable", "throughput", "lastUpdate",
}

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

    run(scenario())


def test_it_pushes_a_fresh_snapshot_every_second() -> None:
    async def scenario() -> None:
        socket = await open_socket()
        try:
            first = await socket.receive_json_from(timeout=5)
            redis_store.connect().hset(redis_store.cluster_metrics(), "totalEvents", 42)
            later = [await socket.receive_json_from(timeout=3) for _ in range(3)]
        finally:
            await socket.disconnect()
        times = [first["lastUpdate"], *(snapshot["lastUpdate"] for snapshot in later)]
        assert times == sorted(times)
        assert len(set(times[1:])) == 3
        assert later[-1]["eventsProcessed"] == 42
        assert set(later[-1]) == SNAPSHOT_KEYS

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
