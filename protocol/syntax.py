"""AT Protocol string syntax checks (https://atproto.com/specs).

Every check runs for every firehose event, so each is a length guard plus one precompiled ``fullmatch``;
the few semantic checks (calendar dates, duplicate language subtags) run only after the regex matched.
All functions accept any object and return a bool without raising: the input comes from the network.
Character classes are spelled out as ASCII ranges because ``\\d`` and ``\\w`` match non-ASCII digits and
letters in Python ``str`` patterns.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

# Spec limits, in characters (all valid values are ASCII, so characters == bytes).
DID_MAX = 2048
HANDLE_MAX = 253
NSID_MAX = 317
AT_URI_MAX = 8192
URI_MAX = 8192

_DID = r"did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
# The last label (TLD) may not start with a digit, which keeps IPv4 addresses out.
_HANDLE = rf"(?:{_LABEL}\.)+[a-zA-Z](?:[a-zA-Z0-9-]{{0,61}}[a-zA-Z0-9])?"
# Reversed domain authority (first segment starts with a letter), then a name of letters and digits.
_NSID = (
    r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    rf"(?:\.{_LABEL})+"
    r"\.[a-zA-Z][a-zA-Z0-9]{0,62}"
)
_RKEY = r"[a-zA-Z0-9._:~-]{1,512}"

_DID_RE = re.compile(_DID)
_HANDLE_RE = re.compile(_HANDLE)
_NSID_RE = re.compile(_NSID)
_RKEY_RE = re.compile(_RKEY)
_TID_RE = re.compile(r"[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}")
# Restricted (Lexicon) AT-URI: authority, optional collection, optional record key; no query or fragment.
_AT_URI_RE = re.compile(rf"at://(?P<authority>{_DID}|{_HANDLE})(?:/(?P<collection>{_NSID})(?:/(?P<rkey>{_RKEY}))?)?")
# RFC 3986 scheme, then any non-blank printable ASCII; atproto only asks for a plausible URI.
_URI_RE = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:[!-~]+")
# Multibase-encoded CID; the multibase alphabets in use fit this class.
_CID_RE = re.compile(r"[a-zA-Z0-9+=]{8,256}")
_DATETIME_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:Z|([+-])([0-9]{2}):([0-9]{2}))"
)
# Primary language (2-3 lowercase letters), grandfathered "i-..." tags, or a bare private-use tag.
_LANGUAGE_RE = re.compile(r"(?:[a-z]{2,3}(?:-[a-zA-Z0-9]{1,8})*|i(?:-[a-zA-Z0-9]{1,8})+|[xX](?:-[a-zA-Z0-9]{1,8})+)")

_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def is_did(s: object) -> bool:
    return type(s) is str and len(s) <= DID_MAX and _DID_RE.fullmatch(s) is not None


def is_handle(s: object) -> bool:
    return type(s) is str and len(s) <= HANDLE_MAX and _HANDLE_RE.fullmatch(s) is not None


def is_at_identifier(s: object) -> bool:
    return is_did(s) or is_handle(s)


# Collections repeat across nearly every event, so valid NSIDs are remembered. Bounded because the names
# come from the network; once full, lookups still work and new names just take the regex path.
_KNOWN_NSIDS: set[str] = set()
_KNOWN_NSIDS_MAX = 4096


def is_nsid(s: object) -> bool:
    if type(s) is not str:
        return False
    if s in _KNOWN_NSIDS:
        return True
    if len(s) > NSID_MAX or _NSID_RE.fullmatch(s) is None:
        return False
    if len(_KNOWN_NSIDS) < _KNOWN_NSIDS_MAX:
        _KNOWN_NSIDS.add(s)
    return True


def is_record_key(s: object) -> bool:
    return type(s) is str and s != "." and s != ".." and _RKEY_RE.fullmatch(s) is not None


def is_tid(s: object) -> bool:
    return type(s) is str and _TID_RE.fullmatch(s) is not None


_BASE32_SORTABLE = "234567abcdefghijklmnopqrstuvwxyz"


def tid_of(microseconds: int, clock_id: int = 0) -> str:
    """The TID of a time (microseconds since the epoch) and a 10-bit clock id: 13 base32-sortable characters
    whose text order is their time order."""
    value = (max(microseconds, 0) << 10) | (clock_id & 1023)
    return "".join(_BASE32_SORTABLE[(value >> shift) & 31] for shift in range(60, -1, -5))


def tid_microseconds(tid: str) -> int:
    """The time a valid TID encodes, in microseconds since the epoch."""
    value = 0
    for char in tid:
        value = (value << 5) | _BASE32_SORTABLE.index(char)
    return value >> 10


def is_at_uri(s: object) -> bool:
    if type(s) is not str or len(s) > AT_URI_MAX:
        return False
    m = _AT_URI_RE.fullmatch(s)
    if m is None:
        return False
    authority, collection, rkey = m.group("authority", "collection", "rkey")
    if len(authority) > (DID_MAX if authority.startswith("did:") else HANDLE_MAX):
        return False
    if collection is not None and len(collection) > NSID_MAX:
        return False
    return rkey != "." and rkey != ".."


def is_uri(s: object) -> bool:
    return type(s) is str and len(s) <= URI_MAX and _URI_RE.fullmatch(s) is not None


def is_cid(s: object) -> bool:
    # "Qm..." is a CIDv0 (bare base58 multihash), which atproto does not accept.
    return type(s) is str and _CID_RE.fullmatch(s) is not None and not s.startswith("Qm")


def _datetime_fields(s: object) -> tuple[int, int, int, int, int, int, str, int] | None:
    """Checked fields of an atproto datetime: (Y, M, D, h, m, s, fraction digits, UTC offset in minutes)."""
    if type(s) is not str:
        return None
    m = _DATETIME_RE.fullmatch(s)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if not 1 <= month <= 12 or hour > 23 or minute > 59 or second > 59 or day < 1:
        return None
    leap = month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if day > _DAYS_IN_MONTH[month] + leap:
        return None
    offset = 0
    sign = m.group(8)
    if sign is not None:
        off_h, off_m = int(m.group(9)), int(m.group(10))
        if off_h > 23 or off_m > 59:
            return None
        offset = off_h * 60 + off_m
        if sign == "-":
            # RFC 3339 "unknown local offset"; atproto requires a real timezone.
            if offset == 0:
                return None
            offset = -offset
    # A positive offset early on 0000-01-01 would put the instant before year zero.
    if year == 0 and month == 1 and day == 1 and hour * 60 + minute < offset:
        return None
    return year, month, day, hour, minute, second, m.group(7) or "", offset


def is_datetime(s: object) -> bool:
    return _datetime_fields(s) is not None


def parse_datetime(s: object) -> datetime | None:
    """The instant as an aware UTC datetime, or None when invalid or not representable.

    Python's datetime covers years 1-9999, a strict subset of PostgreSQL's timestamptz range, so anything
    returned here can be stored; valid atproto datetimes in year 0 (or that leave 1-9999 once moved to
    UTC) give None. Fractions beyond microseconds are truncated.
    """
    fields = _datetime_fields(s)
    if fields is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = fields
    micro = int(fraction[:6].ljust(6, "0")) if fraction else 0
    try:
        local = datetime(year, month, day, hour, minute, second, micro, tzinfo=timezone(timedelta(minutes=offset)))
        return local.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def is_language(s: object) -> bool:
    """BCP-47 tag with atproto's naive syntax, plus RFC 5646's ban on repeated variants and singletons."""
    if type(s) is not str or _LANGUAGE_RE.fullmatch(s) is None:
        return False
    # A repetition needs at least two subtags after the primary one.
    if s.count("-") < 2:
        return True
    subtags = s.lower().split("-")
    if subtags[0] in ("x", "i"):
        return True
    variants: set[str] = set()
    singletons: set[str] = set()
    in_extension = False
    for tag in subtags[1:]:
        if len(tag) == 1:
            if tag == "x":
                # Private use: anything may follow, repeats included.
                return True
            if tag in singletons:
                return False
            singletons.add(tag)
            in_extension = True
        elif not in_extension and (len(tag) >= 5 or (len(tag) == 4 and tag[0].isdigit())):
            if tag in variants:
                return False
            variants.add(tag)
    return True
