"""Reads of PostgreSQL that run_firehose needs."""

from appview.models import IndexCursor

DURABLE_CURSOR_NAME = "firehose"


def durable_cursor() -> int | None:
    """The low-water mark the workers committed (every event at or below it is indexed), or None when
    nothing is committed yet: a seq of 0 is the row's default, not a position on the relay."""
    seq = IndexCursor.objects.filter(name=DURABLE_CURSOR_NAME).values_list("seq", flat=True).first()
    return seq if seq else None
