"""Reads about the index: exact record counts per collection, actors by status, the durable cursor
and the cluster:metrics counters (SPEC section 4, ``index_stats``; the dashboard reads them too)."""

from django.db import connection
from django.db.models import Count, Sum

from appview.models import (
    RECORD_MODELS,
    Actor,
    ActorStatus,
    BackfillRepo,
    BackfillState,
    RepoSyncStatus,
    RowCountDelta,
)
from pipeline import redis_store
from pipeline.cursor import current_durable_cursor


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


def repo_sync_counts() -> dict[str, int]:
    """Repositories not in sync, by state (``desynchronized``, ``resyncing``, ``error``: each listed), and
    ``queued``: those waiting for a resync. Read through the partial indexes that hold only such rows."""
    by_status = dict(
        Actor.objects.exclude(sync_status=RepoSyncStatus.ACTIVE).values_list("sync_status").annotate(n=Count("*"))
    )
    counts = {status: by_status.get(status, 0) for status in RepoSyncStatus.values if status != RepoSyncStatus.ACTIVE}
    counts["queued"] = Actor.objects.filter(resync_after__isnull=False).count()
    return counts


def backfill_queue() -> dict[str, int]:
    """Repositories of the backfill queue not done yet, by state (``pending``, ``in_progress``, ``failed``: each
    listed), and ``waiting``: those a run will load (all but the failed ones out of tries). Read through the
    partial indexes that hold only such rows."""
    by_state = dict(BackfillRepo.objects.exclude(state=BackfillState.DONE).values_list("state").annotate(n=Count("*")))
    counts = {state: by_state.get(state, 0) for state in BackfillState.values if state != BackfillState.DONE}
    counts["waiting"] = BackfillRepo.objects.filter(due_at__isnull=False).count()
    return counts


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
        "repos": repo_sync_counts(),
        "cursor": current_durable_cursor(),
        "metrics": cluster_metrics(),
    }
