"""The SQL of a batch's writes that depends on the schema, built from the models' ``_meta`` (table and
column names, types, defaults) and cached per statement: the upsert of each record table, and what the
aggregates count. List parameters are sent as PostgreSQL arrays in binary (``%b``), which costs about what
one joined string did and needs no splitting."""

from typing import Any

from django.db import connection
from django.db.models import Model

from appview.indexing.tables import TableSpec
from appview.models import (
    MODEL_BY_COLLECTION,
    Actor,
    Follow,
    GenericRecord,
    HiddenShare,
    Like,
    Post,
    RecordTombstone,
    RepoRecord,
    Repost,
    RowCountDelta,
)

TEXTS = "%b::text[]"
BIGINTS = "%b::bigint[]"
BOOLS = "%b::boolean[]"

ACTOR = Actor._meta.db_table
POST = Post._meta.db_table
TOMBSTONE = RecordTombstone._meta.db_table
GENERIC = GenericRecord._meta.db_table
LEDGER = RowCountDelta._meta.db_table

# Post counts: (count column, collection counted, column of that table pointing at the post).
POST_COUNTS = {
    "like_count": (Like.collection, "subject_uri"),
    "repost_count": (Repost.collection, "subject_uri"),
    "reply_count": (Post.collection, "reply_parent_uri"),
    "quote_count": (Post.collection, "quote_uri"),
}
# Actor counts: (count column, collection counted, column of that table naming the actor).
ACTOR_COUNTS = {
    "followers_count": (Follow.collection, "subject_did"),
    "follows_count": (Follow.collection, "did"),
    "posts_count": (Post.collection, "did"),
}
# For each counted collection, its columns holding a key of an aggregate: (column, count, True when the key
# is a post URI, False when it is an actor DID). A row counts once under each of its keys.
def _counted_columns_by_collection() -> dict[str, tuple[tuple[str, str, bool], ...]]:
    counted: dict[str, tuple[tuple[str, str, bool], ...]] = {}
    for counts, is_post in ((POST_COUNTS, True), (ACTOR_COUNTS, False)):
        for count, (collection, column) in counts.items():
            counted[collection] = (*counted.get(collection, ()), (column, count, is_post))
    return counted


COUNTED_COLUMNS = _counted_columns_by_collection()

SHARE = HiddenShare._meta.db_table
SHARE_COUNTS = ("like_count", "repost_count", "reply_count", "quote_count", "followers_count", "follows_count")
# For each collection counted in hidden shares: (column holding the share's key, share column, whose hidden
# status puts the row in that share: "writer", the row's author, or the column naming the other account).
SHARED_COLUMNS: dict[str, tuple[tuple[str, str, str], ...]] = {
    Like.collection: (("subject_uri", "like_count", "writer"),),
    Repost.collection: (("subject_uri", "repost_count", "writer"),),
    Post.collection: (("reply_parent_uri", "reply_count", "writer"), ("quote_uri", "quote_count", "writer")),
    Follow.collection: (("subject_did", "followers_count", "writer"), ("did", "follows_count", "subject_did")),
}


def _shares_of_accounts() -> str:
    """Moves into (sign +1) or out of (-1) the hidden shares everything that counts there because of the
    accounts given (DIDs and signs as two arrays): what they wrote, and follows of them."""
    parts = []
    for collection, entries in SHARED_COLUMNS.items():
        table = MODEL_BY_COLLECTION[collection]._meta.db_table
        for column, share, whose in entries:
            account = "did" if whose == "writer" else whose
            counts = ", ".join("v.sign" if name == share else "0" for name in SHARE_COUNTS)
            parts.append(f"SELECT x.{column} AS key, {counts} FROM {table} x JOIN v ON x.{account} = v.did"
                         f" WHERE x.{column} IS NOT NULL")
    sums = ", ".join(f"sum(s.c{index})" for index in range(len(SHARE_COUNTS)))
    names = ", ".join(f"c{index}" for index in range(len(SHARE_COUNTS)))
    added = ", ".join(f"{name} = t.{name} + excluded.{name}" for name in SHARE_COUNTS)
    return (
        f"WITH v AS (SELECT * FROM unnest({TEXTS}, {BIGINTS}) AS v(did, sign))"
        f" INSERT INTO {SHARE} AS t (key, {', '.join(SHARE_COUNTS)})"
        f" SELECT s.key, {sums} FROM ({' UNION ALL '.join(parts)}) AS s(key, {names}) GROUP BY s.key ORDER BY s.key"
        f" ON CONFLICT (key) DO UPDATE SET {added}"
    )


SHARES_OF_ACCOUNTS = _shares_of_accounts()


def counted_columns(collection: str) -> list[str]:
    return [column for column, _, _ in COUNTED_COLUMNS.get(collection, ())]


def _written_by_batch(model: type[Model]) -> tuple[tuple[str, str], ...]:
    """(column, PostgreSQL type) of the fields a write fills: all but those PostgreSQL fills itself."""
    return tuple((f.column, f.db_type(connection)) for f in model._meta.fields
                 if not f.has_db_default() and not f.generated)


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "'{" + ",".join(f'"{item}"' for item in value) + "}'"
    return "'" + str(value).replace("'", "''") + "'"


# Columns every record table shares; the generic table adds the collection.
RECORD_COLUMNS = _written_by_batch(RepoRecord)
GENERIC_COLUMNS = _written_by_batch(GenericRecord)
# An actor row inserted by a batch holds only its DID and the model's defaults.
_ACTOR_DEFAULTS = {f.column: f.get_default() for f in Actor._meta.fields if f.has_default()}
ACTOR_DEFAULT_COLUMNS = ", ".join(_ACTOR_DEFAULTS)
ACTOR_DEFAULT_VALUES = ", ".join(_literal(value) for value in _ACTOR_DEFAULTS.values())
_UPSERT_SQL: dict[str, str] = {}


def upsert_sql(spec: TableSpec | None) -> str:
    """INSERT ... ON CONFLICT for one table. The generic table returns the count of new rows per
    collection; a record table returns the count of new rows and of rows written, and, when its rows
    count in aggregates, one row per row written: whether it is new, its counted values, and for a
    replaced row the values it had (read with the statement's snapshot, which does not see the
    statement's own writes). The rows arrive as one JSON array of objects: orjson writes it in C and
    json_to_recordset reads it in C, where arrays would be dumped value by value in Python."""
    key = "" if spec is None else spec.collection
    if key in _UPSERT_SQL:
        return _UPSERT_SQL[key]
    table = GENERIC if spec is None else spec.table
    columns = GENERIC_COLUMNS if spec is None else RECORD_COLUMNS + spec.columns
    names = [name for name, _ in columns]
    fixed_names, fixed_values = "", ""
    if table == POST:
        fixed_names = ", " + ", ".join(POST_COUNTS)
        fixed_values = ", 0" * len(POST_COUNTS)
    updated = ", ".join(f"{name} = excluded.{name}" for name in names if name not in ("uri", "did", "rkey"))
    counted = [] if spec is None else counted_columns(spec.collection)
    if spec is None:
        returning = "t.collection, t.xmax = 0 AS inserted"
        summary = "SELECT collection, count(*) FILTER (WHERE inserted) FROM w GROUP BY collection"
    elif counted:
        old = "".join(
            f", CASE WHEN t.xmax = 0 THEN NULL ELSE (SELECT o.{c} FROM {table} o WHERE o.uri = t.uri) END"
            for c in counted
        )
        returning = f"t.uri, t.xmax = 0 AS inserted, {', '.join(f't.{c}' for c in counted)}{old}"
        summary = "SELECT * FROM w"
    else:
        returning = "t.xmax = 0 AS inserted"
        summary = "SELECT count(*) FILTER (WHERE inserted), count(*) FROM w"
    definition = ", ".join(f"{name} {kind}" for name, kind in columns)
    sql = (
        f"WITH w AS (INSERT INTO {table} AS t ({', '.join(names)}{fixed_names})"
        f" SELECT {', '.join(names)}{fixed_values} FROM json_to_recordset(%s::json) AS v({definition})"
        f" ON CONFLICT (uri) DO UPDATE SET {updated}, indexed_at = now() WHERE excluded.rev > t.rev"
        f" RETURNING {returning}) {summary}"
    )
    _UPSERT_SQL[key] = sql
    return sql
