"""The one loop that builds dashboard snapshots and sends them to every open websocket.

Every web process runs a ``Broadcaster`` task while it has at least one websocket open (daphne serves no
ASGI lifespan events, so the first consumer starts it and the last one stops it). Of those processes,
only the one holding a short Redis lease builds a snapshot each second, stores it whole in Redis (what a
websocket gets first, and what the page inlines) and ``group_send``s it through the channels-redis layer
without its throughput history, with only the newest points (``selectors.snapshot_update``): the cost of
the dashboard is one snapshot a second for the whole cluster, whatever the number of browsers or web
processes. When the holder stops, it gives the lease back and another process takes over within a
second; when it dies, the lease expires within ``LEASE_SECONDS``.
"""

import asyncio
import logging
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from dashboard import selectors
from pipeline import redis_store

logger = logging.getLogger(__name__)

GROUP = "metrics"
MESSAGE_TYPE = "metrics.snapshot"
INTERVAL_SECONDS = 1.0
LEASE_SECONDS = 3.0
# The latest snapshot outlives a few missed ticks, for websockets that connect meanwhile.
SNAPSHOT_TTL_SECONDS = 5

# Take the lease when free, or extend it when this instance already holds it.
_HOLD_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Broadcaster:
    def __init__(self, *, interval: float = INTERVAL_SECONDS, lease_seconds: float = LEASE_SECONDS) -> None:
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.interval = interval
        self.lease_ms = int(lease_seconds * 1000)
        self.broadcasts = 0
        self._subscribers = 0
        self._task: asyncio.Task[None] | None = None
        # One thread of its own, so that building snapshots never queues behind Django's sync views and
        # keeps a single database connection.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dashboard-broadcaster")

    def subscribe(self) -> None:
        """A websocket opened in this process: make sure the loop runs."""
        self._subscribers += 1
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self.run(), name="dashboard-broadcaster")

    def unsubscribe(self) -> None:
        """A websocket closed: the last one stops the loop, which gives the lease back."""
        self._subscribers = max(self._subscribers - 1, 0)
        if self._subscribers == 0 and self._task is not None:
            self._task.cancel()
            self._task = None

    async def run(self) -> None:
        failing_since: float | None = None
        try:
            while True:
                try:
                    await self.tick()
                    if failing_since is not None:
                        logger.info("dashboard broadcasts resumed after %.0f s", time.monotonic() - failing_since)
                        failing_since = None
                except Exception:
                    # Redis or PostgreSQL away for a moment must not end the dashboard's updates for good;
                    # one traceback per outage, not one a second.
                    if failing_since is None:
                        failing_since = time.monotonic()
                        logger.exception("dashboard broadcast failed; retrying every %.0f s", self.interval)
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    # A cancellation that a library under tick() swallowed (seen in the channel layer's
                    # group_send, a Redis call, which then returned normally): this loop would never end.
                    raise asyncio.CancelledError
                # Ticks just after each wall-clock second, when the previous per-second bucket is complete.
                await asyncio.sleep(self.interval - (time.time() % self.interval) + 0.05 * self.interval)
        finally:
            try:
                await database_sync_to_async(self._release_lease, thread_sensitive=False, executor=self._executor)()
            except Exception:
                # Unreleased, the lease still expires by itself within LEASE_SECONDS.
                logger.exception("could not release the dashboard broadcaster lease")

    async def tick(self) -> bool:
        """Builds and sends one snapshot if this instance holds the lease; says whether it did."""
        built = await database_sync_to_async(self._build, thread_sensitive=False, executor=self._executor)()
        if built is None:
            return False
        channel_layer = get_channel_layer()
        assert channel_layer is not None, "CHANNEL_LAYERS is not configured"
        await channel_layer.group_send(GROUP, built)
        self.broadcasts += 1
        return True

    def _build(self) -> dict[str, Any] | None:
        """The group message of this tick, or None when another instance holds the lease. Besides the
        update's JSON, it says which seconds of throughput the update covers, so that a consumer that
        missed messages can tell and send the whole snapshot instead."""
        client = redis_store.connect()
        held = client.eval(_HOLD_LEASE, 1, redis_store.dashboard_broadcaster_lease(), self.instance_id, self.lease_ms)
        if not held:
            return None
        snapshot = selectors.build_snapshot()
        client.set(redis_store.dashboard_snapshot(), selectors.snapshot_json(snapshot), ex=SNAPSHOT_TTL_SECONDS)
        update = selectors.snapshot_update(snapshot)
        seconds = update["throughputUpdate"]["perSecond"]
        return {"type": MESSAGE_TYPE, "text": selectors.snapshot_json(update), "lastUpdate": snapshot["lastUpdate"],
                "firstSecond": seconds[0][0], "lastSecond": seconds[-1][0]}

    def _release_lease(self) -> None:
        redis_store.connect().eval(_RELEASE_LEASE, 1, redis_store.dashboard_broadcaster_lease(), self.instance_id)


broadcaster = Broadcaster()
