"""The durable cursor (SPEC sections 3 and 7): the relay seq at or below which every event's effects are
committed in PostgreSQL, a low-water mark. Workers advance it; run_firehose resumes from it when Redis has
lost ``firehose:cursor``. This module is its one reader and its one writer."""

from django.db import connection, transaction

from pipeline.models import IndexCursor

NAME = "firehose"
TABLE = IndexCursor._meta.db_table


def read_durable_cursor() -> int | None:
    """The committed low-water mark, or None when nothing is committed yet (a seq of 0 is the row's
    default, not a position on the relay)."""
    seq = IndexCursor.objects.filter(name=NAME).values_list("seq", flat=True).first()
    return seq or None


def advance_durable_cursor(*, seq: int) -> int:
    """Moves the durable cursor up to ``seq`` (never down), creating its row when missing; returns the
    cursor's value after the call."""
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(
            f"INSERT INTO {TABLE} AS c (name, seq) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, updated_at = now() WHERE excluded.seq > c.seq",
            [NAME, seq],
        )
        cur.execute(f"SELECT seq FROM {TABLE} WHERE name = %s", [NAME])
        return cur.fetchone()[0]
