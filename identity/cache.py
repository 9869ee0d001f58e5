"""The two caches of resolutions: PostgreSQL (``DidDocument``, shared by every process and kept across
restarts) and a bounded in-process LRU in front of it. Both hold the same ``CacheEntry``."""

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from identity.models import DidDocument
from identity.resolver import DEFINITIVE_REASONS, Identity, IdentityError
from protocol.crypto import CryptoError, PublicKey, parse_multikey

TABLE = DidDocument._meta.db_table
# After transient failures of one DID (its did:web host down, timeouts): 10 s, 20 s, 40 s ... up to an hour.
DID_BACKOFF_BASE = 10.0
DID_BACKOFF_MAX = 3600.0
ERROR_DETAIL_MAX = 500


@dataclass(frozen=True, slots=True)
class CacheEntry:
    identity: Identity | None  # the last document that resolved; kept, stale, through transient failures
    error: IdentityError | None  # a definitive answer (not-found, invalid-document) while it holds
    expires_at: float  # Unix time until which the identity or the error is the answer
    retry_at: float  # Unix time before which the network is not tried again; 0 when nothing failed

    def is_fresh(self, now: float) -> bool:
        return now < self.expires_at and (self.identity is not None or self.error is not None)


class MemoryCache:
    """A thread-safe LRU of at most ``capacity`` entries."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, did: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(did)
            if entry is not None:
                self._entries.move_to_end(did)
            return entry

    def put(self, did: str, entry: CacheEntry) -> None:
        if entry.identity is not None and entry.identity.document:
            # What the indexer uses is a few hundred bytes; the whole document is in PostgreSQL.
            entry = replace(entry, identity=replace(entry.identity, document={}))
        with self._lock:
            self._entries[did] = entry
            self._entries.move_to_end(did)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def load(dids: list[str]) -> dict[str, CacheEntry]:
    """The stored entries of ``dids``, in one query."""
    return {row.did: entry_from_row(row) for row in DidDocument.objects.filter(did__in=dids)}


def store_identity(identity: Identity, *, ttl: float) -> CacheEntry:
    fetched = identity.fetched_at
    row = DidDocument(
        did=identity.did, document=identity.document, handle=identity.handle,
        signing_key=identity.signing_key.multikey() if identity.signing_key else None, pds=identity.pds,
        fetched_at=fetched, expires_at=_datetime(fetched.timestamp() + ttl), failures=0, last_error=None,
        last_error_detail=None, next_attempt_at=None,
    )
    _upsert(row)
    return CacheEntry(identity=identity, error=None, expires_at=fetched.timestamp() + ttl, retry_at=0.0)


def store_negative(did: str, error: IdentityError, *, now: float, ttl: float) -> CacheEntry:
    """A definitive failure replaces whatever was known: the DID is gone or its document unusable."""
    row = DidDocument(
        did=did, document=None, handle=None, signing_key=None, pds=None, fetched_at=_datetime(now),
        expires_at=_datetime(now + ttl), failures=0, last_error=error.reason,
        last_error_detail=error.message[:ERROR_DETAIL_MAX], next_attempt_at=None,
    )
    _upsert(row)
    return CacheEntry(identity=None, error=error, expires_at=now + ttl, retry_at=0.0)


def store_transient_failure(did: str, error: IdentityError, *, now: float) -> CacheEntry:
    """Counts a failure that may pass; what was known stays, and the DID waits before its next attempt."""
    rows = DidDocument.objects.raw(
        f"INSERT INTO {TABLE} AS t (did, expires_at, failures, last_error, last_error_detail, next_attempt_at)"
        " VALUES (%(did)s, %(now)s, 1, %(reason)s, %(detail)s, %(now)s + make_interval(secs => %(base)s))"
        " ON CONFLICT (did) DO UPDATE SET failures = t.failures + 1, last_error = excluded.last_error,"
        " last_error_detail = excluded.last_error_detail,"
        " next_attempt_at = %(now)s + make_interval(secs => least(%(base)s * power(2, t.failures), %(max)s))"
        " RETURNING *",
        {"did": did, "now": _datetime(now), "reason": error.reason, "detail": error.message[:ERROR_DETAIL_MAX],
         "base": DID_BACKOFF_BASE, "max": DID_BACKOFF_MAX},
    )
    return entry_from_row(next(iter(rows)))


def entry_from_row(row: DidDocument) -> CacheEntry:
    identity = None
    if row.document is not None and row.fetched_at is not None:
        identity = Identity(did=row.did, handle=row.handle, signing_key=_key(row.signing_key), pds=row.pds,
                            fetched_at=row.fetched_at, document=row.document)
    error = None
    if row.document is None and row.last_error in DEFINITIVE_REASONS:
        error = IdentityError(row.last_error, row.last_error_detail or row.last_error)
    retry_at = row.next_attempt_at.timestamp() if row.next_attempt_at else 0.0
    return CacheEntry(identity=identity, error=error, expires_at=row.expires_at.timestamp(), retry_at=retry_at)


def _key(multikey: str | None) -> PublicKey | None:
    if multikey is None:
        return None
    try:
        return parse_multikey(multikey)
    except CryptoError:
        return None


def _upsert(row: DidDocument) -> None:
    fields = [model_field.name for model_field in DidDocument._meta.concrete_fields if model_field.name != "did"]
    DidDocument.objects.bulk_create([row], update_conflicts=True, unique_fields=["did"], update_fields=fields)


def _datetime(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
