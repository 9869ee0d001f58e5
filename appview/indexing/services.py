"""Writes of the worker: a batch of events, the folding of the row-count ledger, recounts."""

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import psycopg
from django.db import connection, transaction

from appview.indexing.apply import (
    BatchResult,
    apply_folded,
    count_from_rows,
    finish_resync,
    lock_owners,
    stored_uris,
)
from appview.indexing.collections import TABLE_BY_COLLECTION
from appview.indexing.events import ParsedEvent, RecordWrite
from appview.indexing.fold import Folded
from appview.indexing.statements import ACTOR, LEDGER, POST, SHARE, SHARE_COUNTS, TOMBSTONE

KNOWN_ACTORS_MAX = 200_000
# SQLSTATE class 40, "transaction rollback": a deadlock or a serialization failure, which running the
# same transaction again resolves. psycopg 3 does not make DeadlockDetected a TransactionRollback.
TRANSACTION_ROLLBACK_CLASS = "40"


def _cursor() -> psycopg.Cursor[Any]:
    """A psycopg cursor on Django's connection (so inside its transaction) with server-side binding,
    which sends the batch's arrays in binary instead of quoting them into the SQL text."""
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


def index_events(*, events: Sequence[ParsedEvent], known_actors: set[str] | None = None) -> BatchResult:
    """Applies the events in one transaction. Raises on any database error, and then nothing of them
    is committed. ``known_actors``, a cache of DIDs that have an actor row, saves their insert attempts
    and is completed once the transaction has committed."""
    folded = Folded.of(events)
    with transaction.atomic(), _cursor() as cur:
        result = apply_folded(cur, folded, known_actors=known_actors or frozenset())
    if known_actors is not None:
        if result.stale_known_actors or len(known_actors) + len(result.actors) > KNOWN_ACTORS_MAX:
            known_actors.clear()  # bounded memory (or wrong): it fills again with the DIDs that keep coming
        known_actors |= result.actors
    return result


def index_repository_records(*, writes: list[RecordWrite], dids: set[str]) -> BatchResult:
    """Stores records of one repository read whole from its PDS (resync), each written at the repository's rev,
    in one transaction, under the same rules as a batch of events."""
    folded = Folded(dids=dids)
    for write in writes:
        folded.writes[write.uri] = write
    with transaction.atomic(), _cursor() as cur:
        return apply_folded(cur, folded)


def complete_repository(*, did: str, rev: str, uris: set[str]) -> BatchResult:
    """Ends a resync: deletes the stored records of ``did`` older than ``rev`` that its repository at ``rev``
    (``uris``) no longer holds, and sets the repo's floor to ``rev``, in one transaction."""
    with transaction.atomic(), _cursor() as cur:
        folded = Folded()
        for uri in stored_uris(cur, did, below_rev=rev) - uris:
            collection, rkey = uri.removeprefix(f"at://{did}/").split("/")
            folded.writes[uri] = folded.deletes[uri] = RecordWrite(
                uri=uri, did=did, collection=collection, rkey=rkey, seq=0, order=0,
                spec=TABLE_BY_COLLECTION.get(collection), rev=rev)
        folded.dids.add(did)
        folded.commits[did] = []  # no commit, but its actor row is locked like that of a repo with one
        result = apply_folded(cur, folded)
        finish_resync(cur, did, rev)
        return result


def queue_repos_missing_commits(*, grace: timedelta) -> int:
    """Queues for resync the repos that have waited longer than ``grace`` for a commit their later commits
    follow (no worker holds it any more: it was missed); returns how many."""
    with transaction.atomic(), _cursor() as cur:
        cur.execute(
            f"UPDATE {ACTOR} SET sync_status = 'desynchronized', sync_reason = 'commits-missed',"
            " resync_after = LEAST(COALESCE(resync_after, now()), now()), missing_revs = '{}', missing_since = NULL,"
            " updated_at = now() WHERE missing_since < now() - %s",
            [grace],
        )
        return cur.rowcount


def drop_empty_hidden_shares() -> int:
    """Deletes the hidden shares that are back to zero (an account hidden, then shown again); returns how many."""
    with transaction.atomic(), _cursor() as cur:
        cur.execute(f"DELETE FROM {SHARE} WHERE ({', '.join(SHARE_COUNTS)}) = ({', '.join(['0'] * len(SHARE_COUNTS))})")
        return cur.rowcount


def collect_tombstones(*, retention: timedelta) -> int:
    """Deletes the tombstones older than ``retention``; returns how many. Such a tombstone only refuses a create
    older than its delete, which no relay replays that long after (they keep days, not weeks), and a resync
    brings the repository's true state anyway. Tombstones at or below a repo's floor go when the floor rises
    (account deletion, resync): the floor refuses the same writes."""
    with transaction.atomic(), _cursor() as cur:
        cur.execute(f"DELETE FROM {TOMBSTONE} WHERE deleted_at < now() - %s", [retention])
        return cur.rowcount


def is_transaction_rollback(exc: BaseException) -> bool:
    """Whether the batch failed only because PostgreSQL chose to roll it back (deadlock, serialization
    failure): the same batch is to be applied again, its events are not at fault."""
    for error in (exc, exc.__cause__):
        sqlstate = getattr(error, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(TRANSACTION_ROLLBACK_CLASS):
            return True
    return False


def compact_row_counts() -> None:
    """Folds the ledger into one row per key. Concurrent folds and batches are safe: a fold deletes only
    rows committed before it started and re-inserts their sum in the same transaction."""
    with transaction.atomic(), _cursor() as cur:
        cur.execute(
            f"WITH gone AS (DELETE FROM {LEDGER} RETURNING key, delta)"
            f" INSERT INTO {LEDGER} (key, delta) SELECT key, sum(delta) FROM gone GROUP BY key"
            " HAVING sum(delta) <> 0"
        )


COUNTED_TABLES = {"posts": (POST, "uri"), "actors": (ACTOR, "did")}


def recount_chunk(*, kind: str, after: str, limit: int) -> tuple[int, int, str | None]:
    """Sets the counts of the next ``limit`` posts or actors (``kind``) whose key is above ``after`` to what
    their rows say, under the same locks as a batch (so workers may keep running). Returns how many it
    read, how many it corrected, and the last key (None when there was nothing left)."""
    table, key = COUNTED_TABLES[kind]
    with transaction.atomic(), _cursor() as cur:
        cur.execute(f"SELECT {key} FROM {table} WHERE {key} > %s ORDER BY {key} LIMIT %s", [after, limit])
        keys = [row[0] for row in cur.fetchall()]
        if not keys:
            return 0, 0, None
        lock_owners(cur, table, keys)
        corrected = count_from_rows(cur, table, keys)
    return len(keys), corrected, keys[-1]
