"""The CPU-bound step of backfill: a verified repository export turned into COPY rows (``stage_repository``),
run either in the loader thread or in a pool of staging processes (``StagingPool``).

Verifying and staging take most of a backfill's CPU (block hashes, the MST walk, DAG-CBOR decoding, typed
columns and record checks), and the loader threads of one process run them one at a time under the interpreter
lock: however many cores the machine has, a run staged in threads is bound to one. The pool runs the step for
exports up to ``STAGING_PROCESS_MAX_BYTES`` in processes of their own and sends the staged rows back; a larger
export is read in place by its loader thread (``backfill_car``), a part at a time, so that its memory stays
bounded, and is the rare case. When a staging process dies (killed, out of memory), the repositories the pool
held fail as any failed load does (tried again after a backoff), and the pool starts afresh.
"""

import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from appview.indexing.collection_filter import is_stored
from appview.indexing.events import record_write, stored_record_op
from appview.sync.backfill_car import StreamedRepository, open_repository
from appview.sync.backfill_store import RepoStager, StagedRepo
from appview.sync.staging_process import start_staging_process
from protocol import syntax
from protocol.crypto import PublicKey, parse_multikey
from protocol.repo import LEGACY_REV, SyncError

# Exports up to this size are staged in the pool: the export and its rows cross a pipe whole, so this bounds the
# memory a staging process and the run spend on one repository (about 50,000 records).
STAGING_PROCESS_MAX_BYTES = 16 * 1024 * 1024
# Seconds the pool waits for its first process to start (Django's set-up), and between checks of a stopping run.
STARTUP_SECONDS = 120.0
WAIT_SECONDS = 0.2
# The settings staging reads, handed to the staging processes as the run has them.
STAGING_SETTINGS = ("COLLECTION_FILTERS", "BACKFILL_BATCH_RECORDS")


class AbandonedError(Exception):
    """The run is stopping: the repository is left to a later run."""


class StagingProcessError(Exception):
    """The staging processes failed: one died (killed, out of memory) while the pool held the repository, or
    none could start."""


def stage_repository(repository: StreamedRepository, *, hand_over: Callable[[StagedRepo], None],
                     should_stop: Callable[[], bool], check_tree_first: bool) -> StagedRepo:
    """The repository's records as COPY rows, through ``record_write`` (the live path's typed columns, checks and
    COLLECTION_FILTERS). One larger than a batch is handed over a part at a time; the last part is returned.
    ``check_tree_first``: parts reach the writer as they are handed over, so the whole tree is checked before the
    first one is (a fault found half way would leave the first parts stored); a caller that keeps the parts until
    staging has ended drops them at a fault, and spares that first walk. Raises SyncError (the MST, a missing
    block) or AbandonedError."""
    did = repository.did
    # An export from before revs (commit version 2) is stored at the lowest TID: every later commit is above it.
    rev = repository.rev or LEGACY_REV
    stager = RepoStager(did, rev)
    filters = settings.COLLECTION_FILTERS
    valid_collections: dict[str, bool] = {}
    block = repository.index.block
    part_records = settings.BACKFILL_BATCH_RECORDS
    refused = 0
    try:
        if check_tree_first and repository.index.count > part_records:
            for path, cid in repository.records():
                if cid not in repository.index:
                    raise SyncError("missing-block", f"the record block of {path[:200]} is missing")
        for path, cid in repository.records():
            collection, _, rkey = path.partition("/")
            if not is_stored(collection, filters):
                # Not stored, but part of the repository: one missing fails it, whatever is stored of it.
                if cid not in repository.index:
                    raise SyncError("missing-block", f"the record block of {path[:200]} is missing")
                continue
            valid = valid_collections.get(collection)
            if valid is None:
                valid = valid_collections[collection] = syntax.is_nsid(collection)
            data = block(cid)
            if data is None:
                raise SyncError("missing-block", f"the record block of {path[:200]} is missing")
            if not valid or not syntax.is_record_key(rkey):
                refused += 1
                continue
            op = stored_record_op(collection, rkey, cid, data)
            if op is None:
                refused += 1
                continue
            write, errors = record_write(did, op, rev=rev, seq=0, order=0)
            if write is None:
                refused += errors
                continue
            stager.add(write)
            if should_stop():
                raise AbandonedError
            if stager.staged.records >= part_records:
                part = stager.next_part()
                part.refused, refused = refused, 0
                hand_over(part)
    except BaseException:
        stager.finish().close()
        raise
    staged = stager.finish()
    staged.refused = refused
    return staged


@dataclass(frozen=True, slots=True)
class StagingFailure:
    """A SyncError raised in a staging process, as it crosses the pipe (a SyncError itself cannot be unpickled:
    its constructor takes two arguments, and a result that fails to unpickle breaks the whole pool)."""

    reason: str
    message: str


class StagingPool:
    """``processes`` staging processes (spawned, each with Django set up and the run's staging settings) that
    verify and stage exports for the loader threads; ``stage`` blocks the calling thread only."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._lock = threading.Lock()
        self._executor = self._start()
        # Processes that cannot start (a broken set-up) would fail every repository of the run, a try at a time:
        # the run stops at once instead.
        try:
            self._executor.submit(os.getpid).result(timeout=STARTUP_SECONDS)
        except (BrokenProcessPool, TimeoutError) as exc:
            self.close()
            raise StagingProcessError(f"the staging processes did not start: {type(exc).__name__}") from None

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=start_staging_process,
            initargs=(os.getpid(), {name: getattr(settings, name) for name in STAGING_SETTINGS}))

    def stage(self, car: bytes, did: str, key: PublicKey | None, *,
              should_stop: Callable[[], bool]) -> list[StagedRepo]:
        """Verifies the export (``key`` None: not its signature) and stages it: its parts, the last one final.
        Raises SyncError; StagingProcessError when a staging process died while the pool held it (the pool then
        starts afresh for the next repositories); AbandonedError when the run stops before a process took it."""
        executor, future = self._submit(_stage_export, car, did, key.multikey() if key is not None else None)
        try:
            while True:
                try:
                    outcome = future.result(timeout=WAIT_SECONDS)
                    break
                except TimeoutError:
                    if should_stop() and future.cancel():
                        raise AbandonedError from None
        except BrokenProcessPool:
            self._restart(executor)
            raise StagingProcessError("a staging process died while the pool held this repository") from None
        if isinstance(outcome, StagingFailure):
            raise SyncError(outcome.reason, outcome.message)
        return outcome

    def _submit(self, *job: Any) -> tuple[ProcessPoolExecutor, Future[Any]]:
        executor = self._executor
        try:
            return executor, executor.submit(*job)
        except BrokenProcessPool:  # a process died while idle: this job was never in the pool
            executor = self._restart(executor)
            return executor, executor.submit(*job)

    def _restart(self, broken: ProcessPoolExecutor) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is broken:
                self._executor = self._start()
            executor = self._executor
        broken.shutdown(wait=False, cancel_futures=True)
        return executor

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _stage_export(car: bytes, did: str, key: str | None) -> list[StagedRepo] | StagingFailure:
    parts: list[StagedRepo] = []
    try:
        repository = open_repository(car, did, parse_multikey(key) if key is not None else None)
        final = stage_repository(repository, hand_over=parts.append, should_stop=lambda: False,
                                 check_tree_first=False)
    except BaseException as exc:
        for part in parts:
            part.close()
        if isinstance(exc, SyncError):
            return StagingFailure(exc.reason, str(exc))
        raise
    return [*parts, final]
