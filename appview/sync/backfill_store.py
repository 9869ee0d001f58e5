"""The bulk path of backfill: the records of a batch of repositories go into PostgreSQL by COPY, in one
transaction with the batch's state.

A repository the index holds nothing of (the common case of a backfill) is COPYed straight into the tables, its
posts inserted from a staging table with their counts already right. The others are COPYed into temporary
staging tables and merged, one set-based statement per table, under the rules of live indexing
(``appview/indexing/apply.py``): a staged row (written at its repository's rev) is inserted, or replaces a stored
row with a lower rev, unless a tombstone of its URI is at or above that rev; a repository whose ``floor_rev`` is
already at or above the fetched rev is not written at all; once the whole repository is written, a row of it
still below its rev is one it no longer holds, and is deleted; then ``finish_resync`` raises each repository's
floor to its rev. Live commits that reach PostgreSQL before, between or after the transactions of a repository
therefore leave it at its newest rev, whatever the order (``appview/sync/resync.py``). A repository larger than
a batch is stored in parts, one transaction each, the deletes and the floor with the last.

Aggregates move as in a live batch, by what was really written: for a merged repository, the statements'
RETURNING, gathered in a temporary table of deltas (+1 for the key a new row counts under, -1 for the key of a
removed row, both for a replaced row); for a new one, the deltas its rows were staged with. Posts a merge inserts
are counted from the rows (``count_from_rows``); the hidden accounts' shares move for rows whose account
(``SHARED_COLUMNS``) is hidden. Every change happens under the locks of the actor rows that own the aggregates,
taken in DID order in one statement (a second round for owners found only in replaced or deleted rows), so live
workers may run at the same time.
"""

import logging
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson
import psycopg
from django.db import connection, transaction

from appview.indexing.apply import count_from_rows, finish_resync
from appview.indexing.collections import TABLE_BY_COLLECTION
from appview.indexing.events import RecordWrite, named_dids
from appview.indexing.services import is_transaction_rollback
from appview.indexing.statements import (
    ACTOR,
    ACTOR_COUNTS,
    ACTOR_DEFAULT_COLUMNS,
    ACTOR_DEFAULT_VALUES,
    BIGINTS,
    COUNTED_COLUMNS,
    GENERIC,
    GENERIC_COLUMNS,
    LEDGER,
    POST,
    POST_COUNTS,
    RECORD_COLUMNS,
    SHARE,
    SHARE_COUNTS,
    SHARED_COLUMNS,
    TEXTS,
    TOMBSTONE,
)
from appview.indexing.tables import TableSpec, post_author
from appview.models import HIDDEN_STATUSES, BackfillRepo, BackfillState, Post, Profile, RowCountDelta

logger = logging.getLogger(__name__)

BACKFILL = BackfillRepo._meta.db_table
BATCH_REPOS = "backfill_batch_repos"
DELTAS = "backfill_batch_deltas"
NEW_POSTS = "backfill_batch_new_posts"
# A staged repository's rows stay in memory up to this size per table, then spill to a temporary file.
SPOOL_MEMORY_BYTES = 1024 * 1024
_FLUSH_CHARS = 64 * 1024
COPY_CHUNK = 1024 * 1024
RECOUNT_CHUNK = 5000  # new posts counted from the rows per statement
DEADLOCK_RETRIES = 5
# The columns every staged row starts with, in RECORD_COLUMNS' order (checked below).
_BASE = ("uri", "did", "rkey", "cid", "rev", "seq", "created_at", "raw")
if tuple(name for name, _ in RECORD_COLUMNS) != _BASE or tuple(name for name, _ in GENERIC_COLUMNS) != (
        *_BASE, "collection"):
    raise RuntimeError("backfill_store's row layout no longer matches appview.indexing.statements")


@dataclass(frozen=True, slots=True)
class StageTable:
    """A target table of the index and the temporary table its rows are staged in."""

    spec: TableSpec | None  # None: the generic table
    target: str
    columns: tuple[tuple[str, str], ...]  # (name, PostgreSQL type), the staged rows' layout

    @property
    def name(self) -> str:
        return f"backfill_stage_{self.target}"

    @property
    def collection(self) -> str:
        return "" if self.spec is None else self.spec.collection


def _stage_tables() -> dict[str, StageTable]:
    tables = {collection: StageTable(spec, spec.table, RECORD_COLUMNS + spec.columns)
              for collection, spec in TABLE_BY_COLLECTION.items()}
    tables[""] = StageTable(None, GENERIC, GENERIC_COLUMNS)
    return tables


STAGES = _stage_tables()


def _escape(text: str) -> str:
    """A value in PostgreSQL's COPY text format. JSON and most text hold no tab, newline or backslash: four
    substring tests cost less than a translate."""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\t" in text:
        text = text.replace("\t", "\\t")
    if "\n" in text:
        text = text.replace("\n", "\\n")
    if "\r" in text:
        text = text.replace("\r", "\\r")
    return text


def _field(value: Any) -> str:
    if value is None:
        return "\\N"
    kind = type(value)
    if kind is str:
        return _escape(value)
    if kind is bool:
        return "t" if value else "f"
    if kind is int:
        return str(value)
    return _escape(orjson.dumps(value).decode())  # langs and other JSON values


class _Spool:
    """COPY rows of one staging table for one repository: in memory, then in a temporary file past
    SPOOL_MEMORY_BYTES."""

    __slots__ = ("_file", "_lines", "_size", "rows")

    def __init__(self) -> None:
        self._file = _spool_file()
        self._lines: list[str] = []
        self._size = 0
        self.rows = 0

    def add(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line)
        self.rows += 1
        if self._size >= _FLUSH_CHARS:
            self._flush()

    def _flush(self) -> None:
        if self._lines:
            self._file.write("".join(self._lines).encode())
            self._lines, self._size = [], 0

    def chunks(self) -> Iterator[bytes]:
        self._flush()
        self._file.seek(0)
        while chunk := self._file.read(COPY_CHUNK):
            yield chunk

    def close(self) -> None:
        self._file.close()

    def __getstate__(self) -> tuple[bytes, int]:
        """Its rows as bytes: a repository staged in a staging process reaches the writer through a pipe."""
        return b"".join(self.chunks()), self.rows

    def __setstate__(self, state: tuple[bytes, int]) -> None:
        content, self.rows = state
        self._file = _spool_file()
        self._file.write(content)
        self._lines, self._size = [], 0


def _spool_file() -> IO[bytes]:
    # Closed by _Spool.close(), once the batch holding the repository is stored.
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES, prefix="backfill-")


@dataclass(slots=True)
class StagedRepo:
    """A verified repository's records as COPY rows (all of them, or a part: a repository larger than a batch is
    stored a part at a time, ``final`` the last), and ``dids``: the repository's DID and every DID its records
    name (subjects, the authors of posts they point at). Each gets an actor row, and all are locked: they are
    the owners of every aggregate the records count under (a post's counts: its author, named by its URI; an
    actor's: the actor). ``deltas``: what the records add to the aggregates, (key, count, whose) -> rows, for
    a repository written by a plain COPY (``store_batch``)."""

    did: str
    rev: str
    final: bool = True
    records: int = 0
    records_before: int = 0  # records of the repository's earlier parts
    refused: int = 0  # records the record checks refused
    spools: dict[str, _Spool] = field(default_factory=dict)  # by StageTable key (collection, "" for generic)
    generic: dict[str, int] = field(default_factory=dict)  # records of the generic table, by collection
    dids: set[str] = field(default_factory=set)
    deltas: Counter[tuple[str, str, str | None]] = field(default_factory=Counter)

    def close(self) -> None:
        for spool in self.spools.values():
            spool.close()
        self.spools.clear()


class RepoStager:
    """Turns the record writes of one repository into a StagedRepo, or several parts (``next_part``). The caller
    has checked the syntax of the DID, collection and record key: the URI needs no escaping."""

    def __init__(self, did: str, rev: str) -> None:
        self.staged = StagedRepo(did=did, rev=rev, dids={did})

    def next_part(self) -> StagedRepo:
        """The records staged so far, as a part that is not the last; staging goes on in a new part."""
        part = self.staged
        part.final = False
        self.staged = StagedRepo(did=part.did, rev=part.rev, dids={part.did},
                                 records_before=part.records_before + part.records)
        return part

    def add(self, write: RecordWrite) -> None:
        staged = self.staged
        spec = write.spec
        if spec is None:
            key = ""
            tail = "\t" + _escape(write.collection)
            staged.generic[write.collection] = staged.generic.get(write.collection, 0) + 1
        else:
            key = write.collection
            values = write.values or ()
            tail = "".join(["\t" + _field(value) for value in values])
            counted = _COUNTED_VALUES.get(key)
            if counted is not None:
                _count(staged.deltas, write.did, values, counted)
        spool = staged.spools.get(key)
        if spool is None:
            spool = staged.spools[key] = _Spool()
        spool.add(f"{write.uri}\t{write.did}\t{write.rkey}\t{write.cid}\t{write.rev}\t{write.seq}\t"
                  f"{_field(write.created_at)}\t{_escape(write.raw)}{tail}\n")
        staged.dids.update(named_dids(write))
        staged.records += 1

    def finish(self) -> StagedRepo:
        return self.staged


def _count(deltas: Counter[tuple[str, str, str | None]], did: str, values: tuple[Any, ...],
           counted: list[tuple[int, str, bool, int | None]]) -> None:
    """Adds a new row's +1s to ``deltas``, as a live batch counts it (a post URI naming a handle counts nowhere)."""
    for key_at, count, is_post, whose_at in counted:
        key = did if key_at < 0 else values[key_at]
        if not key or (is_post and post_author(key) is None):
            continue
        whose = None if whose_at is None else did if whose_at < 0 else values[whose_at]
        deltas[key, count, whose] += 1


@dataclass(frozen=True, slots=True)
class StoredRepo:
    did: str
    rev: str
    records: int
    written: bool  # False: the index already held this repository at this rev or a later one
    final: bool  # the repository's last part: it is done


def store_batch(repos: list[StagedRepo], *, run: str) -> list[StoredRepo]:
    """Stores the staged repositories still claimed by ``run`` and marks them done, in one transaction (a
    deadlock with a live worker runs it again); returns what was stored. Repositories another run has taken
    meanwhile are left out. Raises on any other database error, and then nothing of the batch is stored."""
    insert_new = True
    for attempt in range(1, DEADLOCK_RETRIES + 1):
        try:
            with transaction.atomic():
                connection.ensure_connection()
                with psycopg.Cursor(connection.connection) as cur:
                    return _store(cur, repos, run=run, insert_new=insert_new)
        except Exception as exc:
            if isinstance(exc.__cause__ or exc, psycopg.errors.UniqueViolation) and insert_new:
                # A repository thought new had rows after all (a resync was half way through it): merge them all.
                logger.info("backfill batch: a new repository had stored records; merging the batch instead")
                insert_new = False
                continue
            if not is_transaction_rollback(exc) or attempt == DEADLOCK_RETRIES:
                raise
            logger.info("backfill batch rolled back by PostgreSQL (%s), storing it again", exc)
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def _store(cur: psycopg.Cursor[Any], repos: list[StagedRepo], *, run: str, insert_new: bool) -> list[StoredRepo]:
    """The batch's transaction. A repository the index has never held anything of (no commit applied, no
    resync, no deletion: its actor row's ``rev`` is NULL and its floor empty, read under its lock, which every
    writer of its records takes) cannot have stored rows or tombstones: with ``insert_new`` its rows are
    COPYed straight into their tables (its posts inserted with their counts), the cheapest write there is;
    the others' go through the staging tables and the merge."""
    _create_temporary_tables(cur)
    cur.execute(f"SELECT did FROM {BACKFILL} WHERE did = ANY({TEXTS}) AND claimed_by = %s AND state = %s"
                " ORDER BY did FOR UPDATE", [[repo.did for repo in repos], run, BackfillState.IN_PROGRESS])
    ours = {did for (did,) in cur.fetchall()}
    repos = [repo for repo in repos if repo.did in ours]
    if not repos:
        return []
    ledger: dict[str, int] = defaultdict(int)
    locked = set().union(*(repo.dids for repo in repos))
    cur.execute(
        f"WITH ins AS (INSERT INTO {ACTOR} (did, {ACTOR_DEFAULT_COLUMNS})"
        f" SELECT d, {ACTOR_DEFAULT_VALUES} FROM unnest({TEXTS}) AS d ORDER BY d"
        " ON CONFLICT (did) DO NOTHING RETURNING 1) SELECT count(*) FROM ins",
        [sorted(locked)],
    )
    ledger[RowCountDelta.ACTOR_KEY] += cur.fetchone()[0]  # type: ignore[index]
    states = _lock(cur, locked)
    floors = {did: floor for did, (floor, _) in states.items()}
    written = [repo for repo in repos if repo.rev > floors[repo.did]]
    if written:
        new = {repo.did for repo in written if insert_new and states[repo.did] == ("", None)}
        staged = _copy_rows(cur, written, new)
        for key, table in STAGES.items():
            for collection, delta in _merge(cur, table, upsert=key in staged).items():
                ledger[collection] += delta
        if new:
            for collection, delta in _insert_new(cur, [repo for repo in written if repo.did in new]).items():
                ledger[collection] += delta
        late = _owners_of_removed_rows(cur) - locked
        if late:
            _lock(cur, late)
        _save_aggregates(cur)
        _copy_profiles(cur)
        with cur.connection.pipeline():
            for repo in written:
                if repo.final:
                    finish_resync(cur, repo.did, repo.rev)
    changed = {key: delta for key, delta in ledger.items() if delta}
    if changed:
        cur.execute(f"INSERT INTO {LEDGER} (key, delta) SELECT * FROM unnest({TEXTS}, {BIGINTS})",
                    [list(changed), list(changed.values())])
    done = [repo for repo in repos if repo.final]
    cur.execute(
        f"UPDATE {BACKFILL} b SET state = %s, rev = v.rev, records = v.records, due_at = NULL, claimed_by = '',"
        " error = '', tries = 0, finished_at = now()"
        f" FROM unnest({TEXTS}, {TEXTS}, {BIGINTS}) AS v(did, rev, records) WHERE b.did = v.did",
        [BackfillState.DONE, [repo.did for repo in done], [repo.rev for repo in done],
         [repo.records_before + repo.records for repo in done]],
    )
    return [StoredRepo(did=repo.did, rev=repo.rev, records=repo.records, written=repo.rev > floors[repo.did],
                       final=repo.final) for repo in repos]


def _create_temporary_tables(cur: psycopg.Cursor[Any]) -> None:
    """The session's staging tables (emptied at every commit); created once per connection."""
    cur.execute(f"SELECT to_regclass('pg_temp.{DELTAS}') IS NOT NULL")
    if cur.fetchone()[0]:  # type: ignore[index]
        return
    statements = [f"CREATE TEMPORARY TABLE {table.name} ({', '.join(f'{n} {t}' for n, t in table.columns)})"
                  " ON COMMIT DELETE ROWS" for table in STAGES.values()]
    statements += [
        # ``final``: the repository's last part (or whole): rows it no longer holds are deleted, its floor raised.
        f"CREATE TEMPORARY TABLE {BATCH_REPOS} (did text PRIMARY KEY, rev text, new boolean, final boolean)"
        " ON COMMIT DELETE ROWS",
        f"CREATE TEMPORARY TABLE {DELTAS} (key text, count text, sign integer, whose text) ON COMMIT DELETE ROWS",
        # Posts the batch inserted; ``counted``: with their counts already (else counted from the rows at the end).
        f"CREATE TEMPORARY TABLE {NEW_POSTS} (uri text, counted boolean) ON COMMIT DELETE ROWS",
    ]
    for statement in statements:
        cur.execute(statement)


def _lock(cur: psycopg.Cursor[Any], dids: set[str]) -> dict[str, tuple[str, str | None]]:
    """Locks the actor rows in DID order, as a live batch does; returns their (floor_rev, rev)."""
    cur.execute(f"SELECT did, floor_rev, rev FROM {ACTOR} WHERE did = ANY({TEXTS}) ORDER BY did"
                " FOR NO KEY UPDATE", [list(dids)])
    return {did: (floor, rev) for did, floor, rev in cur.fetchall()}


def _copy_rows(cur: psycopg.Cursor[Any], repos: list[StagedRepo], new: set[str]) -> set[str]:
    """COPYs the repositories and the rows to merge into the staging tables (the posts of ``new`` repositories
    too: they are inserted from there); returns the keys of the tables staged for the merge."""
    with cur.copy(f"COPY {BATCH_REPOS} (did, rev, new, final) FROM STDIN") as copy:
        for repo in repos:
            copy.write_row((repo.did, repo.rev, repo.did in new, repo.final))
    staged = set()
    for key, table in STAGES.items():
        spools = [repo.spools[key] for repo in repos if key in repo.spools and (repo.did not in new or key == POST_KEY)]
        if not spools:
            continue
        if any(repo.did not in new for repo in repos if key in repo.spools):
            staged.add(key)
        with cur.copy(f"COPY {table.name} ({', '.join(name for name, _ in table.columns)}) FROM STDIN") as copy:
            for spool in spools:
                for chunk in spool.chunks():
                    copy.write(chunk)
    return staged


def _merge(cur: psycopg.Cursor[Any], table: StageTable, *, upsert: bool) -> dict[str, int]:
    """Upserts the table's staged rows (``upsert``: it has some) and deletes the rows of the batch's
    repositories that they no longer hold; returns the change in rows per collection."""
    deltas: dict[str, int] = defaultdict(int)
    for sql in (_UPSERTS[table.collection], _DELETES[table.collection])[0 if upsert else 1:]:
        cur.execute(sql)
        for collection, delta in cur.fetchall():
            deltas[collection or table.collection] += delta
    return deltas


def _counted(collection: str) -> list[tuple[str, str, str | None]]:
    """(column, count, whose) for each aggregate a row of ``collection`` counts under: ``whose`` names the
    account whose hidden status puts the row in the count's hidden share ("did" for the writer, a column, or
    None when the count has no share)."""
    shared = {(column, share): whose for column, share, whose in SHARED_COLUMNS.get(collection, ())}
    return [(column, count, None if (whose := shared.get((column, count))) is None
             else "did" if whose == "writer" else whose)
            for column, count, _ in COUNTED_COLUMNS.get(collection, ())]


def _needed_columns(collection: str) -> list[str]:
    """The columns whose values the aggregates of a row of ``collection`` depend on."""
    columns: dict[str, None] = {}
    for column, _, whose in _counted(collection):
        columns[column] = None
        if whose is not None:
            columns[whose] = None
    return list(columns)


def _delta_rows(collection: str, source: str, sign: int, prefix: str) -> list[str]:
    """SELECTs of the delta rows (key, count, sign, whose) of ``source``'s rows, whose column values are named
    ``<prefix><column>``."""
    return [f"SELECT {prefix}{column}, '{count}', {sign}, {'NULL' if whose is None else prefix + whose}"
            f" FROM {source} WHERE {prefix}{column} IS NOT NULL"
            for column, count, whose in _counted(collection)]


def _upsert_sql(table: StageTable) -> str:
    names = [name for name, _ in table.columns]
    fixed_names = fixed_values = ""
    if table.target == POST:
        fixed_names = ", " + ", ".join(POST_COUNTS)
        fixed_values = ", 0" * len(POST_COUNTS)
    updated = ", ".join(f"{name} = excluded.{name}" for name in names if name not in ("uri", "did", "rkey"))
    needed = _needed_columns(table.collection)
    returned = ["t.uri", "t.xmax = 0 AS inserted", "t.collection" if table.spec is None else "NULL AS collection"]
    returned += [f"t.{column} AS n_{column}" for column in needed]
    # A replaced row's old values, read with the statement's snapshot, which does not see its own writes (its
    # did is the URI's, which never changes).
    for column in needed:
        old = "t.did" if column == "did" else f"(SELECT o.{column} FROM {table.target} o WHERE o.uri = t.uri)"
        returned.append(f"CASE WHEN t.xmax = 0 THEN NULL ELSE {old} END AS o_{column}")
    deltas = [*_delta_rows(table.collection, "w", 1, "n_"), *_delta_rows(table.collection, "w", -1, "o_")]
    parts = [
        f"WITH w AS (INSERT INTO {table.target} AS t ({', '.join(names)}{fixed_names})"
        f" SELECT {', '.join(f's.{name}' for name in names)}{fixed_values} FROM {table.name} s"
        f" JOIN {BATCH_REPOS} r ON r.did = s.did AND NOT r.new LEFT JOIN {TOMBSTONE} tb ON tb.uri = s.uri"
        " WHERE tb.rev IS NULL OR s.rev > tb.rev"
        f" ON CONFLICT (uri) DO UPDATE SET {updated}, indexed_at = now() WHERE excluded.rev > t.rev"
        f" RETURNING {', '.join(returned)})",
    ]
    if deltas:
        parts.append(f", d AS (INSERT INTO {DELTAS} (key, count, sign, whose) {' UNION ALL '.join(deltas)})")
    if table.target == POST:
        parts.append(f", n AS (INSERT INTO {NEW_POSTS} (uri, counted) SELECT uri, false FROM w WHERE inserted)")
    parts.append(" SELECT collection, count(*) FILTER (WHERE inserted) FROM w GROUP BY collection")
    return "".join(parts)


def _delete_sql(table: StageTable) -> str:
    needed = _needed_columns(table.collection)
    returned = ["t.collection" if table.spec is None else "NULL AS collection",
                *(f"t.{column} AS o_{column}" for column in needed)]
    deltas = _delta_rows(table.collection, "w", -1, "o_")
    parts = [
        f"WITH w AS (DELETE FROM {table.target} t USING {BATCH_REPOS} r"
        # Once every record of the repository has been written at its rev (or kept at a newer one), a row still
        # below that rev is one the repository no longer holds.
        " WHERE t.did = r.did AND r.final AND NOT r.new AND t.rev < r.rev"
        f" RETURNING {', '.join(returned)})",
    ]
    if deltas:
        parts.append(f", d AS (INSERT INTO {DELTAS} (key, count, sign, whose) {' UNION ALL '.join(deltas)})")
    parts.append(" SELECT collection, -count(*) FROM w GROUP BY collection")
    return "".join(parts)


def _insert_new(cur: psycopg.Cursor[Any], repos: list[StagedRepo]) -> dict[str, int]:
    """Writes the rows of repositories the index holds nothing of: a COPY straight into each table, then their
    posts from the staging table with their counts (the rows naming them stored before and by this batch),
    then the deltas of what they count under (worked out while they were staged). Returns the new rows per
    collection."""
    added: dict[str, int] = defaultdict(int)
    for key, table in STAGES.items():
        spools = [repo.spools[key] for repo in repos if key in repo.spools]
        if not spools or key == POST_KEY:
            continue
        with cur.copy(f"COPY {table.target} ({', '.join(name for name, _ in table.columns)}) FROM STDIN") as copy:
            for spool in spools:
                for chunk in spool.chunks():
                    copy.write(chunk)
        if table.spec is not None:
            added[key] += sum(spool.rows for spool in spools)
    for repo in repos:
        for collection, count in repo.generic.items():
            added[collection] += count
    cur.execute(_INSERT_NEW_POSTS)
    added[POST_KEY] += cur.rowcount
    with cur.copy(f"COPY {DELTAS} (key, count, sign, whose) FROM STDIN") as copy:
        for repo in repos:
            for (key, count, whose), rows in repo.deltas.items():
                copy.write_row((key, count, rows, whose))
    return added


def _insert_new_posts_sql() -> str:
    table = STAGES[POST_KEY]
    names = [name for name, _ in table.columns]
    counted = []
    for count, (collection, column) in POST_COUNTS.items():
        stored = f"(SELECT count(*) FROM {TABLE_BY_COLLECTION[collection].table} c WHERE c.{column} = s.uri)"
        # Posts of this insert do not see each other: replies and quotes among them are counted from staging.
        counted.append(f"{stored} + COALESCE(b_{count}.n, 0)" if collection == POST_KEY else stored)
    among = "".join(
        f" LEFT JOIN (SELECT x.{column} AS uri, count(*) AS n FROM {table.name} x JOIN {BATCH_REPOS} y"
        f" ON y.did = x.did AND y.new WHERE x.{column} IS NOT NULL GROUP BY 1) b_{count} ON b_{count}.uri = s.uri"
        for count, (collection, column) in POST_COUNTS.items() if collection == POST_KEY)
    return (
        f"WITH w AS (INSERT INTO {table.target} ({', '.join(names)}, {', '.join(POST_COUNTS)})"
        f" SELECT {', '.join(f's.{name}' for name in names)}, {', '.join(counted)}"
        f" FROM {table.name} s JOIN {BATCH_REPOS} r ON r.did = s.did AND r.new{among} RETURNING uri)"
        f" INSERT INTO {NEW_POSTS} (uri, counted) SELECT uri, true FROM w"
    )


def _counted_values() -> dict[str, list[tuple[int, str, bool, int | None]]]:
    """``_counted`` as positions in a write's values: (position of the key, -1 for the row's DID; count; whether
    the key is a post URI; position of the account whose hidden status puts the row in the count's share, -1 for
    the row's DID, None when the count has no share)."""
    counted = {}
    for collection in COUNTED_COLUMNS:
        positions = {name: index for index, name in enumerate(TABLE_BY_COLLECTION[collection].fields)}
        positions["did"] = -1
        counted[collection] = [(positions[column], count, count in POST_COUNTS,
                                None if whose is None else positions[whose])
                               for column, count, whose in _counted(collection)]
    return counted


POST_KEY = Post.collection
_COUNTED_VALUES = _counted_values()
_UPSERTS = {table.collection: _upsert_sql(table) for table in STAGES.values()}
_INSERT_NEW_POSTS = _insert_new_posts_sql()
_DELETES = {table.collection: _delete_sql(table) for table in STAGES.values()}


def _owners_of_removed_rows(cur: psycopg.Cursor[Any]) -> set[str]:
    """The owners of the aggregates that replaced or deleted rows counted under (known only now)."""
    cur.execute(f"SELECT DISTINCT key, count FROM {DELTAS} WHERE sign < 0")
    owners = set()
    for key, count in cur.fetchall():
        owner = post_author(key) if count in POST_COUNTS else key
        if owner is not None:
            owners.add(owner)
    return owners


def _sums(counts: list[str] | tuple[str, ...]) -> str:
    return ", ".join(f"COALESCE(sum(sign) FILTER (WHERE count = '{count}'), 0) AS {count}" for count in counts)


def _save_aggregates(cur: psycopg.Cursor[Any]) -> None:
    """Adds the deltas to the counts of posts that existed before the batch and of actors, counts the posts the
    batch inserted from the rows, and moves the hidden shares."""
    post_counts, actor_counts = list(POST_COUNTS), list(ACTOR_COUNTS)
    for table, key, counts, exclude in (
            (POST, "uri", post_counts, f" AND NOT EXISTS (SELECT 1 FROM {NEW_POSTS} n WHERE n.uri = t.uri)"),
            (ACTOR, "did", actor_counts, "")):
        cur.execute(
            f"UPDATE {table} t SET {', '.join(f'{count} = t.{count} + v.{count}' for count in counts)}"
            f" FROM (SELECT key, {_sums(counts)} FROM {DELTAS}"
            f" WHERE count = ANY({TEXTS}) GROUP BY key) v WHERE t.{key} = v.key{exclude}"
            f" AND ({', '.join(f'v.{count}' for count in counts)}) <> ({', '.join('0' for _ in counts)})",
            [counts],
        )
    cur.execute(f"SELECT uri FROM {NEW_POSTS} WHERE NOT counted ORDER BY uri")
    new_posts = [uri for (uri,) in cur.fetchall()]
    for start in range(0, len(new_posts), RECOUNT_CHUNK):
        count_from_rows(cur, POST, new_posts[start:start + RECOUNT_CHUNK])
    shares = list(SHARE_COUNTS)
    cur.execute(
        f"INSERT INTO {SHARE} AS t (key, {', '.join(shares)})"
        f" SELECT d.key, {_sums(shares)} FROM {DELTAS} d JOIN {ACTOR} a ON a.did = d.whose"
        f" WHERE a.status = ANY({TEXTS}) AND d.count = ANY({TEXTS}) GROUP BY d.key ORDER BY d.key"
        f" ON CONFLICT (key) DO UPDATE SET {', '.join(f'{count} = t.{count} + excluded.{count}' for count in shares)}",
        [list(HIDDEN_STATUSES), shares],
    )


def _copy_profiles(cur: psycopg.Cursor[Any]) -> None:
    """Each repository's profile (or its absence) into its actor row, as a live batch copies a changed one."""
    profile = TABLE_BY_COLLECTION[Profile.collection].table
    cur.execute(
        f"UPDATE {ACTOR} a SET display_name = p.display_name, description = p.description, updated_at = now()"
        f" FROM (SELECT r.did, s.display_name, s.description FROM {BATCH_REPOS} r"
        f" LEFT JOIN {profile} s ON s.uri = 'at://' || r.did || '/{Profile.collection}/self' WHERE r.final) p"
        " WHERE a.did = p.did"
        " AND (a.display_name IS DISTINCT FROM p.display_name OR a.description IS DISTINCT FROM p.description)"
    )
