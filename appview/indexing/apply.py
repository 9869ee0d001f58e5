"""Applies a batch of parsed events to PostgreSQL in one transaction, with set-based SQL.

Order independence (docs/ARCHITECTURE.md): every row carries the rev of the commit that wrote it; an
upsert applies only when its rev is above the row's, the URI's tombstone and the repo's ``floor_rev``; a
delete removes older rows and keeps the highest delete rev as a tombstone. Several ops on one URI in one
batch are folded in Python first: the highest rev wins.

Sync (SPEC section 12): under the same lock, each repo's commits move its ``rev`` and the set of revs its
commits followed that were never applied (``missing_revs``); a commit that failed a check, a #sync ahead of
the index, a gap that stays open and an account that comes back from deletion queue the repo for resync.

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
    SHARE,
    SHARE_COUNTS,
    SHARED_COLUMNS,
    SHARES_OF_ACCOUNTS,
    TEXTS,
    TOMBSTONE,
    counted_columns,
    upsert_sql,
)
from appview.indexing.tables import TableSpec, post_author
from appview.models import HIDDEN_STATUSES, ActorStatus, Post, Profile, RepoSyncStatus, RowCountDelta

ACTOR_COUNT_KEY = RowCountDelta.ACTOR_KEY
# More revs missing than this and the repo is resynced at once rather than waited on.
MISSING_REVS_MAX = 16
_POST_COUNT_INDEX = {name: index for index, name in enumerate(POST_COUNTS)}
_ACTOR_COUNT_INDEX = {name: index for index, name in enumerate(ACTOR_COUNTS)}
_SHARE_INDEX = {name: index for index, name in enumerate(SHARE_COUNTS)}


@dataclass(slots=True)
class Aggregates:
    """What a batch changes in the aggregates, and the actor rows whose locks cover those changes."""

    posts: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0] * len(POST_COUNTS)))
    actors: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0] * len(ACTOR_COUNTS)))
    new_posts: set[str] = field(default_factory=set)  # inserted by the batch: counted from the rows
    profiles: set[str] = field(default_factory=set)
    owners: set[str] = field(default_factory=set)  # the actor rows to lock
    # Rows of collections that count in hidden shares, as they were counted (collection, values, sign, writer):
    # their shares are worked out once every actor row involved is locked and its status known.
    shared_rows: list[tuple[str, dict[str, Any], int, str]] = field(default_factory=list)

    def own(self, collection: str, values: dict[str, Any]) -> None:
        """Notes the owners of the aggregates a row of ``collection`` with these values counts under."""
        for _, _, _, owner in _counted_keys(collection, values):
            self.owners.add(owner)

    def count(self, collection: str, values: dict[str, Any], sign: int, *, writer: str) -> None:
        """Counts a row of ``collection`` written by ``writer`` in (+1) or out (-1) of every aggregate it counts
        under."""
        for key, count, is_post, owner in _counted_keys(collection, values):
            if is_post:
                self.posts[key][_POST_COUNT_INDEX[count]] += sign
            else:
                self.actors[key][_ACTOR_COUNT_INDEX[count]] += sign
            self.owners.add(owner)
        if collection in SHARED_COLUMNS:
            self.shared_rows.append((collection, values, sign, writer))

    def hidden_shares(self, hidden: set[str]) -> dict[str, list[int]]:
        """What the counted rows change in the hidden shares, given the DIDs of hidden accounts."""
        shares: dict[str, list[int]] = defaultdict(lambda: [0] * len(SHARE_COUNTS))
        for collection, values, sign, writer in self.shared_rows:
            for column, share, whose in SHARED_COLUMNS[collection]:
                key = values.get(column)
                if key and (writer if whose == "writer" else values.get(whose)) in hidden:
                    shares[key][_SHARE_INDEX[share]] += sign
        return {key: deltas for key, deltas in shares.items() if any(deltas)}

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
class RepoState:
    """What the locked actor row says of its repository."""

    floor_rev: str
    rev: str | None
    missing_revs: list[str]
    sync_status: str
    status: str
    status_position: str


@dataclass(slots=True)
class BatchResult:
    written: int = 0  # rows inserted, updated or deleted
    actors: set[str] = field(default_factory=set)  # DIDs whose actor row exists once this commits
    deltas: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stale_known_actors: bool = False  # an actor row the caller knew of was missing
    queued: dict[str, str] = field(default_factory=dict)  # repos this batch queued for resync, with the reason


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
    actor_event_dids = set(folded.handles) | set(folded.accounts) | set(folded.problems)
    lock = repo_dids | actor_event_dids | aggregates.owners | set(folded.commits)
    result.actors = folded.dids | lock
    unknown = result.actors - known_actors
    connection = cur.connection
    with connection.pipeline():  # the insert, then the lock, in one round trip
        inserter = Cursor(connection)
        if unknown:
            _send_ensure_actors(inserter, unknown)
        states, missing = _lock_actors(cur, lock)
        if unknown:
            result.deltas[ACTOR_COUNT_KEY] += inserter.fetchone()[0]  # type: ignore[index]
    if missing:
        # Rows the caller's cache said exist do not (the database was restored or emptied under a running
        # worker): without them counts would be skipped. The cache is to be dropped.
        result.stale_known_actors = True
        result.deltas[ACTOR_COUNT_KEY] += _ensure_actors(cur, result.actors)
        states.update(_lock_actors(cur, missing)[0])

    _purge_deleted_accounts(cur, folded, states, aggregates, result)
    floors = {did: state.floor_rev for did, state in states.items() if state.floor_rev}

    live = {uri: w for uri, w in folded.writes.items() if w.rev > floors.get(w.did, "")}
    tombstones = _tombstones(cur, [uri for uri, w in live.items() if not w.is_delete])
    # The actor updates, deletes and upserts touch distinct rows, so they go out together in one pipeline:
    # PostgreSQL runs each statement while the next is being prepared here; results are read at the end.
    with connection.pipeline():
        _update_actors(cur, folded)
        _update_sync_states(cur, folded, states, result)
        sent: list[Callable[[Aggregates, BatchResult], None]] = []
        for spec, writes in deletes.items():
            kept = [w for w in writes if w.uri in live]
            if kept:
                sent.append(_delete(Cursor(connection), spec, "uri", [w.uri for w in kept], [w.rev for w in kept]))
        _save_tombstones(cur, [w for w in folded.deletes.values() if w.rev > floors.get(w.did, "")])
        for spec, writes in upserts.items():
            kept = [w for w in writes if w.uri in live and w.rev > tombstones.get(w.uri, "")]
            if kept:
                sent.append(_upsert(Cursor(connection), spec, kept))
        for take_results in sent:
            take_results(aggregates, result)

    late = aggregates.owners - lock
    if late:
        result.actors |= late
        result.deltas[ACTOR_COUNT_KEY] += _ensure_actors(cur, late)
        states.update(_lock_actors(cur, late)[0])  # just inserted if missing: all exist
    hidden = {did for did, state in states.items() if state.status in HIDDEN_STATUSES}
    with connection.pipeline():  # nothing is read back from here on
        _save_aggregates(cur, aggregates)
        _add_to_counts(cur, SHARE, "key", list(SHARE_COUNTS), aggregates.hidden_shares(hidden), insert=True)
        _move_shares_of_flipped_accounts(cur, folded, states)
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


def _lock_actors(cur: Cursor[Any], dids: set[str]) -> tuple[dict[str, RepoState], set[str]]:
    """Locks the actor rows in DID order; returns what they say of their repos, and the DIDs that have no
    row."""
    if not dids:
        return {}, set()
    _run(cur,
        f"SELECT did, floor_rev, rev, missing_revs, sync_status, status, status_position FROM {ACTOR}"
        f" WHERE did = ANY({TEXTS})"
        " ORDER BY did FOR NO KEY UPDATE",
        [list(dids)],
    )
    states = {row[0]: RepoState(*row[1:]) for row in cur.fetchall()}
    return states, dids - set(states)


def _purge_deleted_accounts(cur: Cursor[Any], folded: Folded, states: dict[str, RepoState], aggregates: Aggregates,
                            result: BatchResult) -> None:
    """A deleted account's records go: all those at or below the later of its deletion time (as a TID) and
    the newest rev applied, and none written after them may come back."""
    floors = {}
    for did, purge_rev in folded.purges.items():
        state = states[did]
        floor = max(purge_rev, state.rev or "", state.floor_rev)
        if floor > state.floor_rev:
            floors[did] = floor
            state.floor_rev = floor
    if floors:
        _purge(cur, floors, aggregates, result)


def _update_sync_states(cur: Cursor[Any], folded: Folded, states: dict[str, RepoState], result: BatchResult) -> None:
    """Moves each repo's rev and missing revs by the commits applied, and queues for resync the repos that
    need it. Runs under the actor row locks, so the read-modify-write is safe."""
    dids = set(folded.commits) | set(folded.problems)
    dids |= {did for did, (_, active, _) in folded.accounts.items()
             if active and states[did].status == ActorStatus.DELETED}
    rows = []
    for did in sorted(dids):
        state = states[did]
        rev, missing, reason = state.rev, list(state.missing_revs), folded.problems.get(did)
        for since, commit_rev, is_sync in sorted(folded.commits.get(did, ()), key=lambda commit: commit[1]):
            if commit_rev in missing:
                missing.remove(commit_rev)
            if is_sync:
                # The repo says its state is now this rev: what the index holds may not lead to it.
                if commit_rev > state.floor_rev:
                    reason = reason or "sync-event"
            # Every applied rev is at or below ``rev``: a ``since`` above it names a commit not applied yet. It
            # may still come (another worker holds it): the repo is resynced only if it stays missing.
            elif (rev is not None and since is not None and since > rev and since not in missing
                    and state.sync_status == RepoSyncStatus.ACTIVE):
                missing.append(since)
            # The newest commit follows one older than a rev applied: that rev is not in its chain (a fork, or
            # a repository rewound), so what the index holds may not lead to it.
            elif rev is not None and since is not None and since < rev < commit_rev:
                reason = reason or "since-mismatch"
            if rev is None or commit_rev > rev:
                rev = commit_rev
        if reason is None and folded.accounts.get(did, ("", False, ""))[1] and state.status == ActorStatus.DELETED:
            reason = "account-restored"
        if len(missing) > MISSING_REVS_MAX:
            reason = reason or "commits-missed"
        if reason is not None:
            missing = []
            result.queued[did] = reason
        rows.append((did, rev, ",".join(missing), reason))
    if rows:
        columns = [list(column) for column in zip(*rows, strict=True)]
        _run(cur,
            f"UPDATE {ACTOR} a SET rev = v.rev, missing_revs = string_to_array(v.missing, ','),"
            " missing_since = CASE WHEN v.missing = '' THEN NULL ELSE COALESCE(a.missing_since, now()) END,"
            " sync_status = CASE WHEN v.reason IS NULL THEN a.sync_status ELSE 'desynchronized' END,"
            " sync_reason = COALESCE(v.reason, a.sync_reason),"
            " resync_after = CASE WHEN v.reason IS NULL THEN a.resync_after"
            "  ELSE LEAST(COALESCE(a.resync_after, now()), now()) END,"
            " updated_at = now()"
            f" FROM unnest({TEXTS}, {TEXTS}, {TEXTS}, {TEXTS}) AS v(did, rev, missing, reason) WHERE a.did = v.did",
            columns,
        )


def _update_actors(cur: Cursor[Any], folded: Folded) -> None:
    """Handles (from a DID document fetched later than the one that gave the stored handle) and account
    statuses (from an #account event later than the one that set the stored status)."""
    if folded.handles:
        rows = _columns(folded.handles, lambda did, v: (did, v[1], v[0]))
        _run(cur,
            f"UPDATE {ACTOR} a SET handle = v.handle, handle_checked_at = v.checked_at::timestamptz,"
            f" updated_at = now() FROM unnest({TEXTS}, {TEXTS}, {TEXTS}) AS v(did, handle, checked_at)"
            " WHERE a.did = v.did AND v.checked_at::timestamptz > COALESCE(a.handle_checked_at, '-infinity')",
            rows,
        )
    if folded.accounts:
        rows = _columns(folded.accounts, lambda did, v: (did, v[1], v[2], v[0]))
        _run(cur,
            f"UPDATE {ACTOR} a SET active = v.active, status = v.status, status_position = v.position,"
            f" updated_at = now() FROM unnest({TEXTS}, {BOOLS}, {TEXTS}, {TEXTS}) AS v(did, active, status, position)"
            " WHERE a.did = v.did AND v.position > a.status_position",
            rows,
        )


def _columns(values: dict[str, Any], row: Any) -> list[list[Any]]:
    """Per-DID values as parallel arrays for unnest, in DID order."""
    rows = [row(did, values[did]) for did in sorted(values)]
    return [list(column) for column in zip(*rows, strict=True)]


def _purge(cur: Cursor[Any], floors: dict[str, str], aggregates: Aggregates, result: BatchResult) -> None:
    """Account deleted: every record of the repo at or below its new floor goes, from every table."""
    dids = sorted(floors)
    revs = [floors[did] for did in dids]
    connection = cur.connection
    # Each statement touches a table of its own: they go out in one pipeline, their results read at the end.
    with connection.pipeline():
        _run(cur,
            # A deleted repository has nothing left to fetch: it leaves the resync queue.
            f"UPDATE {ACTOR} a SET floor_rev = v.rev, sync_status = 'active', sync_reason = '', resync_after = NULL,"
            " missing_revs = '{}', missing_since = NULL, updated_at = now()"
            f" FROM unnest({TEXTS}, {TEXTS}) AS v(did, rev) WHERE a.did = v.did AND v.rev > a.floor_rev",
            [dids, revs],
        )
        sent = [_delete(Cursor(connection), spec, "did", dids, revs, inclusive=True)
                for spec in (*TABLE_BY_COLLECTION.values(), None)]
        # Tombstones at or below the floor are redundant with it.
        _run(cur,
            f"DELETE FROM {TOMBSTONE} t USING unnest({TEXTS}, {TEXTS}) AS v(did, rev)"
            " WHERE t.did = v.did AND t.rev <= v.rev",
            [dids, revs],
        )
        for take_results in sent:
            take_results(aggregates, result)


def _tombstones(cur: Cursor[Any], uris: list[str]) -> dict[str, str]:
    if not uris:
        return {}
    _run(cur, f"SELECT uri, rev FROM {TOMBSTONE} WHERE uri = ANY({TEXTS})", [uris])
    return dict(cur.fetchall())


def _save_tombstones(cur: Cursor[Any], writes: list[RecordWrite]) -> None:
    if not writes:
        return
    writes.sort(key=lambda w: w.uri)
    _run(cur,
        f"INSERT INTO {TOMBSTONE} AS t (uri, did, rev)"
        f" SELECT * FROM unnest({TEXTS}, {TEXTS}, {TEXTS})"
        " ON CONFLICT (uri) DO UPDATE SET rev = excluded.rev, deleted_at = now() WHERE excluded.rev > t.rev",
        [[w.uri for w in writes], [w.did for w in writes], [w.rev for w in writes]],
    )


def _delete(cur: Cursor[Any], spec: TableSpec | None, key: str, keys: list[str], revs: list[str], *,
            inclusive: bool = False) -> Callable[[Aggregates, BatchResult], None]:
    """Sends the delete of the rows of ``spec``'s table (the generic one for None) whose ``key`` column
    (uri, or did for a purge) is one of ``keys`` and whose rev is below (``inclusive``: at or below) the
    matching one of ``revs``; returns what takes its results in."""
    table = GENERIC if spec is None else spec.table
    columns = ["collection"] if spec is None else counted_columns(spec.collection)
    if spec is not None and spec.collection in SHARED_COLUMNS:
        columns = [*columns, "did"] if "did" not in columns else columns
    returned = ", ".join(f"t.{column}" for column in columns) or "1"
    _run(cur,
        f"DELETE FROM {table} t USING unnest({TEXTS}, {TEXTS}) AS v({key}, rev)"
        f" WHERE t.{key} = v.{key} AND t.rev {'<=' if inclusive else '<'} v.rev RETURNING {returned}",
        [keys, revs],
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
                values = dict(zip(columns, row, strict=True))
                aggregates.count(spec.collection, values, -1, writer=values.get("did", ""))

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
            writer = uri[5:uri.index("/", 5)]
            aggregates.count(collection, dict(zip(counted, values[:width], strict=True)), +1, writer=writer)
            if is_new:
                result.deltas[collection] += 1
                if collection == Post.collection:
                    aggregates.new_posts.add(uri)
            else:
                aggregates.count(collection, dict(zip(counted, values[width:], strict=True)), -1, writer=writer)
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


def stored_uris(cur: Cursor[Any], did: str, *, below_rev: str) -> set[str]:
    """The URIs of ``did``'s stored records written at a rev below ``below_rev``, from every table."""
    uris: set[str] = set()
    for table in (*(spec.table for spec in TABLE_BY_COLLECTION.values()), GENERIC):
        _run(cur, f"SELECT uri FROM {table} WHERE did = %s AND rev < %s", [did, below_rev])
        uris.update(uri for (uri,) in cur.fetchall())
    return uris


def finish_resync(cur: Cursor[Any], did: str, rev: str) -> None:
    """The repo's stored state now equals its repository at ``rev``: nothing at or below ``rev`` may be written
    any more, the commits it waited for are no longer awaited, and it is in sync again unless something
    queued it once more meanwhile (then it stays queued). The caller holds the actor row's lock."""
    _run(cur,
        f"UPDATE {ACTOR} SET floor_rev = GREATEST(floor_rev, %(rev)s), rev = GREATEST(COALESCE(rev, ''), %(rev)s),"
        " missing_revs = '{}', missing_since = NULL, sync_tries = 0,"
        " resync_after = CASE WHEN sync_status = 'resyncing' THEN NULL ELSE resync_after END,"
        " sync_reason = CASE WHEN sync_status = 'resyncing' THEN '' ELSE sync_reason END,"
        " sync_status = CASE WHEN sync_status = 'resyncing' THEN 'active' ELSE sync_status END,"
        " updated_at = now() WHERE did = %(did)s",
        {"did": did, "rev": rev},
    )
    _run(cur, f"DELETE FROM {TOMBSTONE} WHERE did = %s AND rev <= %s", [did, rev])


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


def _add_to_counts(cur: Cursor[Any], table: str, key: str, counts: list[str], deltas: dict[str, list[int]], *,
                   insert: bool = False) -> None:
    """Adds per-key deltas to the count columns of ``table``. Keys without a row are left alone (a like of a
    post that is not indexed counts once the post arrives), or with ``insert`` get one."""
    if not deltas:
        return
    keys = sorted(deltas)
    columns = [[deltas[k][index] for k in keys] for index in range(len(counts))]
    added = ", ".join(f"{count} = t.{count} + {'excluded' if insert else 'v'}.{count}" for count in counts)
    values = f"unnest({TEXTS}, {', '.join([BIGINTS] * len(counts))}) AS v({key}, {', '.join(counts)})"
    if insert:
        sql = (f"INSERT INTO {table} AS t ({key}, {', '.join(counts)}) SELECT * FROM {values}"
               f" ON CONFLICT ({key}) DO UPDATE SET {added}")
    else:
        sql = f"UPDATE {table} t SET {added} FROM {values} WHERE t.{key} = v.{key}"
    _run(cur, sql, [keys, *columns])


def _move_shares_of_flipped_accounts(cur: Cursor[Any], folded: Folded, states: dict[str, RepoState]) -> None:
    """An account hidden (+1) or shown again (-1) by this batch: every row it wrote that counts in a share,
    and every follow of it, moves in or out of the hidden shares. Runs after the batch's row writes: a row
    the batch wrote was counted under the account's status before the batch (``Aggregates.hidden_shares``),
    and moves here with the others."""
    flips: dict[str, int] = {}
    for did, (position, _, status) in folded.accounts.items():
        state = states[did]
        if position > state.status_position:
            was, now = state.status in HIDDEN_STATUSES, status in HIDDEN_STATUSES
            if was != now:
                flips[did] = 1 if now else -1
    if flips:
        dids = sorted(flips)
        _run(cur, SHARES_OF_ACCOUNTS, [dids, [flips[did] for did in dids]])


def _save_deltas(cur: Cursor[Any], deltas: dict[str, int]) -> None:
    changed = {key: delta for key, delta in deltas.items() if delta}
    if changed:
        _run(cur,
            f"INSERT INTO {LEDGER} (key, delta) SELECT * FROM unnest({TEXTS}, {BIGINTS})",
            [list(changed), list(changed.values())],
        )
