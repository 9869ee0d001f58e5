"""Property-based tests of record sanitising: whatever a repo puts in a record, the worker either refuses
the record (``RecordError``) or produces values PostgreSQL stores as they are (no NUL character, bounded
size, typed columns that hold what their names promise)."""

import json
from datetime import datetime
from typing import Any

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appview.indexing import sanitize
from appview.indexing.collections import TABLE_BY_COLLECTION
from appview.indexing.sanitize import Fields, RecordError
from appview.indexing.tables import TableSpec
from protocol import syntax

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPECS = sorted(TABLE_BY_COLLECTION.values(), key=lambda spec: spec.collection)

# Strings that sanitising must handle: NUL characters, non-BMP text, oversize text, look-alike syntax.
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
tricky_text = (
    text
    | st.builds("{}\x00{}".format, text, text)
    | st.integers(3000, 70_000).map(lambda n: "é" * n)
    | st.sampled_from(["at://did:plc:abc/app.bsky.feed.post/3k2a", "did:plc:ewvi7nxzyoun6zhxrhs64oiz", "en",
                       "2024-01-01T00:00:00Z", "0000-01-01T00:00:00+01:00", "bafyreie5737gdxlw5i64vzichcalba3z2v5n6i",
                       "app.bsky.embed.record", "app.bsky.embed.recordWithMedia", "handle.example.com"])
)
cid_link = st.binary(min_size=32, max_size=32).map(lambda digest: b"\x01\x71\x12\x20" + digest)
# The field names the extractors read, so that examples reach past the first missing field.
FIELD_NAMES = ("text", "langs", "reply", "root", "parent", "embed", "record", "subject", "uri", "cid", "did",
               "displayName", "description", "post", "list", "name", "purpose", "avatar", "banner", "ref",
               "pinnedPost", "status", "durationMinutes", "allowSubscriptions", "allowIncoming", "handle",
               "createdAt", "$type")
keys = st.sampled_from(FIELD_NAMES) | tricky_text
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | tricky_text | st.binary(max_size=40) | cid_link,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=4),
    max_leaves=10,
)
records = st.dictionaries(keys, values, max_size=6)


def json_form(value: Any) -> Any:
    """The data model's JSON form of a decoded value (links and bytes as objects)."""
    if isinstance(value, bytes):
        return sanitize.link_or_bytes(value)
    if isinstance(value, dict):
        return {key: json_form(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_form(item) for item in value]
    return value


@PROPERTY_SETTINGS
@given(records)
def test_it_turns_every_record_into_storable_json(record: dict[str, Any]) -> None:
    text_json, altered = sanitize.record_json(record)
    assert len(text_json.encode()) <= sanitize.RAW_MAX_BYTES
    assert "\\u0000" not in text_json
    stored = json.loads(text_json)
    assert isinstance(stored, dict)
    if not altered:
        assert stored == json_form(record)


@PROPERTY_SETTINGS
@given(tricky_text | values, st.integers(0, 5000))
def test_it_cleans_text_of_nul_characters_and_bounds_it(value: Any, limit: int) -> None:
    if not isinstance(value, str):
        return
    cleaned = sanitize.clean_text(value, limit)
    assert "\x00" not in cleaned and len(cleaned) <= limit
    assert value.replace("\x00", "").startswith(cleaned)


def check_column(spec: TableSpec, column: str, kind: str, value: Any) -> None:
    where = f"{spec.collection} {column} = {value!r:.200}"
    if kind == "text":
        assert value is None or (isinstance(value, str) and "\x00" not in value), where
        if isinstance(value, str) and column.endswith("_uri") and value:
            assert syntax.is_at_uri(value), where
        if isinstance(value, str) and column.endswith("_did") and value:
            assert syntax.is_did(value), where
        if isinstance(value, str) and column.endswith("_cid") and value:
            assert syntax.is_cid(value), where
    elif kind == "integer":
        assert value is None or (type(value) is int and -(2**31) <= value < 2**31), where
    elif kind == "jsonb":
        assert "\\u0000" not in json.dumps(value, allow_nan=False), where
    else:
        raise AssertionError(f"no check for column type {kind}")


@PROPERTY_SETTINGS
@given(st.sampled_from(SPECS), records)
def test_it_extracts_only_valid_typed_columns_or_refuses_the_record(spec: TableSpec, record: dict[str, Any]) -> None:
    fields = Fields(record)
    try:
        row = spec.extract(fields)
    except RecordError as exc:
        assert str(exc)
        return
    assert len(row) == len(spec.columns)
    for (column, kind), value in zip(spec.columns, row, strict=True):
        check_column(spec, column, kind, value)
    created_at = fields.timestamp("createdAt", required=spec.created_at_required)
    assert created_at is None or datetime.fromisoformat(created_at).utcoffset() is not None


@pytest.mark.django_db
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records)
def test_it_produces_json_that_postgresql_stores_unchanged(record: dict[str, Any]) -> None:
    text_json, _ = sanitize.record_json(record)
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::jsonb = (%s::jsonb)::text::jsonb, (%s::jsonb)::text IS NOT NULL",
                       [text_json, text_json, text_json])
        assert cursor.fetchone() == (True, True)


datetimes = (
    st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})",
                  fullmatch=True)
    | st.datetimes(timezones=st.timezones()).map(lambda value: value.isoformat())
    | tricky_text
)


@pytest.mark.django_db
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datetimes)
def test_it_gives_timestamps_postgresql_reads_as_the_same_instant(value: str) -> None:
    stored = Fields({"createdAt": value}).timestamp("createdAt")
    if stored is None:
        assert syntax.parse_datetime(value) is None
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::timestamptz", [stored])
        assert cursor.fetchone()[0] == syntax.parse_datetime(value)
