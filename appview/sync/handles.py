"""Actors' handles come from their DID documents (SPEC section 12): the identity cache holds each confirmed
handle (or ``handle.invalid``) with the time its document was fetched, and this copies the recent ones into
the actor rows. A newer fetch wins whatever the order of events, and a confirmed handle is taken away from any
other actor still holding it (its claim is stale: a handle confirms for one DID only)."""

from datetime import timedelta

from django.db import connection

from appview.models import Actor
from identity.models import DidDocument
from identity.services import INVALID_HANDLE

ACTOR = Actor._meta.db_table
DOCUMENTS = DidDocument._meta.db_table


def copy_confirmed_handles(*, fetched_within: timedelta) -> int:
    """Copies the handles of the documents fetched within ``fetched_within`` into the rows of their actors
    that hold an older one; returns how many actors changed handle."""
    with connection.cursor() as cur:
        cur.execute(
            f"WITH fresh AS (SELECT did, handle, fetched_at FROM {DOCUMENTS}"
            "  WHERE fetched_at > now() - %(within)s AND document IS NOT NULL),"
            f" taken AS (UPDATE {ACTOR} a SET handle = f.handle, handle_checked_at = f.fetched_at, updated_at = now()"
            "  FROM fresh f WHERE a.did = f.did AND f.fetched_at > COALESCE(a.handle_checked_at, '-infinity')"
            "  RETURNING a.did, a.handle),"
            f" released AS (UPDATE {ACTOR} o SET handle = %(invalid)s, updated_at = now() FROM taken t"
            "  WHERE o.handle = t.handle AND o.did <> t.did AND t.handle <> %(invalid)s RETURNING o.did)"
            " SELECT (SELECT count(*) FROM taken) + (SELECT count(*) FROM released)",
            {"within": fetched_within, "invalid": INVALID_HANDLE},
        )
        return cur.fetchone()[0]
