"""Applies a batch of parsed events to PostgreSQL in one transaction, with set-based SQL.

Order independence (docs/ARCHITECTURE.md): every row carries the seq that wrote it; an upsert applies
only when its seq is above the row's, the URI's tombstone and the author's ``purged_seq``; a delete
removes older rows and keeps the highest delete seq as a tombstone. Several ops on one URI in one batch
are folded in Python first: the highest seq wins.

Concurrency between workers (READ COMMITTED): every write about a repo happens while holding the lock
on that repo's actor row, and every aggregate is recounted while holding the lock on the actor row that
owns it (a post's counts: its author; an actor's counts: the actor). All those actor rows are locked in
one statement, in DID order, after they have been inserted if missing, so two batches never deadlock on
them; each count then runs in a later statement, so the last transaction to count a value sees every
row committed before it. The rare keys only known after a write (the old subject of an updated or
deleted like, say) are locked in a second round: a deadlock there is retried by the worker.
"""

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from psycopg import Cursor

from appview.indexing.collections import TABLE_BY_COLLECTION
from appview.indexing.events import Event, RecordWrite
from appview.indexing.tables import TableSpec, post_author
from appview.models import Actor, GenericRecord, Post, Profile, RecordTombstone, RowCountDelta

POST_COLLECTION = Post.collection
PROFILE_COLLECTION = Profile.collection
ACTOR_COUNT_KEY = RowCountDelta.ACTOR_KEY

ACTOR = Actor._meta.db_table
POST = Post._meta.db_table
TOMBSTONE = RecordTombstone._meta.db_table
GENERIC = GenericRecord._meta.db_table
LEDGER = RowCountDelta._meta.db_table

# Post counts: (count column, table counted, column of that table pointing at the post).
POST_COUNTS = {
    "like_count": ("app.bsky.feed.like", "subject_uri"),
    "repost_count": ("app.bsky.feed.repost", "subject_uri"),
    "reply_count": (POST_COLLECTION, "reply_parent_uri"),
    "quote_count": (POST_COLLECTION, "quote_uri"),
}
# Actor counts: (count column, table counted, column of that table naming the actor).
ACTOR_COUNTS = {
    "followers_count": ("app.bsky.graph.follow", "subject_did"),
    "follows_count": ("app.bsky.graph.follow", "did"),
    "posts_count": (POST_COLLECTION, "did"),
}
# For each collection, the columns whose old and new values are keys of a count to redo.
POST_KEY_COLUMNS = {
    "app.bsky.feed.like": (("subject_uri", "like_count"),),
    "app.bsky.feed.repost": (("subject_uri", "repost_count"),),
    POST_COLLECTION: (("reply_parent_uri", "reply_count"), ("quote_uri", "quote_count")),
}
ACTOR_KEY_COLUMNS = {"app.bsky.graph.follow": (("subject_did", "followers_count"),)}
# Counts about the repo itself whenever it writes (or loses) a record of the collection.
REPO_COUNTS = {"app.bsky.graph.follow": "follows_count", POST_COLLECTION: "posts_count"}

# A list parameter arrives as one comma-separated string (see _run).
TEXTS = "string_to_array(%s, ',')"
BIGINTS = "string_to_array(%s, ',')::bigint[]"
BOOLS = "string_to_array(%s, ',')::boolean[]"


ACTOR_DEFAULTS = (
    "handle_seq, active, status, status_seq, rev_seq, needs_resync, purged_seq, followers_count, follows_count,"
    " posts_count"
)
ACTOR_DEFAULT_VALUES = "0, true, 'active', 0, 0, false, 0, 0, 0, 0"


@dataclass(slots=True)
class Folded:
    """A batch reduced to its final effects: the last write per URI, the last change per actor."""

    writes: dict[str, RecordWrite] = field(default_factory=dict)
    dids: set[str] = field(default_factory=set)
    handles: dict[str, tuple[int, str]] = field(default_factory=dict)
    accounts: dict[str, tuple[int, bool, str]] = field(default_factory=dict)
    purges: dict[str, int] = field(default_factory=dict)
    syncs: dict[str, tuple[int, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, events: Iterable[Event]) -> "Folded":
        folded = cls()
        writes = folded.writes
        for event in events:
            if not event.usable:
                continue
            folded.dids.update(event.dids)
            for write in event.writes:
                current = writes.get(write.uri)
                if current is None or (write.seq, write.order) > (current.seq, current.order):
                    writes[write.uri] = write
            did, seq = event.did, event.seq
            if event.handle is not None and seq > folded.handles.get(did, (0, ""))[0]:
                folded.handles[did] = (seq, event.handle)
            if event.account is not None:
                active, status = event.account
                if seq > folded.accounts.get(did, (0, True, ""))[0]:
                    folded.accounts[did] = (seq, active, status)
                if status == "deleted":
                    folded.purges[did] = max(seq, folded.purges.get(did, 0))
            if event.sync_rev is not None and seq > folded.syncs.get(did, (0, ""))[0]:
                folded.syncs[did] = (seq, event.sync_rev)
        return folded


@dataclass(slots=True)
class Recount:
    """The aggregates to recompute, and the actor rows whose locks cover them."""

    posts: dict[str, set[str]] = field(default_factory=lambda: {name: set() for name in POST_COUNTS})
    actors: dict[str, set[str]] = field(default_factory=lambda: {name: set() for name in ACTOR_COUNTS})
    profiles: set[str] = field(default_factory=set)
    owners: set[str] = field(default_factory=set)  # the actor rows to lock

    def add_post_key(self, count: str, uri: str | None) -> None:
        author = post_author(uri)
        if author is not None:
            self.posts[count].add(uri)  # type: ignore[arg-type]
            self.owners.add(author)

    def add_actor_key(self, count: str, did: str) -> None:
        self.actors[count].add(did)
        self.owners.add(did)

    def add_profile(self, did: str) -> None:
        self.profiles.add(did)
        self.owners.add(did)

    def add_from_columns(self, collection: str, values: dict[str, Any]) -> None:
        for column, count in POST_KEY_COLUMNS.get(collection, ()):
            self.add_post_key(count, values.get(column))
        for column, count in ACTOR_KEY_COLUMNS.get(collection, ()):
            if values.get(column):
                self.add_actor_key(count, values[column])

    def lock_dids(self) -> set[str]:
        return set(self.owners)


@dataclass(slots=True)
class BatchResult:
    written: int = 0  # rows inserted, updated or deleted
    actors: set[str] = field(default_factory=set)  # DIDs whose actor row exists once this commits
    deltas: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def apply_folded(cur: Cursor[Any], folded: Folded, *,
                 known_actors: frozenset[str] | set[str] = frozenset()) -> BatchResult:
    """Applies one folded batch; the caller holds the transaction. ``known_actors``: DIDs whose actor row
    is known to exist (actor rows are never deleted), which need no insert attempt."""
    result = BatchResult()
    recount = Recount()
    upserts: dict[TableSpec | None, list[RecordWrite]] = defaultdict(list)
    deletes: dict[TableSpec | None, list[RecordWrite]] = defaultdict(list)
    repo_dids: set[str] = set()
    for write in folded.writes.values():
        (deletes if write.is_delete else upserts)[write.spec].append(write)
        repo_dids.add(write.did)
        collection = write.collection
        if collection in REPO_COUNTS:
            recount.add_actor_key(REPO_COUNTS[collection], write.did)
        if collection == PROFILE_COLLECTION and write.rkey == "self":
            recount.add_profile(write.did)
        if not write.is_delete:
            if write.spec is not None and (collection in POST_KEY_COLUMNS or collection in ACTOR_KEY_COLUMNS):
                recount.add_from_columns(collection, _named(write.spec, write.values))
            if collection == POST_COLLECTION:
                for count in POST_COUNTS:
                    recount.add_post_key(count, write.uri)
    # Old values, read before locking so that their owners join the one ordered lock statement; a
    # value that changes before the lock is caught after the writes (second round).
    _read_old_values(cur, deletes, folded.purges, recount)
    purged_dids = set(folded.purges)
    for did in purged_dids:
        for count in ACTOR_COUNTS:
            recount.add_actor_key(count, did)
        recount.add_profile(did)
    actor_event_dids = set(folded.handles) | set(folded.accounts) | set(folded.syncs)
    lock = repo_dids | actor_event_dids | recount.lock_dids()
    result.actors = folded.dids | lock
    result.deltas[ACTOR_COUNT_KEY] += _ensure_actors(cur, result.actors - known_actors)
    purged_seq = _lock_actors(cur, lock)

    _apply_actor_events(cur, folded, purged_seq, recount, result)

    live = {uri: w for uri, w in folded.writes.items() if w.seq > purged_seq.get(w.did, 0)}
    tombstones = _tombstones(cur, [uri for uri, w in live.items() if not w.is_delete])
    for spec, writes in deletes.items():
        kept = [w for w in writes if w.uri in live]
        if kept:
            _delete(cur, spec, kept, recount, result)
    _save_tombstones(cur, [w for writes in deletes.values() for w in writes if w.uri in live])
    for spec, writes in upserts.items():
        kept = [w for w in writes if w.uri in live and w.seq > tombstones.get(w.uri, 0)]
        if kept:
            _upsert(cur, spec, kept, recount, result)

    late = recount.lock_dids() - lock
    if late:
        result.actors |= late
        result.deltas[ACTOR_COUNT_KEY] += _ensure_actors(cur, late)
        _lock_actors(cur, late)
    _recount(cur, recount)
    _save_deltas(cur, result.deltas)
    return result


def _run(cur: Cursor[Any], sql: str, params: Sequence[Any] = ()) -> None:
    """Executes with every list parameter sent as one comma-separated string (split by string_to_array):
    the lists here hold DIDs, AT-URIs, NSIDs, handles, TIDs, statuses and numbers, whose syntax has no
    comma, and one string costs far less to send than an array dumped element by element."""
    cur.execute(sql, [_csv(value) for value in params])


def _csv(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return value


def _named(spec: TableSpec, values: Sequence[Any] | None) -> dict[str, Any]:
    return {name: value for (name, _), value in zip(spec.columns, values or (), strict=True)}


def _read_old_values(cur: Cursor[Any], deletes: dict[TableSpec | None, list[RecordWrite]],
                     purges: dict[str, int], recount: Recount) -> None:
    for spec, writes in deletes.items():
        if spec is None or spec.collection not in POST_KEY_COLUMNS | ACTOR_KEY_COLUMNS:
            continue
        columns = _key_columns(spec.collection)
        _run(cur, f"SELECT {', '.join(columns)} FROM {spec.table} WHERE uri = ANY({TEXTS})",
                    [[w.uri for w in writes]])
        for row in cur.fetchall():
            recount.add_from_columns(spec.collection, dict(zip(columns, row, strict=True)))
    if not purges:
        return
    for collection in POST_KEY_COLUMNS | ACTOR_KEY_COLUMNS:
        spec = TABLE_BY_COLLECTION[collection]
        columns = _key_columns(collection)
        _run(cur, f"SELECT DISTINCT {', '.join(columns)} FROM {spec.table} WHERE did = ANY({TEXTS})",
                    [list(purges)])
        for row in cur.fetchall():
            recount.add_from_columns(collection, dict(zip(columns, row, strict=True)))


def _key_columns(collection: str) -> list[str]:
    return [column for column, _ in POST_KEY_COLUMNS.get(collection, ()) + ACTOR_KEY_COLUMNS.get(collection, ())]


def _ensure_actors(cur: Cursor[Any], dids: set[str]) -> int:
    """Inserts the missing actor rows (in DID order, like every lock); returns how many."""
    if not dids:
        return 0
    _run(cur,
        f"WITH ins AS (INSERT INTO {ACTOR} (did, {ACTOR_DEFAULTS})"
        f" SELECT d, {ACTOR_DEFAULT_VALUES} FROM unnest({TEXTS}) AS d ORDER BY d"
        " ON CONFLICT (did) DO NOTHING RETURNING 1) SELECT count(*) FROM ins",
        [sorted(dids)],
    )
    return cur.fetchone()[0]  # type: ignore[index]


def _lock_actors(cur: Cursor[Any], dids: set[str]) -> dict[str, int]:
    """Locks the actor rows in DID order; returns the purged_seq of those that have one."""
    if not dids:
        return {}
    _run(cur,
        f"SELECT did, purged_seq FROM {ACTOR} WHERE did = ANY({TEXTS}) ORDER BY did FOR NO KEY UPDATE",
        [list(dids)],
    )
    return {did: seq for did, seq in cur.fetchall() if seq}


def _apply_actor_events(cur: Cursor[Any], folded: Folded, purged_seq: dict[str, int], recount: Recount,
                        result: BatchResult) -> None:
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
    purges = {did: seq for did, seq in folded.purges.items() if seq > purged_seq.get(did, 0)}
    if purges:
        _purge(cur, purges, recount, result)
        purged_seq.update(purges)


def _columns(values: dict[str, Any], row: Any) -> list[list[Any]]:
    """Per-DID values as parallel arrays for unnest, in DID order."""
    rows = [row(did, values[did]) for did in sorted(values)]
    return [list(column) for column in zip(*rows, strict=True)]


def _purge(cur: Cursor[Any], purges: dict[str, int], recount: Recount, result: BatchResult) -> None:
    """Account deleted: every record of the repo written before the deletion goes, from every table."""
    dids = sorted(purges)
    seqs = [purges[did] for did in dids]
    _run(cur,
        f"UPDATE {ACTOR} a SET purged_seq = v.seq, updated_at = now()"
        f" FROM unnest({TEXTS}, {BIGINTS}) AS v(did, seq) WHERE a.did = v.did AND v.seq > a.purged_seq",
        [dids, seqs],
    )
    for spec in TABLE_BY_COLLECTION.values():
        columns = _key_columns(spec.collection)
        returned = ", ".join(f"t.{column}" for column in columns) or "1"
        _run(cur,
            f"DELETE FROM {spec.table} t USING unnest({TEXTS}, {BIGINTS}) AS v(did, seq)"
            f" WHERE t.did = v.did AND t.seq < v.seq RETURNING {returned}",
            [dids, seqs],
        )
        rows = cur.fetchall()
        result.deltas[spec.collection] -= len(rows)
        result.written += len(rows)
        for row in rows if columns else ():
            recount.add_from_columns(spec.collection, dict(zip(columns, row, strict=True)))
    _run(cur,
        f"DELETE FROM {GENERIC} t USING unnest({TEXTS}, {BIGINTS}) AS v(did, seq)"
        " WHERE t.did = v.did AND t.seq < v.seq RETURNING t.collection",
        [dids, seqs],
    )
    for (collection,) in cur.fetchall():
        result.deltas[collection] -= 1
        result.written += 1
    # Older tombstones are redundant with purged_seq.
    _run(cur,
        f"DELETE FROM {TOMBSTONE} t USING unnest({TEXTS}, {BIGINTS}) AS v(did, seq)"
        " WHERE t.did = v.did AND t.seq < v.seq",
        [dids, seqs],
    )


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


def _delete(cur: Cursor[Any], spec: TableSpec | None, writes: list[RecordWrite], recount: Recount,
            result: BatchResult) -> None:
    table = GENERIC if spec is None else spec.table
    columns = ["collection"] if spec is None else _key_columns(spec.collection)
    returned = ", ".join(f"t.{column}" for column in columns) or "1"
    _run(cur,
        f"DELETE FROM {table} t USING unnest({TEXTS}, {BIGINTS}) AS v(uri, seq)"
        f" WHERE t.uri = v.uri AND t.seq < v.seq RETURNING {returned}",
        [[w.uri for w in writes], [w.seq for w in writes]],
    )
    rows = cur.fetchall()
    result.written += len(rows)
    if spec is None:
        for (collection,) in rows:
            result.deltas[collection] -= 1
        return
    result.deltas[spec.collection] -= len(rows)
    if columns:
        for row in rows:
            recount.add_from_columns(spec.collection, dict(zip(columns, row, strict=True)))


_COMMON = (("uri", "text"), ("did", "text"), ("rkey", "text"), ("cid", "text"), ("rev", "text"),
           ("seq", "bigint"), ("created_at", "timestamptz"), ("raw", "jsonb"))
_UPSERT_SQL: dict[str, str] = {}


def _upsert_sql(spec: TableSpec | None) -> str:
    """INSERT ... ON CONFLICT for one table, returning the count of new rows and, for tables that feed
    aggregates, the old values of the rows it replaced (read with the statement's snapshot, which does
    not see the statement's own writes). The rows arrive as one JSON array of objects: orjson writes it
    in C and json_to_recordset reads it in C, where arrays would be dumped value by value in Python."""
    key = "" if spec is None else spec.collection
    if key in _UPSERT_SQL:
        return _UPSERT_SQL[key]
    table = GENERIC if spec is None else spec.table
    columns = _COMMON + ((("collection", "text"),) if spec is None else spec.columns)
    names = [name for name, _ in columns]
    fixed_names, fixed_values = "", ""
    if table == POST:
        fixed_names = ", " + ", ".join(POST_COUNTS)
        fixed_values = ", 0" * len(POST_COUNTS)
    updated = ", ".join(f"{name} = excluded.{name}" for name in names if name not in ("uri", "did", "rkey"))
    old_columns = [] if spec is None else _key_columns(spec.collection)
    old = "".join(
        f", CASE WHEN t.xmax = 0 THEN NULL ELSE (SELECT o.{c} FROM {table} o WHERE o.uri = t.uri) END AS old_{c}"
        for c in old_columns
    )
    if spec is None:
        summary = "SELECT collection, count(*) FILTER (WHERE inserted) FROM w GROUP BY collection"
        returning = "t.collection, t.xmax = 0 AS inserted"
    else:
        aggregated = "".join(f", array_agg(old_{c}) FILTER (WHERE old_{c} IS NOT NULL)" for c in old_columns)
        summary = f"SELECT count(*) FILTER (WHERE inserted), count(*){aggregated} FROM w"
        returning = f"t.xmax = 0 AS inserted{old}"
    definition = ", ".join(f"{name} {kind}" for name, kind in columns)
    sql = (
        f"WITH w AS (INSERT INTO {table} AS t ({', '.join(names)}{fixed_names})"
        f" SELECT {', '.join(names)}{fixed_values} FROM json_to_recordset(%s::json) AS v({definition})"
        f" ON CONFLICT (uri) DO UPDATE SET {updated}, indexed_at = now() WHERE excluded.seq > t.seq"
        f" RETURNING {returning}) {summary}"
    )
    _UPSERT_SQL[key] = sql
    return sql


def _upsert(cur: Cursor[Any], spec: TableSpec | None, writes: list[RecordWrite], recount: Recount,
            result: BatchResult) -> None:
    # URI order: the same order for every writer of these rows.
    writes.sort(key=lambda w: w.uri)
    extra = ["collection"] if spec is None else [name for name, _ in spec.columns]
    rows = []
    for w in writes:
        row = {"uri": w.uri, "did": w.did, "rkey": w.rkey, "cid": w.cid, "rev": w.rev, "seq": w.seq,
               "created_at": w.created_at, "raw": orjson.Fragment(w.raw)}
        if spec is None:
            row["collection"] = w.collection
        else:
            row.update(zip(extra, w.values, strict=True))  # type: ignore[arg-type]
        rows.append(row)
    cur.execute(_upsert_sql(spec), [orjson.dumps(rows).decode()])
    if spec is None:
        for collection, inserted in cur.fetchall():
            result.deltas[collection] += inserted
        result.written += len(writes)
        return
    summary = cur.fetchone()
    assert summary is not None
    inserted, changed, *old_values = summary
    result.deltas[spec.collection] += inserted
    result.written += changed
    for column, values in zip(_key_columns(spec.collection), old_values, strict=True):
        for value in values or ():
            recount.add_from_columns(spec.collection, {column: value})


def _recount(cur: Cursor[Any], recount: Recount) -> None:
    _recount_table(cur, POST, "uri", POST_COUNTS, recount.posts)
    _recount_table(cur, ACTOR, "did", ACTOR_COUNTS, recount.actors)
    if recount.profiles:
        profile = TABLE_BY_COLLECTION[PROFILE_COLLECTION].table
        _run(
            cur,
            f"UPDATE {ACTOR} a SET display_name = p.display_name, description = p.description, updated_at = now()"
            f" FROM (SELECT k.did, r.display_name, r.description FROM unnest({TEXTS}) AS k(did)"
            f" LEFT JOIN {profile} r ON r.uri = 'at://' || k.did || '/{PROFILE_COLLECTION}/self') p"
            " WHERE a.did = p.did"
            " AND (a.display_name IS DISTINCT FROM p.display_name OR a.description IS DISTINCT FROM p.description)",
            [sorted(recount.profiles)],
        )


def _recount_table(cur: Cursor[Any], table: str, key: str, counts: dict[str, tuple[str, str]],
                   keys_by_count: dict[str, set[str]]) -> None:
    """Recomputes, in one statement, each count of ``table`` for the keys listed under it.

    Each key comes with a bit mask of its counts to redo; only rows that exist are counted (most liked
    posts may not be indexed); the subquery is kept from being inlined (OFFSET 0) so that each count
    runs once; only changed rows are rewritten, joined back by ctid, which cannot change meanwhile since
    this transaction holds the locks of the rows' owners."""
    masks: dict[str, int] = defaultdict(int)
    for bit, count in enumerate(counts):
        for value in keys_by_count[count]:
            masks[value] |= 1 << bit
    if not masks:
        return
    keys = sorted(masks)
    computed = ", ".join(
        f"CASE WHEN f.mask & {1 << bit} <> 0 THEN (SELECT count(*) FROM {TABLE_BY_COLLECTION[collection].table} s"
        f" WHERE s.{column} = k.{key}) ELSE k.{count} END AS {count}, k.{count} AS old_{count}"
        for bit, (count, (collection, column)) in enumerate(counts.items())
    )
    names = list(counts)
    _run(
        cur,
        f"UPDATE {table} t SET {', '.join(f'{name} = c.{name}' for name in names)}"
        f" FROM (SELECT k.ctid AS tid, {computed} FROM unnest({TEXTS}, {BIGINTS}) AS f(key, mask)"
        f" JOIN {table} k ON k.{key} = f.key WHERE k.{key} = ANY({TEXTS}) OFFSET 0) c"
        f" WHERE t.ctid = c.tid AND ({', '.join(f'c.{n}' for n in names)})"
        f" IS DISTINCT FROM ({', '.join(f'c.old_{n}' for n in names)})",
        [keys, [masks[k] for k in keys], keys],
    )


def _save_deltas(cur: Cursor[Any], deltas: dict[str, int]) -> None:
    changed = {key: delta for key, delta in deltas.items() if delta}
    if changed:
        _run(cur,
            f"INSERT INTO {LEDGER} (key, delta) SELECT * FROM unnest({TEXTS}, {BIGINTS})",
            [list(changed), list(changed.values())],
        )
