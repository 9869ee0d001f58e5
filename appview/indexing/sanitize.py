"""Makes values from the network safe to store: PostgreSQL text and jsonb refuse NUL characters, jsonb
refuses NaN and infinities, and nothing bounds the size of what a repo puts in a record.

Records decode from DAG-CBOR with CID links as ``protocol.dagcbor.Link`` and byte strings as ``bytes``; they are
stored in the data model's JSON form (``{"$link": cid}`` and ``{"$bytes": base64 without padding}``).
"""

import base64
import json
import math
import re
from datetime import datetime
from typing import Any

import libipld
import orjson

from protocol import syntax
from protocol.dagcbor import Link

# A valid record is far smaller (the largest lexicon string is 100 KB of alt text, and records of the
# network stay within a few KB); above this the record is stored reduced, so one repo cannot bloat a table.
RAW_MAX_BYTES = 64 * 1024
STRING_MAX_CHARS = 16 * 1024
MAX_DEPTH = 32
# The form nearly every record uses; anything else goes through the full syntax check.
_COMMON_DATETIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z")


def link_or_bytes(value: bytes) -> dict[str, str]:
    """The data model's JSON form of a CID link (``Link``) or of a byte string (base64 without padding). A
    link that is no valid CID is kept as its bytes."""
    if isinstance(value, Link):
        try:
            return {"$link": libipld.encode_cid(bytes(value))}
        except ValueError:
            pass
    return {"$bytes": base64.b64encode(value).decode("ascii").rstrip("=")}


def _default(value: Any) -> Any:
    if isinstance(value, bytes):
        return link_or_bytes(value)
    raise TypeError(f"{type(value).__name__} is not part of the data model")


def record_json(record: dict[str, Any]) -> tuple[str, bool]:
    """The record as JSON text for a jsonb column, and whether it had to be altered to fit."""
    try:
        encoded = orjson.dumps(record, default=_default)
    except (orjson.JSONEncodeError, TypeError):
        encoded = None
    # orjson writes NaN and infinities as null, which suits jsonb.
    if encoded is not None and len(encoded) <= RAW_MAX_BYTES and b"\\u0000" not in encoded:
        return encoded.decode(), False
    cleaned = _clean(record, 0)
    text = json.dumps(cleaned, separators=(",", ":"))
    if len(text) > RAW_MAX_BYTES:
        summary = {"$truncated": True, "size": len(text)}
        record_type = record.get("$type")
        if isinstance(record_type, str):
            summary["$type"] = clean_text(record_type, 256)
        text = json.dumps(summary, separators=(",", ":"))
    return text, True


def _clean(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return clean_text(value, STRING_MAX_CHARS)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes):
        return link_or_bytes(value)
    if depth >= MAX_DEPTH:
        return None
    if isinstance(value, dict):
        return {clean_text(str(key), 256): _clean(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item, depth + 1) for item in value]
    return None


def clean_text(value: str, max_chars: int) -> str:
    if "\x00" in value:
        value = value.replace("\x00", "")
    return value[:max_chars]


class Fields:
    """Reads typed fields out of one record, noting whether anything was missing, invalid or altered.

    ``bad`` ends up True for a record that was stored sanitised; ``RecordError`` is raised for one that
    cannot be stored at all (a relation without a valid subject, a post without a valid createdAt).
    """

    __slots__ = ("bad", "record")

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.bad = False

    def text(self, name: str, max_chars: int, *, required: bool = False) -> str | None:
        value = self.record.get(name)
        if value is None:
            self.bad |= required
            return None
        if not isinstance(value, str):
            self.bad = True
            return None
        cleaned = clean_text(value, max_chars)
        if len(cleaned) != len(value):
            self.bad = True
        return cleaned

    def at_uri(self, value: Any) -> str | None:
        if value is None:
            return None
        if syntax.is_at_uri(value):
            return value
        self.bad = True
        return None

    def did(self, value: Any) -> str | None:
        if value is None:
            return None
        if syntax.is_did(value):
            return value
        self.bad = True
        return None

    def strong_ref(self, value: Any) -> tuple[str | None, str]:
        """The (uri, cid) of a com.atproto.repo.strongRef; uri None when unusable."""
        if value is None:
            return None, ""
        if not isinstance(value, dict):
            self.bad = True
            return None, ""
        uri = self.at_uri(value.get("uri"))
        cid = value.get("cid")
        if not syntax.is_cid(cid):
            self.bad = True
            cid = ""
        return uri, cid

    def timestamp(self, name: str, *, required: bool = True) -> str | None:
        """A valid atproto datetime as ISO 8601 text for a timestamptz column."""
        value = self.record.get(name)
        if value is None:
            self.bad |= required
            return None
        if type(value) is str and _COMMON_DATETIME.fullmatch(value):
            try:
                datetime.fromisoformat(value)  # the calendar check (February 30 and the like)
                return value
            except ValueError:
                pass
        parsed = syntax.parse_datetime(value)
        if parsed is None:
            self.bad = True
            return None
        return parsed.isoformat()

    def created_at(self, *, required: bool) -> str | None:
        """The record's createdAt for the created_at column.

        Where the lexicon requires it, a record without one, or with one the datetime syntax refuses (no
        timezone, February 30), is invalid and refused (RecordError). An invalid optional one, and a valid
        datetime that Python cannot hold (year 0), are stored NULL: sort_at then falls back on indexed_at.
        """
        stored = self.timestamp("createdAt", required=required)
        if stored is None and required and not syntax.is_datetime(self.record.get("createdAt")):
            raise RecordError("createdAt is missing or is not a valid datetime")
        return stored

    def blob_cid(self, name: str) -> str | None:
        """The CID of a blob field, in its current form ({ref: link}) or the legacy one ({cid: str})."""
        value = self.record.get(name)
        if value is None:
            return None
        if isinstance(value, dict):
            ref = value.get("ref")
            if isinstance(ref, Link):
                link = link_or_bytes(ref).get("$link")
                if link is not None:
                    return link
            elif syntax.is_cid(value.get("cid")):
                return value["cid"]
        self.bad = True
        return None

    def integer(self, name: str, minimum: int, maximum: int) -> int | None:
        value = self.record.get(name)
        if value is None:
            return None
        if type(value) is int and minimum <= value <= maximum:
            return value
        self.bad = True
        return None


class RecordError(ValueError):
    """A record that cannot be indexed at all; the message says why."""
