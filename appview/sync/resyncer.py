"""The loop behind ``manage.py run_resync``: claims due repos, resyncs up to ``RESYNC_CONCURRENCY`` at once in
threads (the work is mostly waiting on PDSes), counts into cluster:metrics and logs a line every few seconds.

Resync is its own command rather than part of run_worker: its fetches take seconds to minutes and are
limited by PDSes, not by PostgreSQL, so it scales and fails separately, and a slow PDS never holds up a batch.
"""

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from django.conf import settings
from django.db import close_old_connections

from appview.sync import resync
from identity.outbound import Outbound
from pipeline import redis_store

logger = logging.getLogger(__name__)

LOG_SECONDS = 5.0
IDLE_SECONDS = 1.0


@dataclass(slots=True)
class ResyncStats:
    done: int = 0
    failed: int = 0
    records: int = 0


class Resyncer:
    def __init__(self, *, concurrency: int) -> None:
        self.concurrency = concurrency
        self.stop = False
        self.stats = ResyncStats()
        self._client = Outbound(timeout=settings.RESYNC_TIMEOUT, concurrency=concurrency,
                                host_overrides=settings.IDENTITY_HOST_OVERRIDES)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="resync")
        self._running: dict[str, Future[None]] = {}
        self._lock = threading.Lock()

    def run(self, *, until_idle: bool = False) -> None:
        """Resyncs until stopped (``until_idle``: until nothing is due and nothing runs)."""
        logger.info("resync: up to %d repositories at once", self.concurrency)
        logged = (0, 0, 0, time.monotonic())
        try:
            while not self.stop:
                started = self.step()
                if until_idle and not started and not self._running:
                    break
                if not started:
                    time.sleep(IDLE_SECONDS)
                now = time.monotonic()
                if now - logged[3] >= LOG_SECONDS:
                    self._log(logged, now)
                    logged = (self.stats.done, self.stats.failed, self.stats.records, now)
        finally:
            self._pool.shutdown(wait=True)  # a running resync finishes, or its lease lets another take it later
            logger.info("resync stopped: %d repositories resynced, %d failed, %d records", self.stats.done,
                        self.stats.failed, self.stats.records)

    def step(self) -> int:
        """Claims as many due repos as there are free threads and starts their resyncs; returns how many."""
        with self._lock:
            self._running = {did: future for did, future in self._running.items() if not future.done()}
            free = self.concurrency - len(self._running)
        if free <= 0:
            return 0
        dids = resync.claim_due(limit=free)
        for did in dids:
            with self._lock:
                self._running[did] = self._pool.submit(self._resync, did)
        return len(dids)

    def wait(self) -> None:
        """Waits for the resyncs started so far (tests)."""
        for future in list(self._running.values()):
            future.result()

    def _resync(self, did: str) -> None:
        close_old_connections()
        try:
            result = resync.resync(did, client=self._client)
        except resync.ResyncError as exc:
            self._count(failed=1, reason=exc.reason)
        except Exception:
            logger.exception("resync of %s failed unexpectedly", did)
            self._count(failed=1, reason="internal")
        else:
            self._count(done=1, records=result.records)
        finally:
            close_old_connections()

    def _count(self, *, done: int = 0, failed: int = 0, records: int = 0, reason: str = "") -> None:
        with self._lock:
            self.stats.done += done
            self.stats.failed += failed
            self.stats.records += records
        pipe = redis_store.connect().pipeline(transaction=False)
        pipe.hincrby(redis_store.cluster_metrics(), "resyncs", done)
        pipe.hincrby(redis_store.cluster_metrics(), "resyncFailures", failed)
        if reason:
            pipe.hincrby(redis_store.cluster_metrics(), f"resyncFailures:{reason}", 1)
        try:
            pipe.execute()
        except Exception as exc:  # Redis down: the counts are lost, the resync's effects are not
            logger.warning("could not count the resync in cluster:metrics: %s", exc)

    def _log(self, logged: tuple[int, int, int, float], now: float) -> None:
        done, failed, records, since = logged
        elapsed = max(now - since, 1e-9)
        logger.info("resync: %d repositories in %.1f s (%.1f/s), %d failed, %.0f records/s, %d running",
                    self.stats.done - done, elapsed, (self.stats.done - done) / elapsed, self.stats.failed - failed,
                    (self.stats.records - records) / elapsed, len(self._running))
