"""The dashboard websocket: whole snapshots from the broadcaster, forwarded as they are."""

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
        text = await database_sync_to_async(selectors.latest_snapshot_json)()
        self.last_update: str = json.loads(text)["lastUpdate"]
        await self.send(text_data=text)

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
        self.last_update = event["lastUpdate"]
        await self.send(text_data=event["text"])
