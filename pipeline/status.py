"""firehose:status (SPEC section 3): a JSON string with a TTL, so that it vanishes when run_firehose dies."""

import json
from datetime import UTC, datetime
from typing import Any

import redis

from pipeline import redis_store

STATUS_TTL_SECONDS = 10


def publish_status(client: redis.Redis, *, connected: bool, url: str, cursor: int | None, **extra: Any) -> None:
    """Writes the status; ``extra`` holds further camelCase fields (counters, freshness, paused)."""
    status = {
        "connected": connected,
        "url": url,
        # A string: seqs exceed what a JavaScript number holds exactly.
        "currentCursor": str(cursor) if cursor is not None else None,
        **extra,
        "updatedAt": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    client.set(redis_store.firehose_status(), json.dumps(status), ex=STATUS_TTL_SECONDS)


def read_status(client: redis.Redis) -> dict[str, Any] | None:
    raw = client.get(redis_store.firehose_status())
    return json.loads(raw) if raw is not None else None
