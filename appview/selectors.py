"""Reads about the index: exact record counts per collection, actors by status, the durable cursor
and the cluster:metrics counters (SPEC section 4, ``index_stats``; the dashboard reads them too)."""

from django.db import connection
from django.db.models import Count, Sum

from appview.models import RECORD_MODELS, Actor, ActorStatus, RowCountDelta
from pipeline import redis_store
from pipeline.cursor import read_durable_cursor


def record_counts() -> dict[str, int]:
    """Stored records per collection NSID: every table's collection (0 when empty), and the collections
    of the generic table. Exact, from the ledger of row-count changes (a small table), never a COUNT(*)
    over the record tables."""
    counts = {model.collection: 0 for model in RECORD_MODELS}
    rows = (RowCountDelta.objects.exclude(key=RowCountDelta.ACTOR_KEY).values_list("key")
            .annotate(total=Sum("delta")))
    for key, total in rows:
        if total or key in counts:
            counts[key] = int(total)
    return counts


def actor_counts() -> dict[str, int]:
    """``total`` and the number of actors in each status (``active`` included, every status listed).

    The total comes from the ledger; the inactive statuses through the partial index on them, which
    holds only the few inactive actors; active is the rest."""
    total = RowCountDelta.objects.filter(key=RowCountDelta.ACTOR_KEY).aggregate(n=Sum("delta"))["n"] or 0
    by_status = dict(
        Actor.objects.exclude(status=ActorStatus.ACTIVE).values_list("status").annotate(n=Count("*"))
    )
    counts = {"total": int(total)}
    counts["active"] = int(total) - sum(by_status.values())
    for status in ActorStatus.values:
        if status != ActorStatus.ACTIVE:
            counts[status] = by_status.pop(status, 0)
    counts.update(sorted(by_status.items()))
    return counts


def estimated_rows(table: str) -> int:
    """PostgreSQL's estimate of a table's row count (from its statistics: instant, roughly right)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [table])
        row = cursor.fetchone()
    return max(int(row[0]), 0) if row else 0


def estimated_actors_needing_resync() -> int:
    """Actors marked ``needs_resync``, as PostgreSQL's statistics of the actor table estimate them (as fresh
    as its last ANALYZE): no index holds them, and counting would read the whole table."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT greatest(c.reltuples, 0) * coalesce((SELECT m.freq FROM unnest("
            "  s.most_common_vals::text::boolean[], s.most_common_freqs) AS m(val, freq) WHERE m.val), 0)"
            " FROM pg_class c LEFT JOIN pg_stats s"
            "  ON s.schemaname = current_schema() AND s.tablename = c.relname AND s.attname = 'needs_resync'"
            " WHERE c.oid = %s::regclass",
            [Actor._meta.db_table],
        )
        row = cursor.fetchone()
    return round(row[0]) if row else 0


def cluster_metrics() -> dict[str, int]:
    raw = redis_store.connect().hgetall(redis_store.cluster_metrics())
    metrics: dict[str, int] = {}
    for name, value in raw.items():
        try:
            metrics[name.decode()] = int(value)
        except ValueError:
            continue
    return dict(sorted(metrics.items()))


def index_stats() -> dict[str, object]:
    """The object ``index_stats --json`` prints."""
    return {
        "records": record_counts(),
        "actors": actor_counts(),
        "cursor": read_durable_cursor(),
        "metrics": cluster_metrics(),
    }
