"""Identities for the rest of the project (SPEC section 12).

``resolve`` answers from memory, else from PostgreSQL, else from the network, and caches what it learns for
``IDENTITY_CACHE_TTL`` (unknown and tombstoned DIDs and unusable documents for at most an hour). A failure that
may pass (timeout, host unavailable or rate limited) keeps the last known document usable and makes the DID
wait before its next attempt. ``signing_keys`` serves the worker's batches: it never waits longer than it is
told, and resolutions it started go on in the background and fill the caches.
"""

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from django.conf import settings
from django.db import close_old_connections

from identity import cache
from identity.cache import CacheEntry
from identity.outbound import shared_outbound
from identity.resolver import (
    DEFINITIVE_REASONS,
    INVALID_HANDLE,
    Identity,
    IdentityError,
    check_did,
    resolve_from_network,
)
from protocol.crypto import PublicKey

__all__ = ["INVALID_HANDLE", "Identity", "IdentityError", "pending_resolutions", "refresh", "refresh_in_background",
           "refreshed_signing_keys", "resolve", "signing_keys", "stats"]

logger = logging.getLogger(__name__)

MEMORY_CACHE_SIZE = 100_000
NEGATIVE_TTL_MAX = 3600
# Resolutions run by signing_keys at once (each host also has its IDENTITY_CONCURRENCY limit), and at most
# this many queued or running: past it, a DID is left for a later batch rather than queued without bound.
BACKGROUND_THREADS = 16
MAX_IN_FLIGHT = 10_000
# Fresh fetches (refreshed_signing_keys) run on threads of their own: they never queue behind a cold cache's
# thousands of resolutions, and a worker asks for at most a few per batch.
FRESH_THREADS = 4
# How long resolve waits for a background resolution of the same DID, in IDENTITY_TIMEOUTs (a resolution is a
# document fetch, a DNS query and an HTTPS request, each bounded).
JOIN_TIMEOUTS = 4


@dataclass(frozen=True)
class _Resolution:
    """A background resolution: its key is known as soon as the document is checked, its identity once the
    handle is confirmed and the caches filled."""

    key: Future[PublicKey | None] = field(default_factory=Future)
    identity: Future[Identity] = field(default_factory=Future)


_memory = cache.MemoryCache(MEMORY_CACHE_SIZE)
_counters: Counter[str] = Counter()
_counters_lock = threading.Lock()
_in_flight: dict[str, _Resolution] = {}
# Fresh fetches (``refreshed_signing_keys``): never answered by an earlier resolution or a stale document.
_refreshing: dict[str, _Resolution] = {}
_in_flight_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_fresh_pool: ThreadPoolExecutor | None = None


def resolve(did: str, *, refresh: bool = False) -> Identity:
    """The identity of ``did``. ``refresh`` skips the cached answer (not the backoff of a failing DID or host).
    Raises IdentityError; a transient failure without ``refresh`` returns the last known identity if any."""
    check_did(did)
    now = time.time()
    if not refresh:
        entry = _memory.get(did)
        if entry is not None and entry.is_fresh(now):
            _count("memory_hits")
            return _answer(entry)
    entry = cache.load([did]).get(did)
    if entry is not None:
        _memory.put(did, entry)
        if not refresh and entry.is_fresh(now):
            _count("db_hits")
            return _answer(entry)
    with _in_flight_lock:
        running = None if refresh else _in_flight.get(did)
    if running is not None:
        return _join(did, running)
    return _from_network(did, known=entry, use_stale=not refresh)


def refresh(did: str) -> Identity:
    """The identity of ``did`` fetched again now, as an ``#identity`` event asks; raises IdentityError."""
    return resolve(did, refresh=True)


def refresh_in_background(dids: Iterable[str]) -> None:
    """Starts fetching the DID documents of ``dids`` again (``#identity`` events) without waiting for them: the
    caches, and from them the actors' handles (``appview.sync.handles``), take the answers."""
    for did in dict.fromkeys(dids):
        if _is_resolvable(did):
            _resolve_in_background(did, None)


def refreshed_signing_keys(dids: Iterable[str], *, wait: float) -> dict[str, PublicKey | None]:
    """The ``#atproto`` keys of ``dids`` from their DID documents fetched again now (a key may have been rotated
    since the cached document), those known within ``wait`` seconds: a DID whose fetch fails or takes longer is
    absent from the answer. The fetches go on in the background and update the caches."""
    pending = {did: future for did in dict.fromkeys(dids)
               if _is_resolvable(did) and (future := _resolve_in_background(did, None, fresh=True)) is not None}
    futures.wait(pending.values(), timeout=wait)
    return {did: future.result() for did, future in pending.items() if future.done() and future.exception() is None}


def signing_keys(dids: Iterable[str], *, wait: float) -> dict[str, PublicKey | None]:
    """The ``#atproto`` keys of ``dids`` known within ``wait`` seconds: from memory, then from PostgreSQL in one
    query, then from the network, concurrently. None: the DID has no usable key (its document has none, or it
    is unknown, tombstoned or not resolvable). A DID not resolved in time is absent from the answer."""
    deadline = time.monotonic() + wait
    now = time.time()
    keys: dict[str, PublicKey | None] = {}
    misses: list[str] = []
    memory_hits = 0
    for did in dict.fromkeys(dids):
        entry = _memory.get(did)
        if entry is not None and entry.is_fresh(now):
            keys[did] = _key_of(entry)
            memory_hits += 1
        elif _is_resolvable(did):
            misses.append(did)
        else:
            keys[did] = None
    _count("memory_hits", memory_hits)
    if not misses:
        return keys
    stored = cache.load(misses)
    stale_keys: dict[str, PublicKey | None] = {}
    pending: dict[str, Future[PublicKey | None]] = {}
    for did in misses:
        entry = stored.get(did)
        if entry is not None:
            _memory.put(did, entry)
            if entry.is_fresh(now):
                _count("db_hits")
                keys[did] = _key_of(entry)
                continue
            if entry.identity is not None:
                stale_keys[did] = entry.identity.signing_key
        future = None if entry is not None and entry.retry_at > now else _resolve_in_background(did, entry)
        if future is not None:
            pending[did] = future
        elif did in stale_keys:
            keys[did] = stale_keys[did]
    futures.wait(pending.values(), timeout=max(deadline - time.monotonic(), 0.0))
    for did, future in pending.items():
        error = future.exception() if future.done() else None
        if future.done() and error is None:
            keys[did] = future.result()
        elif isinstance(error, IdentityError) and error.reason in DEFINITIVE_REASONS:
            keys[did] = None
        elif did in stale_keys:
            keys[did] = stale_keys[did]
    return keys


def stats() -> dict[str, int]:
    """Counts since the last call: ``memory_hits``, ``db_hits``, ``resolutions`` (network attempts) and
    ``failures:<reason>``."""
    with _counters_lock:
        counts = dict(_counters)
        _counters.clear()
    return counts


def pending_resolutions() -> int:
    """Background resolutions (``signing_keys``, ``refresh_in_background``, ``refreshed_signing_keys``) queued or
    running (a gauge, unlike ``stats``)."""
    with _in_flight_lock:
        return len(_in_flight) + len(_refreshing)


def _join(did: str, running: _Resolution) -> Identity:
    try:
        return running.identity.result(timeout=JOIN_TIMEOUTS * settings.IDENTITY_TIMEOUT)
    except futures.TimeoutError:
        raise IdentityError("timeout", f"{did}: its resolution is still running") from None


def _answer(entry: CacheEntry) -> Identity:
    if entry.identity is not None:
        return entry.identity
    assert entry.error is not None, "a fresh entry holds an identity or an error"
    raise entry.error


def _key_of(entry: CacheEntry) -> PublicKey | None:
    return entry.identity.signing_key if entry.identity is not None else None


def _is_resolvable(did: str) -> bool:
    try:
        check_did(did)
    except IdentityError:
        return False
    return True


def _from_network(did: str, *, known: CacheEntry | None, use_stale: bool,
                  on_key: Callable[[PublicKey | None], None] | None = None) -> Identity:
    stale = known.identity if use_stale and known is not None else None
    now = time.time()
    if known is not None and known.retry_at > now:
        _count("failures:backing-off")
        if stale is not None:
            return stale
        raise IdentityError("backing-off", f"{did}: failed recently; next attempt in {known.retry_at - now:.0f} s")
    _count("resolutions")
    try:
        identity = resolve_from_network(did, shared_outbound(), on_key=on_key)
    except IdentityError as exc:
        _count(f"failures:{exc.reason}")
        _remember_failure(did, exc)
        if stale is not None and exc.reason not in DEFINITIVE_REASONS:
            return stale
        raise
    _memory.put(did, cache.store_identity(identity, ttl=settings.IDENTITY_CACHE_TTL))
    return identity


def _remember_failure(did: str, error: IdentityError) -> None:
    now = time.time()
    if error.reason in DEFINITIVE_REASONS:
        ttl = min(settings.IDENTITY_CACHE_TTL, NEGATIVE_TTL_MAX)
        _memory.put(did, cache.store_negative(did, error, now=now, ttl=ttl))
    elif error.reason != "backing-off":  # a host's backoff made no attempt at this DID: nothing to count
        _memory.put(did, cache.store_transient_failure(did, error, now=now))


def _resolve_in_background(did: str, known: CacheEntry | None, *,
                           fresh: bool = False) -> Future[PublicKey | None] | None:
    """The future key of ``did`` from a resolution started now or already running; None when too many are.
    ``fresh``: from the document fetched now, never from a resolution that started earlier or a stale document
    (the stored entry's backoff still applies: a failing DID is not fetched again every batch)."""
    global _pool, _fresh_pool
    flights = _refreshing if fresh else _in_flight
    with _in_flight_lock:
        running = flights.get(did)
        if running is not None:
            return running.key
        if len(flights) >= MAX_IN_FLIGHT:
            return None
        running = flights[did] = _Resolution()
        if fresh:
            if _fresh_pool is None:
                _fresh_pool = ThreadPoolExecutor(FRESH_THREADS, thread_name_prefix="identity-fresh")
            pool = _fresh_pool
        else:
            if _pool is None:
                _pool = ThreadPoolExecutor(BACKGROUND_THREADS, thread_name_prefix="identity")
            pool = _pool
    pool.submit(_background_resolution, did, known, running, fresh)
    return running.key


def _background_resolution(did: str, known: CacheEntry | None, running: _Resolution, fresh: bool) -> None:
    def key_known(key: PublicKey | None) -> None:
        if not running.key.done():
            running.key.set_result(key)

    # Connections of pool threads live as Django's request connections do (DB_CONN_MAX_AGE).
    close_old_connections()
    try:
        if fresh:
            known = cache.load([did]).get(did)
        identity = _from_network(did, known=known, use_stale=not fresh, on_key=key_known)
        key_known(identity.signing_key)
        running.identity.set_result(identity)
    except Exception as exc:  # the callers learn of any failure through the futures, and the thread lives on
        if not isinstance(exc, IdentityError):
            logger.exception("resolving %s failed", did)
        if not running.key.done():
            running.key.set_exception(exc)
        running.identity.set_exception(exc)
    finally:
        with _in_flight_lock:
            (_refreshing if fresh else _in_flight).pop(did, None)
        close_old_connections()


def _count(name: str, amount: int = 1) -> None:
    if amount:
        with _counters_lock:
            _counters[name] += amount
