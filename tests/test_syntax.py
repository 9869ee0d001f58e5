"""AT Protocol syntax checks against the official interop fixtures, plus robustness properties."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import syntax
from tests.conftest import SYNTAX, fixture_files

CHECKS: dict[str, Callable[[object], bool]] = {
    "atidentifier": syntax.is_at_identifier,
    "aturi": syntax.is_at_uri,
    "cid": syntax.is_cid,
    "datetime": syntax.is_datetime,
    "did": syntax.is_did,
    "handle": syntax.is_handle,
    "language": syntax.is_language,
    "nsid": syntax.is_nsid,
    "recordkey": syntax.is_record_key,
    "tid": syntax.is_tid,
    "uri": syntax.is_uri,
}
ALL_CHECKS = sorted(CHECKS.items())


def _fixture_cases() -> list[pytest.param]:
    cases = []
    for path in fixture_files(SYNTAX, "*.txt"):
        kind = path.name.split("_", 1)[0]
        expected = path.name.endswith("_valid.txt")
        for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
            if not line or line.startswith("#"):
                continue
            cases.append(pytest.param(kind, line, expected, id=f"{path.stem}:{lineno}"))
    return cases


FIXTURE_CASES = _fixture_cases()


def test_it_reads_a_valid_and_an_invalid_fixture_for_every_kind() -> None:
    kinds = {(p.values[0], p.values[2]) for p in FIXTURE_CASES}
    assert kinds == {(kind, expected) for kind in CHECKS for expected in (True, False)}


@pytest.mark.parametrize(("kind", "value", "expected"), FIXTURE_CASES)
def test_it_classifies_interop_fixture_values(kind: str, value: str, expected: bool) -> None:
    assert CHECKS[kind](value) is expected


@pytest.mark.parametrize(("kind", "value", "expected"), [p for p in FIXTURE_CASES if p.values[0] == "datetime"])
def test_it_parses_exactly_the_valid_datetimes_python_can_represent(kind: str, value: str, expected: bool) -> None:
    parsed = syntax.parse_datetime(value)
    if expected and not value.startswith("0000-"):
        assert parsed is not None
        assert parsed.tzinfo is UTC
    else:
        assert parsed is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1985-04-12T23:20:50.123Z", datetime(1985, 4, 12, 23, 20, 50, 123000, tzinfo=UTC)),
        ("1985-04-12T23:20:50.123-07:00", datetime(1985, 4, 13, 6, 20, 50, 123000, tzinfo=UTC)),
        ("1985-04-12T23:20:50.123+01:45", datetime(1985, 4, 12, 21, 35, 50, 123000, tzinfo=UTC)),
        ("1985-04-12T23:20:50.1234567899Z", datetime(1985, 4, 12, 23, 20, 50, 123456, tzinfo=UTC)),
        ("2024-02-29T00:00:00Z", datetime(2024, 2, 29, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
    ],
)
def test_it_parses_datetimes_to_utc(value: str, expected: datetime) -> None:
    assert syntax.parse_datetime(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "2023-02-29T00:00:00Z",  # not a leap year
        "1900-02-29T00:00:00Z",  # century, not a leap year
        "1985-04-31T00:00:00Z",
        "1985-04-12T23:20:60Z",  # leap seconds are not accepted
        "1985-04-12T23:20:50+24:00",
        "0001-01-01T00:00:00+00:01",  # valid syntax, but before year 1 in UTC
        "9999-12-31T23:59:59-00:01",  # valid syntax, but after year 9999 in UTC
        "1985-04-12T23:20:50.123\x00Z",
        "\uff11\uff19\uff18\uff15-04-12T23:20:50Z",  # full-width digits
    ],
)
def test_it_returns_none_for_datetimes_it_cannot_store(value: str) -> None:
    assert syntax.parse_datetime(value) is None


def test_it_accepts_a_leap_day_only_in_leap_years() -> None:
    assert syntax.is_datetime("2000-02-29T12:00:00Z")
    assert syntax.is_datetime("0000-02-29T12:00:00Z")
    assert not syntax.is_datetime("2100-02-29T12:00:00Z")


@pytest.mark.parametrize(
    ("check", "at_limit", "over_limit"),
    [
        (syntax.is_did, "did:plc:" + "a" * (syntax.DID_MAX - 8), "did:plc:" + "a" * (syntax.DID_MAX - 7)),
        (syntax.is_handle, ("a" * 63 + ".") * 3 + "b" * 61, ("a" * 63 + ".") * 3 + "b" * 62),
        (syntax.is_nsid, "com." + ("a" * 63 + ".") * 4 + "b" * 57, "com." + ("a" * 63 + ".") * 4 + "b" * 58),
        (syntax.is_record_key, "k" * 512, "k" * 513),
        (syntax.is_cid, "b" * 256, "b" * 257),
    ],
)
def test_it_enforces_length_limits(check: Callable[[object], bool], at_limit: str, over_limit: str) -> None:
    assert check(at_limit)
    assert not check(over_limit)


def test_it_limits_the_parts_of_an_at_uri() -> None:
    assert syntax.is_at_uri("at://" + "did:plc:" + "a" * (syntax.DID_MAX - 8) + "/app.bsky.feed.post/3jzfcijpj2z2a")
    assert not syntax.is_at_uri("at://" + "did:plc:" + "a" * (syntax.DID_MAX - 7))
    assert not syntax.is_at_uri("at://" + ("a" * 63 + ".") * 3 + "b" * 62)


@pytest.mark.parametrize(("name", "check"), ALL_CHECKS)
def test_it_rejects_non_strings(name: str, check: Callable[[object], bool]) -> None:
    for value in (None, b"did:plc:abc", 123, ["did:plc:abc"]):
        assert check(value) is False
    assert syntax.parse_datetime(b"1985-04-12T23:20:50Z") is None


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.text(), st.text(alphabet="0123456789.:-/TZ+#@%_~ abcxyzADX\x00", max_size=80)))
def test_it_never_raises_on_arbitrary_text(value: str) -> None:
    for _name, check in ALL_CHECKS:
        assert type(check(value)) is bool
    parsed = syntax.parse_datetime(value)
    assert parsed is None or parsed.tzinfo is UTC


@settings(max_examples=20, deadline=None)
@given(unit=st.text(min_size=1, max_size=4), repeat=st.integers(min_value=2_000, max_value=20_000))
def test_it_never_raises_on_very_long_text(unit: str, repeat: int) -> None:
    value = unit * repeat
    for _name, check in ALL_CHECKS:
        assert type(check(value)) is bool
        assert type(check("at://did:plc:" + value)) is bool


@settings(max_examples=200, deadline=None)
@given(
    instant=st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.just(UTC)),
    offset_minutes=st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
)
def test_it_round_trips_datetimes_in_any_offset(instant: datetime, offset_minutes: int) -> None:
    local = instant.astimezone(timezone(timedelta(minutes=offset_minutes)))
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    text = (
        f"{local.year:04d}-{local.month:02d}-{local.day:02d}T{local.hour:02d}:{local.minute:02d}:{local.second:02d}"
        f".{local.microsecond:06d}{sign}{hours:02d}:{minutes:02d}"
    )
    assert syntax.is_datetime(text)
    assert syntax.parse_datetime(text) == instant


@settings(max_examples=200, deadline=None)
@given(value=st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567", min_size=13, max_size=13))
def test_it_accepts_every_tid_as_a_record_key(value: str) -> None:
    assert syntax.is_record_key(value)
    assert syntax.is_tid(value) is (value[0] in "234567abcdefghij")


def test_it_gives_the_same_nsid_answer_on_repeated_calls() -> None:
    for value in ("app.bsky.feed.post", "com.example.fooBar", "app.bsky.feed.post.", "app.bsky", "a.b.c-d"):
        first = syntax.is_nsid(value)
        assert syntax.is_nsid(value) is first
    assert syntax.is_nsid("app.bsky.feed.post")
    assert not syntax.is_nsid("app.bsky")
