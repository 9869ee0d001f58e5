"""A full snapshot of what the pipeline built (every table of ``appview.models`` and ``cluster:metrics``),
and a readable difference between two snapshots.

Columns that hold the wall-clock time of a write (``indexed_at``, ``first_seen_at``, ``updated_at``,
``deleted_at``, and ``sort_at``, which falls back to ``indexed_at``) differ between any two runs and are left
out; every other column is compared. Ledger tables (``LEDGERS``) are compared by their sum per key.
"""

from dataclasses import dataclass, field
from typing import Any

import redis
from django.apps import apps

from harness.servers import connect
from pipeline import redis_store

WALL_CLOCK_COLUMNS = frozenset({"indexed_at", "first_seen_at", "updated_at", "deleted_at", "sort_at", "missing_since",
                                "resync_after", "handle_checked_at"})
# Ledgers whose rows depend on how events were batched and when they were folded; what they mean is the
# sum of the delta column per key, which is what is compared.
LEDGERS = {"RowCountDelta": ("key", "delta")}
# Counters whose rows back at zero mean the same as no row (the worker deletes them from time to time).
ZERO_ROWS_LEFT_OUT = {"HiddenShare": " WHERE (like_count, repost_count, reply_count, quote_count, followers_count,"
                                     " follows_count) <> (0, 0, 0, 0, 0, 0)"}
# The counters SPEC section 3 promises; workers may add more (retries, claims) that faults change.
METRIC_FIELDS = ("totalEvents", "#commit", "#identity", "#account", "#sync", "errors")


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]
    primary_key: str
    rows: dict[Any, tuple[Any, ...]]  # primary key -> row, columns in ``columns`` order


@dataclass(frozen=True)
class Snapshot:
    tables: dict[str, Table]
    metrics: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {name: len(table.rows) for name, table in self.tables.items()}


def _queries() -> list[tuple[str, tuple[str, ...], str, str]]:
    """(table, columns, primary key, SELECT) for every appview table."""
    queries = []
    for model in apps.get_app_config("appview").get_models():
        table = model._meta.db_table
        if model.__name__ in LEDGERS:
            key, delta = LEDGERS[model.__name__]
            sql = (f'SELECT "{key}", sum("{delta}") FROM "{table}" GROUP BY "{key}" HAVING sum("{delta}") <> 0 '
                   f'ORDER BY "{key}"')
            queries.append((table, (key, delta), key, sql))
            continue
        columns = tuple(f.column for f in model._meta.concrete_fields if f.column not in WALL_CLOCK_COLUMNS)
        primary_key = model._meta.pk.column
        column_list = ", ".join(f'"{column}"' for column in columns)
        where = ZERO_ROWS_LEFT_OUT.get(model.__name__, "")
        queries.append((table, columns, primary_key,
                        f'SELECT {column_list} FROM "{table}"{where} ORDER BY "{primary_key}"'))
    return sorted(queries)


def read_metrics(client: redis.Redis) -> dict[str, int]:
    raw = client.hgetall(redis_store.cluster_metrics())
    return {key.decode(): int(value) for key, value in raw.items()}


def take_snapshot(database_url: str, redis_client: redis.Redis | None = None) -> Snapshot:
    """Reads every appview table of ``database_url`` (and ``cluster:metrics`` when a client is given)."""
    tables = {}
    with connect(database_url) as conn:
        for name, columns, primary_key, sql in _queries():
            rows = conn.execute(sql).fetchall()
            index = columns.index(primary_key)
            tables[name] = Table(name, columns, primary_key, {row[index]: tuple(row) for row in rows})
    metrics = read_metrics(redis_client) if redis_client is not None else {}
    return Snapshot(tables=tables, metrics=metrics)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 160 else text[:157] + "..."


def _table_diff(expected: Table, actual: Table, limit: int) -> list[str]:
    missing = [key for key in expected.rows if key not in actual.rows]
    extra = [key for key in actual.rows if key not in expected.rows]
    changed = [key for key in expected.rows if key in actual.rows and expected.rows[key] != actual.rows[key]]
    if not (missing or extra or changed):
        return []
    lines = [f"table {expected.name}: {len(expected.rows)} rows expected, {len(actual.rows)} found; "
             f"{len(missing)} missing, {len(extra)} unexpected, {len(changed)} different"]
    lines += [f"  missing    {_short(key)}" for key in missing[:limit]]
    lines += [f"  unexpected {_short(key)}" for key in extra[:limit]]
    for key in changed[:limit]:
        pairs = zip(expected.columns, expected.rows[key], actual.rows[key], strict=True)
        columns = [f"{column}: {_short(want)} != {_short(got)}" for column, want, got in pairs if want != got]
        lines.append(f"  different  {_short(key)}: " + "; ".join(columns))
    return lines


def diff(expected: Snapshot, actual: Snapshot, *, metric_fields: tuple[str, ...] | None = METRIC_FIELDS,
         limit: int = 10) -> str:
    """What differs between two snapshots ("" when nothing does): tables row by row, then the metric
    fields named (None: none, which is what a Redis that lost its data allows)."""
    lines: list[str] = []
    for name, table in expected.tables.items():
        lines += _table_diff(table, actual.tables[name], limit)
    for name in metric_fields or ():
        want, got = expected.metrics.get(name, 0), actual.metrics.get(name, 0)
        if want != got:
            lines.append(f"cluster:metrics {name}: expected {want}, found {got}")
    return "\n".join(lines)
