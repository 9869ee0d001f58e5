"""The dashboard websocket: the whole snapshot on connect, then the broadcaster's updates (each snapshot
without its throughput history, with only its newest points), forwarded as they are."""

import json
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from dashboard import selectors
from dashboard.broadcaster import GROUP, broadcaster


class MetricsConsumer(AsyncJsonWebsocketConsumer):
    groups = [GROUP]

    async def connect(self) -> None:
        await self.accept()
        broadcaster.subscribe()
        self.subscribed = True
        # The page should not wait for the next tick to show something.
        await self.send_whole_snapshot()

    async def disconnect(self, code: int) -> None:
        if getattr(self, "subscribed", False):
            broadcaster.unsubscribe()
            self.subscribed = False

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        """Read-only: whatever a client sends is ignored (and never parsed)."""

    async def metrics_snapshot(self, event: dict[str, Any]) -> None:
        # A broadcast built before the snapshot sent on connect can arrive after it: never go back in time.
        if event["lastUpdate"] <= self.last_update:
            return
        if self.last_second is None or event["firstSecond"] > self.last_second + 1:
            # Messages were missed (the broadcaster stalled, or the layer dropped some for a slow socket):
            # the update would leave a hole in the page's history.
            await self.send_whole_snapshot()
            return
        self.last_update = event["lastUpdate"]
        self.last_second = event["lastSecond"]
        await self.send(text_data=event["text"])

    async def send_whole_snapshot(self) -> None:
        text = await database_sync_to_async(selectors.latest_snapshot_json)()
        snapshot = json.loads(text)
        self.last_update: str = snapshot["lastUpdate"]
        self.last_second: int | None = selectors.newest_second(snapshot)
        await self.send(text_data=text)
