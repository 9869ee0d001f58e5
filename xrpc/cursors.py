"""Opaque, stable page cursors: the sort key and the unique URI of the last item of a page. A next page
starts strictly after it (keyset paging), so concurrent inserts never make a page repeat or skip an item."""

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Any

from xrpc.errors import invalid_request

SEPARATOR = "::"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def encode(sort_at: datetime, uri: str) -> str:
    micros = (sort_at - EPOCH) // MICROSECOND
    return base64.urlsafe_b64encode(f"{micros}{SEPARATOR}{uri}".encode()).decode().rstrip("=")


def decode(cursor: str | None) -> tuple[datetime, str] | None:
    """The (sort_at, uri) a cursor stands for; None for no cursor; InvalidRequest for a malformed one."""
    if not cursor:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        micros, uri = text.split(SEPARATOR, 1)
        if not uri.startswith("at://") or "\x00" in uri:
            raise ValueError("not an AT-URI")
        return EPOCH + int(micros) * MICROSECOND, uri
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError, OSError):
        raise invalid_request("Malformed cursor") from None


def page(key: str, items: list[Any], rows: list[Any], limit: int, **extra: Any) -> dict[str, Any]:
    """A page of a list endpoint: ``extra`` fields, a cursor after the last row when the page is full (rows
    start with their sort_at and URI), and the items under ``key``."""
    result: dict[str, Any] = dict(extra)
    if rows and len(rows) >= limit:
        result["cursor"] = encode(rows[-1][0], rows[-1][1])
    result[key] = items
    return result
