"""Applies a batch of parsed events to PostgreSQL in one transaction, with set-based SQL.

Order independence (docs/ARCHITECTURE.md): every row carries the seq that wrote it; an upsert applies
only when its seq is above the row's, the URI's tombstone and the author's ``purged_seq``; a delete
removes older rows and keeps the highest delete seq as a tombstone. Several ops on one URI in one batch
are folded in Python first: the highest seq wins.

Aggregates move by the rows each statement really inserted, changed or deleted (its RETURNING): +1 for
the keys a new row counts under, -1 for those of a removed row, both for a row whose keys changed. A
redelivered or older write changes no row, so it moves no count. A post inserted by the batch is counted
from the rows instead (likes of it may have come first).

Concurrency between workers (READ COMMITTED): every write about a repo happens while holding the lock
on that repo's actor row, and every aggregate changes while holding the lock on the actor row that owns
it (a post's counts: its author; an actor's counts: the actor), so a post and a like of it indexed by
two workers at once are serialised: the second sees the first's rows. All those actor rows are locked in
one statement, in DID order, after they have been inserted if missing. Keys only known after the writes
(the old subject of an updated like, a row that changed between the unlocked read of old values and the
lock) are locked in a second round. Deadlocks remain possible (an actor row inserted by a batch that has
not committed yet, the second round) and are rare: PostgreSQL rolls one batch back and the worker runs it
again (``services.is_transaction_rollback``).
"""

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from psycopg import Cursor

from appview.indexing.collections import TABLE_BY_COLLECTION
from appview.indexing.events import RecordWrite
from appview.indexing.fold import Folded
from appview.indexing.statements import (
    ACTOR,
    ACTOR_COUNTS,
    ACTOR_DEFAULT_COLUMNS,
    ACTOR_DEFAULT_VALUES,
    BIGINTS,
    BOOLS,
    COUNTED_COLUMNS,
    GENERIC,
    LEDGER,
    POST,
    POST_COUNTS,
    TEXTS,
    TOMBSTONE,
    counted_columns,
    upsert_sql,
)
from appview.indexing.tables import TableSpec, post_author
from appview.models import Post, Profile, RowCountDelta

ACTOR_COUNT_KEY = RowCountDelta.ACTOR_KEY
_POST_COUNT_INDEX = {name: index for index, name in enumerate(POST_COUNTS)}
_ACTOR_COUNT_INDEX = {name: index for index, name in enumerate(ACTOR_COUNTS)}


@dataclass(slots=True)
class Aggregates:
    """What a batch changes in the aggregates, and the actor rows whose locks cover those changes."""

    posts: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0] * len(POST_COUNTS)))
    actors: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0] * len(ACTOR_COUNTS)))
    new_posts: set[str] = field(default_factory=set)  # inserted by the batch: counted from the rows
    profiles: set[str] = field(default_factory=set)
    owners: set[str] = field(default_factory=set)  # the actor rows to lock

    def own(self, collection: str, values: dict[str, Any]) -> None:
        """Notes the owners of the aggregates a row of ``collection`` with these values counts under."""
        for _, _, _, owner in _counted_keys(collection, values):
            self.owners.add(owner)

    def count(self, collection: str, values: dict[str, Any], sign: int) -> None:
        """Counts a row of ``collection`` in (+1) or out (-1) of every aggregate it counts under."""
        for key, count, is_post, owner in _counted_keys(collection, values):
            if is_post:
                self.posts[key][_POST_COUNT_INDEX[count]] += sign
            else:
                self.actors[key][_ACTOR_COUNT_INDEX[count]] += sign
            self.owners.add(owner)

    def add_profile(self, did: str) -> None:
        self.profiles.add(did)
        self.owners.add(did)


def _counted_keys(collection: str, values: dict[str, Any]) -> Iterator[tuple[str, str, bool, str]]:
    """The aggregates a row counts under: (key, count column, whether the key is a post URI, the DID of
    the actor row whose lock covers it). A post URI that names a handle, not a DID, counts nowhere."""
    for column, count, is_post in COUNTED_COLUMNS.get(collection, ()):
        key = values.get(column)
        owner = post_author(key) if is_post else key
        if key and owner:
            yield key, count, is_post, owner


@dataclass(slots=True)
class BatchResult:
    written: int = 0  # rows inserted, updated or deleted
    actors: set[str] = field(default_factory=set)  # DIDs whose actor row exists once this commits
    deltas: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stale_known_actors: bool = False  # an actor row the caller knew of was missing


def apply_folded(cur: Cursor[Any], folded: Folded, *,
                 known_actors: frozenset[str] | set[str] = frozenset()) -> BatchResult:
    """Applies one folded batch; the caller holds the transaction. ``known_actors``: DIDs whose actor row
    is known to exist (actor rows are never deleted), which need no insert attempt."""
    result = BatchResult()
    aggregates = Aggregates()
    upserts: dict[TableSpec | None, list[RecordWrite]] = defaultdict(list)
    deletes: dict[TableSpec | None, list[RecordWrite]] = defaultdict(list)
    repo_dids: set[str] = set()
    for write in folded.writes.values():
        (deletes if write.is_delete else upserts)[write.spec].append(write)
        repo_dids.add(write.did)
        if write.collection == Profile.collection and write.rkey == "self":
            aggregates.add_profile(write.did)
        if not write.is_delete and write.spec is not None and write.collection in COUNTED_COLUMNS:
            aggregates.own(write.collection, {"did": write.did, **_named(write.spec, write.values)})
    # Old values, read before locking so that their owners join the one ordered lock statement; a
    # value that changes before the lock is caught after the writes (second round).
    _read_old_owners(cur, deletes, folded.purges, aggregates)
    for did in folded.purges:
        aggregates.add_profile(did)
    actor_event_dids = set(folded.handles) | set(folded.accounts) | set(folded.syncs)
    lock = repo_dids | actor_event_dids | aggregates.owners
    result.actors = folded.dids | lock
    unknown = result.actors - known_actors
    connection = cur.connection
    with connection.pipeline():  # the insert, then the lock, in one round trip
        inserter = Cursor(connection)
        if unknown:
            _send_ensure_actors(inserter, unknown)
        purged_seq, missing = _lock_actors(cur, lock)
        if unknown:
            result.deltas[ACTOR_COUNT_KEY] += inserter.fetchone()[0]  # type: ignore[index]
    if missing:
        # Rows the caller's cache said exist do not (the database was restored or emptied under a running
        # worker): without them counts would be skipped. The cache is to be dropped.
        result.stale_known_actors = True
        result.deltas[ACTOR_COUNT_KEY] += _ensure_actors(cur, result.actors)
        purged_seq.update(_lock_actors(cur, missing)[0])

    _purge_deleted_accounts(cur, folded, purged_seq, aggregates, result)

    live = {uri: w for uri, w in folded.writes.items() if w.seq > purged_seq.get(w.did, 0)}
    tombstones = _tombstones(cur, [uri for uri, w in live.items() if not w.is_delete])
    # The actor updates, deletes and upserts touch distinct rows, so they go out together in one pipeline:
    # PostgreSQL runs each statement while the next is being prepared here; results are read at the end.
    with connection.pipeline():
        _update_actors(cur, folded)
        sent: list[Callable[[Aggregates, BatchResult], None]] = []
        for spec, writes in deletes.items():
            kept = [w for w in writes if w.uri in live]
            if kept:
                sent.append(_delete(Cursor(connection), spec, "uri", [w.uri for w in kept], [w.seq for w in kept]))
        _save_tombstones(cur, [w for w in folded.deletes.values() if w.seq > purged_seq.get(w.did, 0)])
        for spec, writes in upserts.items():
            kept = [w for w in writes if w.uri in live and w.seq > tombstones.get(w.uri, 0)]
            if kept:
                sent.append(_upsert(Cursor(connection), spec, kept))
        for take_results in sent:
            take_results(aggregates, result)

    late = aggregates.owners - lock
    if late:
        result.actors |= late
        result.deltas[ACTOR_COUNT_KEY] += _ensure_actors(cur, late)
        _lock_actors(cur, late)  # just inserted if missing: all exist
    with connection.pipeline():  # nothing is read back from here on
        _save_aggregates(cur, aggregates)
        _save_deltas(cur, result.deltas)
    return result


def _run(cur: Cursor[Any], sql: str, params: Sequence[Any] = ()) -> None:
    """Executes a prepared statement (see DB_PREPARED_STATEMENTS in config/settings.py): every batch sends the
    same two dozen statement texts, which PostgreSQL then parses once per connection instead of once per
    batch."""
    cur.execute(sql, params, prepare=True)


def _named(spec: TableSpec, values: Sequence[Any] | None) -> dict[str, Any]:
    return dict(zip(spec.fields, values or (), strict=True))


def _read_old_owners(cur: Cursor[Any], deletes: dict[TableSpec | None, list[RecordWrite]],
                     purges: dict[str, int], aggregates: Aggregates) -> None:
    """The owners of the aggregates that the rows about to be deleted (or purged) count under (the reads
    go out in one pipeline)."""
    connection = cur.connection
    with connection.pipeline():
        sent: list[tuple[str, list[str], Cursor[Any]]] = []
        for spec, writes in deletes.items():
            if spec is None or spec.collection not in COUNTED_COLUMNS:
                continue
            columns = counted_columns(spec.collection)
            reader = Cursor(connection)
            _run(reader, f"SELECT {', '.join(columns)} FROM {spec.table} WHERE uri = ANY({TEXTS})",
                 [[w.uri for w in writes]])
            sent.append((spec.collection, columns, reader))
        for collection in COUNTED_COLUMNS if purges else ():
            columns = counted_columns(collection)
            reader = Cursor(connection)
            _run(reader, f"SELECT DISTINCT {', '.join(columns)} FROM {TABLE_BY_COLLECTION[collection].table}"
                 f" WHERE did = ANY({TEXTS})", [list(purges)])
            sent.append((collection, columns, reader))
        for collection, columns, reader in sent:
            for row in reader.fetchall():
                aggregates.own(collection, dict(zip(columns, row, strict=True)))


def _ensure_actors(cur: Cursor[Any], dids: set[str]) -> int:
    """Inserts the missing actor rows (in DID order, like every lock); returns how many."""
    if not dids:
        return 0
    _send_ensure_actors(cur, dids)
    return cur.fetchone()[0]  # type: ignore[index]


def _send_ensure_actors(cur: Cursor[Any], dids: set[str]) -> None:
    _run(cur,
        f"WITH ins AS (INSERT INTO {ACTOR} (did, {ACTOR_DEFAULT_COLUMNS})"
        f" SELECT d, {ACTOR_DEFAULT_VALUES} FROM unnest({TEXTS}) AS d ORDER BY d"
        " ON CONFLICT (did) DO NOTHING RETURNING 1) SELECT count(*) FROM ins",
        [sorted(dids)],
    )


def _lock_actors(cur: Cursor[Any], dids: set[str]) -> tuple[dict[str, int], set[str]]:
    """Locks the actor rows in DID order; returns the purged_seq of those that have one, and the DIDs
    that have no row."""
    if not dids:
        return {}, set()
    _run(cur,
        f"SELECT did, purged_seq FROM {ACTOR} WHERE did = ANY({TEXTS}) ORDER BY did FOR NO KEY UPDATE",
        [list(dids)],
    )
    rows = cur.fetchall()
    return {did: seq for did, seq in rows if seq}, dids - {did for did, _ in rows}


def _purge_deleted_accounts(cur: Cursor[Any], folded: Folded, purged_seq: dict[str, int], aggregates: Aggregates,
                            result: BatchResult) -> None:
    purges = {did: seq for did, seq in folded.purges.items() if seq > purged_seq.get(did, 0)}
    if purges:
        _purge(cur, purges, aggregates, result)
        purged_seq.update(purges)


def _update_actors(cur: Cursor[Any], folded: Folded) -> None:
    """Handles, account statuses and sync revs, each only over an older value."""
    if folded.handles:
        rows = _columns(folded.handles, lambda did, v: (did, v[1], v[0]))
        _run(cur,
            f"UPDATE {ACTOR} a SET handle = v.handle, handle_seq = v.seq, updated_at = now()"
            f" FROM unnest({TEXTS}, {TEXTS}, {BIGINTS}) AS v(did, handle, seq)"
            " WHERE a.did = v.did AND v.seq > a.handle_seq",
            rows,
        )
    if folded.accounts:
        rows = _columns(folded.accounts, lambda did, v: (did, v[1], v[2], v[0]))
        _run(cur,
            f"UPDATE {ACTOR} a SET active = v.active, status = v.status, status_seq = v.seq, updated_at = now()"
            f" FROM unnest({TEXTS}, {BOOLS}, {TEXTS}, {BIGINTS}) AS v(did, active, status, seq)"
            " WHERE a.did = v.did AND v.seq > a.status_seq",
            rows,
        )
    if folded.syncs:
        rows = _columns(folded.syncs, lambda did, v: (did, v[1], v[0]))
        _run(cur,
            f"UPDATE {ACTOR} a SET rev = v.rev, rev_seq = v.seq, needs_resync = true, updated_at = now()"
            f" FROM unnest({TEXTS}, {TEXTS}, {BIGINTS}) AS v(did, rev, seq)"
            " WHERE a.did = v.did AND v.seq > a.rev_seq",
            rows,
        )


def _columns(values: dict[str, Any], row: Any) -> list[list[Any]]:
    """Per-DID values as parallel arrays for unnest, in DID order."""
    rows = [row(did, values[did]) for did in sorted(values)]
    return [list(column) for column in zip(*rows, strict=True)]


def _purge(cur: Cursor[Any], purges: dict[str, int], aggregates: Aggregates, result: BatchResult) -> None:
    """Account deleted: every record of the repo written before the deletion goes, from every table."""
    dids = sorted(purges)
    seqs = [purges[did] for did in dids]
    connection = cur.connection
    # Each statement touches a table of its own: they go out in one pipeline, their results read at the end.
    with connection.pipeline():
        _run(cur,
            f"UPDATE {ACTOR} a SET purged_seq = v.seq, updated_at = now()"
            f" FROM unnest({TEXTS}, {BIGINTS}) AS v(did, seq) WHERE a.did = v.did AND v.seq > a.purged_seq",
            [dids, seqs],
        )
        sent = [_delete(Cursor(connection), spec, "did", dids, seqs)
                for spec in (*TABLE_BY_COLLECTION.values(), None)]
        # Older tombstones are redundant with purged_seq.
        _run(cur,
            f"DELETE FROM {TOMBSTONE} t USING unnest({TEXTS}, {BIGINTS}) AS v(did, seq)"
            " WHERE t.did = v.did AND t.seq < v.seq",
            [dids, seqs],
        )
        for take_results in sent:
            take_results(aggregates, result)


def _tombstones(cur: Cursor[Any], uris: list[str]) -> dict[str, int]:
    if not uris:
        return {}
    _run(cur, f"SELECT uri, seq FROM {TOMBSTONE} WHERE uri = ANY({TEXTS})", [uris])
    return dict(cur.fetchall())


def _save_tombstones(cur: Cursor[Any], writes: list[RecordWrite]) -> None:
    if not writes:
        return
    writes.sort(key=lambda w: w.uri)
    _run(cur,
        f"INSERT INTO {TOMBSTONE} AS t (uri, did, seq)"
        f" SELECT * FROM unnest({TEXTS}, {TEXTS}, {BIGINTS})"
        " ON CONFLICT (uri) DO UPDATE SET seq = excluded.seq, deleted_at = now() WHERE excluded.seq > t.seq",
        [[w.uri for w in writes], [w.did for w in writes], [w.seq for w in writes]],
    )


def _delete(cur: Cursor[Any], spec: TableSpec | None, key: str, keys: list[str],
            seqs: list[int]) -> Callable[[Aggregates, BatchResult], None]:
    """Sends the delete of the rows of ``spec``'s table (the generic one for None) whose ``key`` column
    (uri, or did for a purge) is one of ``keys`` and whose seq is below the matching one of ``seqs``;
    returns what takes its results in."""
    table = GENERIC if spec is None else spec.table
    columns = ["collection"] if spec is None else counted_columns(spec.collection)
    returned = ", ".join(f"t.{column}" for column in columns) or "1"
    _run(cur,
        f"DELETE FROM {table} t USING unnest({TEXTS}, {BIGINTS}) AS v({key}, seq)"
        f" WHERE t.{key} = v.{key} AND t.seq < v.seq RETURNING {returned}",
        [keys, seqs],
    )

    def take_results(aggregates: Aggregates, result: BatchResult) -> None:
        rows = cur.fetchall()
        result.written += len(rows)
        if spec is None:
            for (collection,) in rows:
                result.deltas[collection] -= 1
            return
        result.deltas[spec.collection] -= len(rows)
        if columns:
            for row in rows:
                aggregates.count(spec.collection, dict(zip(columns, row, strict=True)), -1)

    return take_results


def _upsert(cur: Cursor[Any], spec: TableSpec | None,
            writes: list[RecordWrite]) -> Callable[[Aggregates, BatchResult], None]:
    """Sends the upsert of the writes; returns what takes its results in."""
    # URI order: the same order for every writer of these rows.
    writes.sort(key=lambda w: w.uri)
    extra = ("collection",) if spec is None else spec.fields
    rows = []
    for w in writes:
        row = {"uri": w.uri, "did": w.did, "rkey": w.rkey, "cid": w.cid, "rev": w.rev, "seq": w.seq,
               "created_at": w.created_at, "raw": orjson.Fragment(w.raw)}
        if spec is None:
            row["collection"] = w.collection
        else:
            row.update(zip(extra, w.values, strict=True))  # type: ignore[arg-type]
        rows.append(row)
    cur.execute(upsert_sql(spec), [orjson.dumps(rows).decode()], prepare=True)

    def take_results(aggregates: Aggregates, result: BatchResult) -> None:
        if spec is None:
            for collection, inserted in cur.fetchall():
                result.deltas[collection] += inserted
            result.written += len(writes)
            return
        collection = spec.collection
        counted = counted_columns(collection)
        if not counted:
            inserted, written = cur.fetchone()  # type: ignore[misc]
            result.deltas[collection] += inserted
            result.written += written
            return
        width = len(counted)
        written_rows = cur.fetchall()
        for uri, is_new, *values in written_rows:
            aggregates.count(collection, dict(zip(counted, values[:width], strict=True)), +1)
            if is_new:
                result.deltas[collection] += 1
                if collection == Post.collection:
                    aggregates.new_posts.add(uri)
            else:
                aggregates.count(collection, dict(zip(counted, values[width:], strict=True)), -1)
        result.written += len(written_rows)

    return take_results


def _save_aggregates(cur: Cursor[Any], aggregates: Aggregates) -> None:
    """Adds the batch's changes to the counts of existing posts and actors, counts the posts the batch
    inserted from the rows, and copies changed profiles into their actor rows."""
    posts = {uri: deltas for uri, deltas in aggregates.posts.items()
             if any(deltas) and uri not in aggregates.new_posts}
    _add_to_counts(cur, POST, "uri", list(POST_COUNTS), posts)
    actors = {did: deltas for did, deltas in aggregates.actors.items() if any(deltas)}
    _add_to_counts(cur, ACTOR, "did", list(ACTOR_COUNTS), actors)
    if aggregates.new_posts:
        count_from_rows(cur, POST, sorted(aggregates.new_posts))
    if aggregates.profiles:
        profile = TABLE_BY_COLLECTION[Profile.collection].table
        _run(
            cur,
            f"UPDATE {ACTOR} a SET display_name = p.display_name, description = p.description, updated_at = now()"
            f" FROM (SELECT k.did, r.display_name, r.description FROM unnest({TEXTS}) AS k(did)"
            f" LEFT JOIN {profile} r ON r.uri = 'at://' || k.did || '/{Profile.collection}/self') p"
            " WHERE a.did = p.did"
            " AND (a.display_name IS DISTINCT FROM p.display_name OR a.description IS DISTINCT FROM p.description)",
            [sorted(aggregates.profiles)],
        )


def count_from_rows(cur: Cursor[Any], table: str, keys: list[str]) -> int:
    """Sets the counts of these posts (``table`` POST, keys URIs) or actors (ACTOR, keys DIDs) to the
    number of rows each summarises; writes only the rows whose counts change, and returns how many. The
    caller holds the locks of the owners (actor rows) of these counts."""
    key, counts = ("uri", POST_COUNTS) if table == POST else ("did", ACTOR_COUNTS)
    computed = ", ".join(
        f"(SELECT count(*) FROM {TABLE_BY_COLLECTION[collection].table} s WHERE s.{column} = k.{key}) AS {count}"
        for count, (collection, column) in counts.items()
    )
    names = list(counts)
    counted, stored = (", ".join(f"{alias}.{name}" for name in names) for alias in "ct")
    _run(
        cur,
        f"UPDATE {table} t SET {', '.join(f'{name} = c.{name}' for name in names)}"
        f" FROM (SELECT k.{key}, {computed} FROM unnest({TEXTS}) AS k({key}) OFFSET 0) c"
        f" WHERE t.{key} = c.{key} AND ({counted}) IS DISTINCT FROM ({stored})",
        [keys],
    )
    return cur.rowcount


def lock_owners(cur: Cursor[Any], table: str, keys: list[str]) -> None:
    """Takes the locks that cover the counts of these posts (``table`` POST, keys URIs) or actors (ACTOR,
    keys DIDs), as a batch does."""
    owners = {author for uri in keys if (author := post_author(uri)) is not None} if table == POST else set(keys)
    _lock_actors(cur, owners)


def _add_to_counts(cur: Cursor[Any], table: str, key: str, counts: list[str], deltas: dict[str, list[int]]) -> None:
    """Adds per-key deltas to the count columns of ``table`` (keys without a row are left alone: a like of a
    post that is not indexed counts once the post arrives)."""
    if not deltas:
        return
    keys = sorted(deltas)
    columns = [[deltas[k][index] for k in keys] for index in range(len(counts))]
    _run(
        cur,
        f"UPDATE {table} t SET {', '.join(f'{count} = t.{count} + v.{count}' for count in counts)}"
        f" FROM unnest({TEXTS}, {', '.join([BIGINTS] * len(counts))}) AS v({key}, {', '.join(counts)})"
        f" WHERE t.{key} = v.{key}",
        [keys, *columns],
    )


def _save_deltas(cur: Cursor[Any], deltas: dict[str, int]) -> None:
    changed = {key: delta for key, delta in deltas.items() if delta}
    if changed:
        _run(cur,
            f"INSERT INTO {LEDGER} (key, delta) SELECT * FROM unnest({TEXTS}, {BIGINTS})",
            [list(changed), list(changed.values())],
        )
