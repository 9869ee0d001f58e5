"""The durable cursors (SPEC sections 3 and 7), one row per relay host: the relay seq at or below which every
event of that relay has its effects committed in PostgreSQL, a low-water mark. Workers advance the row
holding the stream generation of the mark; run_firehose claims a generation for the relay it reads and
resumes from the row when Redis cannot say where it was. This module is their one reader and one writer."""

from urllib.parse import urlsplit

from django.db import connection, transaction
from django.db.models import F, Max

from pipeline.models import IndexCursor

TABLE = IndexCursor._meta.db_table
DEFAULT_PORTS = {"ws": 80, "http": 80, "wss": 443, "https": 443}


def relay_host(url: str) -> str:
    """The name of a relay's row: host[:port] of its URL (or bare host), lowercased, without the port its
    scheme implies, so that every spelling of one relay names one row."""
    text = url.strip()
    parts = urlsplit(text if "://" in text else "//" + text)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    port = parts.port
    return host if port is None or DEFAULT_PORTS.get(parts.scheme) == port else f"{host}:{port}"


def read_durable_cursor(host: str) -> tuple[int | None, int | None]:
    """The committed low-water mark of ``host`` (None when nothing is committed: a seq of 0 is the row's
    default, not a position on the relay) and the generation the row holds, (None, None) without a row."""
    row = IndexCursor.objects.filter(name=host).values_list("seq", "generation").first()
    if row is None:
        return None, None
    seq, generation = row
    return seq or None, generation


def max_generation() -> int | None:
    """The highest generation any relay holds, None when none does."""
    return IndexCursor.objects.aggregate(highest=Max("generation"))["highest"]


def claim_generation(host: str, generation: int) -> None:
    """Makes ``generation`` the one ``host``'s events are pushed under, creating its row (seq 0) if missing;
    the marks of the generation it held before no longer move its cursor."""
    with connection.cursor() as cur:
        cur.execute(
            f"INSERT INTO {TABLE} (name, seq, generation) VALUES (%s, 0, %s)"
            " ON CONFLICT (name) DO UPDATE SET generation = excluded.generation, updated_at = now()",
            [host, generation],
        )


def reset_durable_cursor(host: str) -> None:
    """Forgets the position of ``host``: its numbering started over, so its old seqs mean nothing now."""
    IndexCursor.objects.filter(name=host).update(seq=0)


def advance_durable_cursor(*, generation: int, seq: int) -> int | None:
    """Moves the cursor of the relay holding ``generation`` up to ``seq`` (never down); returns its value
    after the call, or None when no relay holds ``generation`` any more (the mark is then ignored: its
    relay was switched away from, or started its numbering over)."""
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(
            f"UPDATE {TABLE} SET seq = %s, updated_at = now() WHERE generation = %s AND seq < %s RETURNING seq",
            [seq, generation, seq],
        )
        row = cur.fetchone()
        if row is None:
            cur.execute(f"SELECT seq FROM {TABLE} WHERE generation = %s", [generation])
            row = cur.fetchone()
        return row[0] if row else None


def current_durable_cursor() -> int | None:
    """The committed low-water mark of the relay read last (the highest generation; a row without one, as
    left by the upgrade to per-relay cursors, when no relay holds one yet), None when nothing is committed."""
    latest_first = F("generation").desc(nulls_last=True)
    seq = IndexCursor.objects.order_by(latest_first).values_list("seq", flat=True).first()
    return seq or None
