"""The loop behind ``manage.py backfill`` (SPEC section 12): whole repositories loaded from their PDSes for a
chosen scope, resumably, concurrently and politely, in bounded memory, at bulk-load speed.

The queue is the ``BackfillRepo`` table. A run adds its scope to it (DIDs given, or the repositories a relay
lists: ``listRepos``, or ``listReposByCollection`` for a signal collection, with the listing's cursor saved
page by page in ``BackfillListing``), then loads every repository that is due until none is left:

- the main thread claims due repositories (``FOR UPDATE SKIP LOCKED``, state ``in_progress`` with a lease it
  renews while it runs: several runs never take the same repository, and the repositories of a run killed
  with SIGKILL are taken again once their lease has lapsed), logs progress and publishes it in Redis;
- ``concurrency`` loader threads resolve each DID to its PDS, download ``getRepo`` into a temporary file (at
  most BACKFILL_PDS_CONCURRENCY at once per PDS; 429 and 5xx answers back the PDS off, honouring
  ``Retry-After`` / ``RateLimit-Reset``), verify it while reading it (``backfill_car``: signature, every block's
  CID, the MST) and turn its records into COPY rows (``backfill_stage``, through ``record_write``: the live
  path's typed columns, checks and COLLECTION_FILTERS): in ``processes`` staging processes (BACKFILL_PROCESSES),
  as that step is CPU-bound and threads run it on one core, except for an export over 16 MB, which its loader
  thread reads in place in bounded memory;
- one writer thread stores the staged repositories in batches (``backfill_store.store_batch``): COPY, one
  merge per table, the batch's repositories marked done in the same transaction, so that a repository is
  stored once and a killed run loses only what it had not committed. Up to a batch of staged records waits
  while the previous batch is stored (``StagedQueue``): loading and storing overlap.

The queue is also what live indexing follows when ``LIVE_SCOPE`` is ``tracked`` (``live_scope``); by default it
follows the whole network. ``COLLECTION_FILTERS`` limits what is stored, in both.

A repository that fails (no PDS, a fetch error, a bad signature, a truncated CAR ...) is marked ``failed`` with
its reason, and tried again later (up to BACKFILL_MAX_TRIES times in all); nothing else is affected. Live
indexing may run meanwhile: the rev rules of ``backfill_store`` make the final state the repository at its
newest rev, whatever the order.
"""

import logging
import math
import mmap
import queue
import random
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from django.conf import settings
from django.db import connection, transaction

from appview.models import BackfillListing, BackfillRepo, BackfillState
from appview.sync.backfill_car import open_repository
from appview.sync.backfill_stage import (
    STAGING_PROCESS_MAX_BYTES,
    AbandonedError,
    StagingPool,
    StagingProcessError,
    stage_repository,
)
from appview.sync.backfill_store import StagedRepo, store_batch
from identity import services as identity
from identity.outbound import Outbound, OutboundError
from identity.services import IdentityError
from pipeline import redis_store
from protocol import syntax
from protocol.repo import SyncError

logger = logging.getLogger(__name__)

BACKFILL = BackfillRepo._meta.db_table
LISTING = BackfillListing._meta.db_table
LOG_SECONDS = 5.0
IDLE_SECONDS = 0.2
# The run waits for repositories due within this time (other runs' leases, retries); later ones are left to a
# later run.
WAIT_HORIZON = timedelta(minutes=10)
BACKOFF_FIRST_SECONDS = 60.0
BACKOFF_MAX_SECONDS = 3600.0
LIST_PAGE = 1000
LIST_MAX_BYTES = 16 * 1024 * 1024
# A batch is stored once it is full or once no staged repository came for this long.
BATCH_IDLE_SECONDS = 0.3


class BackfillError(Exception):
    """A repository that could not be loaded. ``retry_after``: seconds its PDS asked us to wait; ``requested``:
    False when the fetch was not even tried (its PDS is being backed off from), which costs the repository no
    try."""

    def __init__(self, reason: str, message: str, *, retry_after: float | None = None,
                 requested: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after
        self.requested = requested


@dataclass(frozen=True, slots=True)
class Scope:
    """What a run adds to the queue: ``dids``; and, from the relay at ``relay`` (an https URL), every repository
    (``full_network``) or every one holding ``signal_collection``."""

    dids: tuple[str, ...] = ()
    signal_collection: str | None = None
    full_network: bool = False
    relay: str = ""

    @property
    def listing(self) -> str | None:
        """The name of the relay listing this scope reads (BackfillListing.scope), None when it reads none."""
        host = urlsplit(self.relay).netloc
        if self.signal_collection is not None:
            return f"{host} listReposByCollection {self.signal_collection}"
        return f"{host} listRepos" if self.full_network else None

    def describe(self) -> str:
        parts = [f"{len(self.dids)} DIDs"] if self.dids else []
        if self.listing is not None:
            parts.append(self.listing)
        return ", ".join(parts) or "the repositories already queued"


def relay_http_url(relay_url: str) -> str:
    """The relay's https (or http) URL for XRPC queries, from a ws(s):// URL, an http(s):// one or a bare host."""
    if "://" not in relay_url:
        relay_url = f"wss://{relay_url}"
    parts = urlsplit(relay_url)
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


@dataclass(slots=True)
class Progress:
    """What a run has done; counters move from several threads under ``lock``."""

    started: float = field(default_factory=time.monotonic)
    queued: int = 0  # repositories left to load when the run started, and added since
    done_before: int = 0  # done when the run started
    done: int = 0
    failed: int = 0  # failures, retried later or not
    records: int = 0
    refused: int = 0  # records the record checks refused
    listed: int = 0
    listing_complete: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


class StagedQueue:
    """Staged repositories waiting for the writer, bounded by their records: up to a batch waits while the
    writer stores the previous one, so that loading and storing overlap."""

    def __init__(self, *, max_records: int) -> None:
        self.max_records = max_records
        self._items: deque[StagedRepo] = deque()
        self._records = 0
        self._changed = threading.Condition()

    def put(self, staged: StagedRepo, *, timeout: float) -> bool:
        """Queues it once there is room (always, when the queue is empty); False if there was none in time."""
        with self._changed:
            if not self._changed.wait_for(lambda: not self._items or self._records < self.max_records, timeout):
                return False
            self._items.append(staged)
            self._records += staged.records
            self._changed.notify_all()
            return True

    def get(self, *, timeout: float) -> StagedRepo | None:
        with self._changed:
            if not self._changed.wait_for(lambda: self._items, timeout):
                return None
            staged = self._items.popleft()
            self._records -= staged.records
            self._changed.notify_all()
            return staged


class Backfill:
    """One run of ``manage.py backfill``."""

    def __init__(self, *, concurrency: int, processes: int | None = None) -> None:
        self.concurrency = concurrency
        # A loader thread waits for the staging of one repository at a time: more processes would stay idle.
        self.processes = min(settings.BACKFILL_PROCESSES if processes is None else processes, concurrency)
        self._pool: StagingPool | None = None
        self.run_id = uuid.uuid4().hex[:12]
        self.stop = False
        self.progress = Progress()
        self._client = Outbound(timeout=settings.RESYNC_TIMEOUT, concurrency=settings.BACKFILL_PDS_CONCURRENCY,
                                host_overrides=settings.IDENTITY_HOST_OVERRIDES)
        self._relay_client = Outbound(timeout=settings.RESYNC_TIMEOUT, concurrency=1,
                                      host_overrides=settings.IDENTITY_HOST_OVERRIDES)
        self._claimed: queue.Queue[str] = queue.Queue()
        self._staged = StagedQueue(max_records=settings.BACKFILL_BATCH_RECORDS)
        # Claimed repositories being loaded, and those staged for the writer: claims follow the first only, so
        # that loaders never wait for a batch to fill (the writer's queue and batch bound the second).
        self._loading: set[str] = set()
        self._storing: set[str] = set()
        self._in_flight_lock = threading.Lock()
        # Set when a repository stops loading: the claim loop then claims the next one at once, rather than after
        # its idle pause (which capped a run at 2 x concurrency repositories per pause).
        self._loading_freed = threading.Event()
        self._host_slots: dict[str, threading.Semaphore] = {}
        self._host_lock = threading.Lock()
        self._loaders_done = threading.Event()
        self._writer_error: BaseException | None = None

    def run(self, scope: Scope) -> Progress:
        """Queues the scope, then loads every due repository until none is left or ``stop`` is set."""
        logger.info("backfill %s: %s; %d at once, %d per PDS, %s, batches of %d records", self.run_id,
                    scope.describe(), self.concurrency, settings.BACKFILL_PDS_CONCURRENCY,
                    f"{self.processes} staging process(es)" if self.processes else "staged in the loader threads",
                    settings.BACKFILL_BATCH_RECORDS)
        queue_dids(scope.dids)
        self._count_queue()
        if self.processes:
            try:
                self._pool = StagingPool(self.processes)
            except StagingProcessError as exc:
                raise BackfillError("staging-processes", str(exc)) from None
        threads = [threading.Thread(target=self._load_loop, name=f"backfill-load-{n}", daemon=True)
                   for n in range(self.concurrency)]
        writer = threading.Thread(target=self._write_loop, name="backfill-write", daemon=True)
        listing = None
        if scope.listing is not None:
            self.progress.listing_complete = False
            listing = threading.Thread(target=self._list_loop, args=(scope,), name="backfill-list", daemon=True)
            listing.start()
        for thread in (*threads, writer):
            thread.start()
        outcome = "stopped"
        try:
            self._claim_loop()
            outcome = "stopped" if self.stop else "finished"
        finally:
            self.stop_loading()
            for thread in threads:
                thread.join()
            self._loaders_done.set()
            if self._pool is not None:
                self._pool.close()
            writer.join()
            if listing is not None:
                listing.join()
            self._release_claims()
            self._publish(outcome)
            self._client.close()
            self._relay_client.close()
            connection.close()
        if self._writer_error is not None:
            raise self._writer_error
        progress = self.progress
        logger.info("backfill %s %s: %d repositories stored, %d failures, %d records in %.1f s", self.run_id,
                    outcome, progress.done, progress.failed, progress.records,
                    time.monotonic() - progress.started)
        return progress

    def stop_loading(self) -> None:
        self.stop = True

    def retry_failed(self) -> int:
        """Makes the repositories that failed all their tries due again, with their tries reset; returns how many."""
        with connection.cursor() as cur:
            cur.execute(f"UPDATE {BACKFILL} SET due_at = now(), tries = 0 WHERE state = %s AND due_at IS NULL",
                        [BackfillState.FAILED])
            return cur.rowcount

    # The main thread: claims, leases, progress.

    def _claim_loop(self) -> None:
        logged = published = renewed = time.monotonic()
        last = (0, 0)
        while not self.stop:
            if self._writer_error is not None:
                return
            now = time.monotonic()
            if now - renewed >= settings.BACKFILL_LEASE_SECONDS / 3:
                self._renew_leases()
                renewed = now
            if now - logged >= LOG_SECONDS:
                last = self._log(last, now - logged)
                logged = now
            if now - published >= 1.0:
                self._publish("running")
                published = now
            self._loading_freed.clear()
            with self._in_flight_lock:
                wanted = 2 * self.concurrency - len(self._loading)
            claimed = self._claim(wanted) if wanted > 0 else []
            if not claimed and self._finished():
                return
            if not claimed:
                self._loading_freed.wait(IDLE_SECONDS)

    def _claim(self, limit: int) -> list[str]:
        lease = timedelta(seconds=settings.BACKFILL_LEASE_SECONDS)
        with connection.cursor() as cur:
            cur.execute(
                f"WITH due AS (SELECT did FROM {BACKFILL} WHERE due_at <= now() ORDER BY due_at LIMIT %s"
                "  FOR UPDATE SKIP LOCKED)"
                f" UPDATE {BACKFILL} b SET state = %s, claimed_by = %s, due_at = now() + %s, started_at = now()"
                " FROM due WHERE b.did = due.did RETURNING b.did",
                [limit, BackfillState.IN_PROGRESS, self.run_id, lease],
            )
            dids = [did for (did,) in cur.fetchall()]
        with self._in_flight_lock:
            self._loading.update(dids)
        for did in dids:
            self._claimed.put(did)
        return dids

    def _finished(self) -> bool:
        """Nothing in flight, the listing done, and nothing due soon."""
        with self._in_flight_lock:
            if self._loading or self._storing:
                return False
        if not self.progress.listing_complete:
            return False
        with connection.cursor() as cur:
            cur.execute(f"SELECT min(due_at) <= now() + %s FROM {BACKFILL} WHERE due_at IS NOT NULL", [WAIT_HORIZON])
            soon = cur.fetchone()[0]
        return not soon

    def _claimed_dids(self) -> list[str]:
        with self._in_flight_lock:
            return sorted(self._loading | self._storing)

    def _renew_leases(self) -> None:
        with connection.cursor() as cur:
            cur.execute(f"UPDATE {BACKFILL} SET due_at = now() + %s WHERE did = ANY(%s) AND claimed_by = %s"
                        " AND state = %s", [timedelta(seconds=settings.BACKFILL_LEASE_SECONDS), self._claimed_dids(),
                                            self.run_id, BackfillState.IN_PROGRESS])

    def _release_claims(self) -> None:
        """What this run claimed and did not finish is due again at once (for the next run)."""
        with connection.cursor() as cur:
            cur.execute(f"UPDATE {BACKFILL} SET state = %s, due_at = now(), claimed_by = ''"
                        " WHERE did = ANY(%s) AND claimed_by = %s AND state = %s",
                        [BackfillState.PENDING, self._claimed_dids(), self.run_id, BackfillState.IN_PROGRESS])

    def _count_queue(self) -> None:
        """The figures the progress starts from (one scan of the queue, at the start of a run)."""
        with connection.cursor() as cur:
            cur.execute(f"SELECT count(*) FILTER (WHERE state = %s), count(*) FILTER (WHERE due_at IS NOT NULL)"
                        f" FROM {BACKFILL}", [BackfillState.DONE])
            done, due = cur.fetchone()
        self.progress.done_before, self.progress.queued = done, due

    # Loader threads.

    def _load_loop(self) -> None:
        try:
            while not self.stop:
                try:
                    did = self._claimed.get(timeout=IDLE_SECONDS)
                except queue.Empty:
                    continue
                self._load_one(did)
        finally:
            connection.close()

    def _load_one(self, did: str) -> None:
        try:
            staged = self.load(did)
        except AbandonedError:
            return  # still claimed: released when the run ends
        except BackfillError as exc:
            self._fail(did, exc)
            return
        except Exception as exc:
            logger.exception("backfill of %s failed unexpectedly", did)
            self._fail(did, BackfillError("internal", f"{type(exc).__name__}: {exc}"))
            return
        try:
            self._hand_over(staged)
        except AbandonedError:
            return
        with self._in_flight_lock:
            self._loading.discard(did)
            self._storing.add(did)
        self._loading_freed.set()

    def _hand_over(self, staged: StagedRepo) -> None:
        """Queues a staged repository (or part) for the writer, waiting while its queue is full."""
        while not self.stop:
            if self._staged.put(staged, timeout=IDLE_SECONDS):
                return
        staged.close()
        raise AbandonedError

    def load(self, did: str) -> StagedRepo:
        """Fetches, verifies and stages one repository; raises BackfillError."""
        try:
            who = identity.resolve(did)
        except IdentityError as exc:
            raise BackfillError(f"identity-{exc.reason}", exc.message) from None
        if who.pds is None:
            raise BackfillError("no-pds", "the DID document names no PDS")
        key = who.signing_key
        if settings.VERIFY_COMMITS and key is None:
            raise BackfillError("no-signing-key", "the DID document has no usable #atproto key")
        if not settings.VERIFY_COMMITS:
            key = None
        try:
            with self._download(who.pds, did) as car:
                if self._pool is not None and len(car) <= STAGING_PROCESS_MAX_BYTES:
                    *parts, staged = self._pool.stage(car[:], did, key, should_stop=lambda: self.stop)
                    for index, part in enumerate(parts):
                        try:
                            self._hand_over(part)
                        except AbandonedError:
                            for left in (*parts[index + 1:], staged):
                                left.close()
                            raise
                    return staged
                return stage_repository(open_repository(car, did, key), hand_over=self._hand_over,
                                        should_stop=lambda: self.stop, check_tree_first=True)
        except StagingProcessError as exc:
            raise BackfillError("staging-process-died", str(exc)) from None
        except OutboundError as exc:
            reason = "rate-limited" if exc.status == 429 else exc.reason
            raise BackfillError(f"fetch-{reason}", exc.message, retry_after=exc.retry_after,
                                requested=exc.status is not None or exc.reason != "backing-off") from None
        except SyncError as exc:
            raise BackfillError(exc.reason, str(exc)) from None

    @contextmanager
    def _download(self, pds: str, did: str) -> Iterator[mmap.mmap]:
        """The repository export, spooled to a temporary file (while holding one of its PDS's slots) and
        mapped: a repository of any size is read in place, never held whole in memory."""
        url = f"{pds.rstrip('/')}/xrpc/com.atproto.sync.getRepo?{urlencode({'did': did})}"
        with tempfile.TemporaryFile(prefix="backfill-", suffix=".car") as spool:
            with self._host_slot(urlsplit(pds).netloc.lower()):
                size = self._client.download(url, spool, max_bytes=settings.RESYNC_MAX_BYTES,
                                             accept="application/vnd.ipld.car")
            if size == 0:
                raise BackfillError("car-invalid", "the PDS sent an empty repository")
            spool.flush()
            with mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                yield mapped

    @contextmanager
    def _host_slot(self, host: str) -> Iterator[None]:
        with self._host_lock:
            slot = self._host_slots.get(host)
            if slot is None:
                slot = self._host_slots[host] = threading.Semaphore(settings.BACKFILL_PDS_CONCURRENCY)
        while not slot.acquire(timeout=IDLE_SECONDS):
            if self.stop:
                raise AbandonedError
        try:
            yield
        finally:
            slot.release()

    def _forget(self, did: str) -> None:
        with self._in_flight_lock:
            self._loading.discard(did)
        self._loading_freed.set()

    def _fail(self, did: str, error: BackfillError) -> None:
        """Marks the repository failed (tried again after a backoff, unless it has had all its tries); a
        fetch not tried because its PDS is being backed off from is no try: the repository is due again when
        the PDS may be asked."""
        with connection.cursor() as cur:
            if not error.requested:
                cur.execute(f"UPDATE {BACKFILL} SET state = %s, due_at = now() + %s, claimed_by = ''"
                            " WHERE did = %s AND claimed_by = %s",
                            [BackfillState.PENDING, timedelta(seconds=error.retry_after or 1.0), did, self.run_id])
            else:
                logger.warning("backfill of %s failed: %s: %s", did, error.reason, str(error)[:300])
                cur.execute(f"SELECT tries FROM {BACKFILL} WHERE did = %s", [did])
                row = cur.fetchone()
                tries = (row[0] if row else 0) + 1
                wait = error.retry_after
                if wait is None:
                    wait = min(BACKOFF_FIRST_SECONDS * 2 ** (tries - 1), BACKOFF_MAX_SECONDS)
                    wait *= random.uniform(0.8, 1.2)
                cur.execute(
                    f"UPDATE {BACKFILL} SET state = %s, error = %s, tries = %s, claimed_by = '', finished_at = now(),"
                    " due_at = CASE WHEN %s THEN NULL ELSE now() + %s END WHERE did = %s AND claimed_by = %s",
                    [BackfillState.FAILED, f"{error.reason}: {error}"[:500], tries,
                     tries >= settings.BACKFILL_MAX_TRIES, timedelta(seconds=wait), did, self.run_id],
                )
                self.progress.add(failed=1)
        self._forget(did)

    # The writer thread.

    def _write_loop(self) -> None:
        batch: list[StagedRepo] = []
        records = 0
        try:
            while True:
                staged = self._staged.get(timeout=BATCH_IDLE_SECONDS)
                if staged is None:
                    if batch:
                        self._store(batch)
                        batch, records = [], 0
                    elif self._loaders_done.is_set():
                        return
                    continue
                if any(queued.did == staged.did for queued in batch):  # two parts of a repository: one at a time
                    self._store(batch)
                    batch, records = [], 0
                batch.append(staged)
                records += staged.records
                if records >= settings.BACKFILL_BATCH_RECORDS or len(batch) >= settings.BACKFILL_BATCH_REPOS:
                    self._store(batch)
                    batch, records = [], 0
        except BaseException as exc:
            logger.exception("backfill: storing a batch failed; the run stops")
            self._writer_error = exc
            self.stop = True
            for staged in batch:
                staged.close()
        finally:
            connection.close()

    def _store(self, batch: list[StagedRepo]) -> None:
        try:
            stored = store_batch(batch, run=self.run_id)
        finally:
            for staged in batch:
                staged.close()
        self.progress.add(done=sum(repo.final for repo in stored), records=sum(repo.records for repo in stored),
                          refused=sum(staged.refused for staged in batch))
        with self._in_flight_lock:
            self._storing.difference_update(staged.did for staged in batch if staged.final)

    # The listing thread.

    def _list_loop(self, scope: Scope) -> None:
        try:
            list_scope(scope, client=self._relay_client, should_stop=lambda: self.stop,
                       on_page=lambda added: self.progress.add(listed=added, queued=added))
            self.progress.listing_complete = True
        except (OutboundError, BackfillError) as exc:
            logger.error("backfill: listing %s failed: %s; the run loads what it listed", scope.listing, exc)
            self.progress.listing_complete = True
        finally:
            connection.close()

    # Progress.

    def snapshot(self) -> dict[str, Any]:
        progress = self.progress
        with self._in_flight_lock:
            in_flight = len(self._loading) + len(self._storing)
        elapsed = max(time.monotonic() - progress.started, 1e-9)
        remaining = max(progress.queued - progress.done - progress.failed, 0)
        rate = progress.done / elapsed
        return {
            "run": self.run_id, "reposDone": progress.done_before + progress.done, "reposFailed": progress.failed,
            "reposInProgress": in_flight, "reposRemaining": remaining,
            "reposTotal": progress.done_before + progress.queued, "records": progress.records,
            "recordsPerSecond": round(progress.records / elapsed, 1), "refused": progress.refused,
            "etaSeconds": round(remaining / rate) if rate > 0 and remaining else 0,
            "listingComplete": int(progress.listing_complete),
        }

    def _log(self, last: tuple[int, int], interval: float) -> tuple[int, int]:
        numbers = self.snapshot()
        done, records = self.progress.done, self.progress.records
        logger.info(
            "backfill: %d/%d repositories done, %d failed, %d in progress, %.0f records/s (%.0f overall), ETA %s%s",
            numbers["reposDone"], numbers["reposTotal"], numbers["reposFailed"], numbers["reposInProgress"],
            (records - last[1]) / max(interval, 1e-9), numbers["recordsPerSecond"],
            eta_text(numbers["etaSeconds"]),
            "" if self.progress.listing_complete else f", listing ({self.progress.listed} listed)",
        )
        return done, records

    def _publish(self, state: str) -> None:
        """The run's figures in Redis for the dashboard; ``state``: running, finished or stopped."""
        numbers = self.snapshot()
        numbers["state"] = state
        numbers["updatedAt"] = round(time.time(), 3)
        try:
            client = redis_store.connect()
            pipe = client.pipeline(transaction=True)
            pipe.delete(redis_store.backfill_progress())
            pipe.hset(redis_store.backfill_progress(), mapping=numbers)
            pipe.execute()
        except Exception as exc:  # Redis down: the dashboard misses a figure, the backfill goes on
            logger.debug("backfill progress not published: %s", exc)


def queue_dids(dids: tuple[str, ...] | list[str]) -> int:
    """Adds these repositories to the queue (a repository queued or done already stays as it is); returns how
    many were new."""
    valid = sorted({did for did in dids if syntax.is_did(did)})
    if len(valid) != len(set(dids)):
        raise BackfillError("invalid-did", f"not DIDs: {sorted(set(dids) - set(valid))[:5]}")
    if not valid:
        return 0
    with connection.cursor() as cur:
        cur.execute(f"INSERT INTO {BACKFILL} (did) SELECT unnest(%s::text[]) ON CONFLICT (did) DO NOTHING", [valid])
        return cur.rowcount


def list_scope(scope: Scope, *, client: Outbound, should_stop: Any, on_page: Any) -> None:
    """Reads the relay's listing of the scope page by page, queueing each page's repositories and saving the
    cursor in the same transaction: a listing stopped half way continues from its last page. A listing read to
    its end is read again from the start by the next run (repositories created since join the queue)."""
    name = scope.listing
    assert name is not None
    with connection.cursor() as cur:
        cur.execute(f"INSERT INTO {LISTING} (scope) VALUES (%s) ON CONFLICT (scope) DO NOTHING", [name])
        cur.execute(f"SELECT cursor, complete FROM {LISTING} WHERE scope = %s", [name])
        cursor, complete = cur.fetchone()
    if complete:
        cursor = ""
    method, params = (("com.atproto.sync.listReposByCollection", {"collection": scope.signal_collection})
                      if scope.signal_collection is not None else ("com.atproto.sync.listRepos", {}))
    while not should_stop():
        query = {**params, "limit": LIST_PAGE, **({"cursor": cursor} if cursor else {})}
        page = _list_page(client, f"{scope.relay}/xrpc/{method}?{urlencode(query)}")
        entries = page.get("repos")
        if not isinstance(entries, list):
            raise BackfillError("listing-invalid", f"{method} answered no list of repos")
        dids = [entry["did"] for entry in entries if isinstance(entry, dict) and syntax.is_did(entry.get("did"))
                and entry.get("active", True) is not False]
        following = page.get("cursor")
        done = not entries or not isinstance(following, str) or not following or following == cursor
        with transaction.atomic(), connection.cursor() as cur:
            added = queue_dids(dids)
            cur.execute(f"UPDATE {LISTING} SET cursor = %s, complete = %s, repos = repos + %s, updated_at = now()"
                        " WHERE scope = %s", ["" if done else following, done, len(dids), name])
        on_page(added)
        if done:
            return
        cursor = following


def _list_page(client: Outbound, url: str) -> dict[str, Any]:
    """One page of a relay listing; waits out the relay's backoff (429 with Retry-After, 5xx) a few times."""
    for attempt in range(8):
        try:
            return client.get_json_object(url, max_bytes=LIST_MAX_BYTES, trusted=True)
        except OutboundError as exc:
            if exc.reason not in ("backing-off", "unavailable", "timeout") or attempt == 7:
                raise
            time.sleep(min(exc.retry_after or 2.0 ** attempt, 60.0))
    raise AssertionError("unreachable")


def eta_text(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds <= 0:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
