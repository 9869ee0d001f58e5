"""Resync (SPEC section 12): a repository queued by the worker (a commit that failed a check, a gap, a
#sync, tooBig, an account back from deletion) is fetched whole from its PDS (``com.atproto.sync.getRepo``),
verified (signature, every block's CID, the MST), and the stored records of that repo are made equal to it.

Live events of the repo are not held back meanwhile: every write carries its commit's rev, the repository's
records are written at the repository's rev, and the end of a resync refuses everything at or below that rev
(``floor_rev``). A live commit newer than the fetched repository therefore survives the resync, and one older
than it is refused, whatever the order in which the two reach PostgreSQL: the result is the repository at its
newest rev, as if the live events had been held and applied after.
"""

import logging
import mmap
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.db import connection

from appview.indexing import services
from appview.indexing.events import RecordWrite, named_dids, record_write, stored_record_op
from appview.models import Actor, RepoSyncStatus
from identity import services as identity
from identity.outbound import Outbound, OutboundError
from identity.services import IdentityError
from protocol.repo import LEGACY_REV, SyncError, VerifiedRepository, verify_repository

logger = logging.getLogger(__name__)

WRITE_BATCH = 2000  # records per transaction
CLAIM_LEASE = timedelta(minutes=30)  # a claimed repo whose resync died is claimed again after this
BACKOFF_FIRST_SECONDS = 60.0
BACKOFF_MAX_SECONDS = 3600.0
ACTOR = Actor._meta.db_table


class ResyncError(SyncError):
    """A resync that failed; ``reason``: a protocol reason, or where it failed (``no-pds``,
    ``identity-<reason>``, ``fetch-<reason>``)."""


@dataclass(frozen=True, slots=True)
class ResyncResult:
    did: str
    rev: str
    records: int
    errors: int  # records refused by the record checks


def claim_due(*, limit: int) -> list[str]:
    """Takes up to ``limit`` repos whose resync is due (oldest first), marking them ``resyncing`` with a lease:
    several resync processes never take the same repo, and one that dies leaves it to be claimed again."""
    with connection.cursor() as cur:
        cur.execute(
            f"WITH due AS (SELECT did FROM {ACTOR} WHERE resync_after <= now() ORDER BY resync_after LIMIT %s"
            "  FOR UPDATE SKIP LOCKED)"
            f" UPDATE {ACTOR} a SET sync_status = %s, resync_after = now() + %s, updated_at = now()"
            " FROM due WHERE a.did = due.did RETURNING a.did",
            [limit, RepoSyncStatus.RESYNCING, CLAIM_LEASE],
        )
        return [did for (did,) in cur.fetchall()]


def resync(did: str, *, client: Outbound) -> ResyncResult:
    """Fetches, verifies and stores ``did``'s repository; on failure marks the repo ``error`` with the reason and
    a later attempt (minutes, doubling up to an hour) and raises ResyncError."""
    try:
        who = identity.resolve(did)
        if who.pds is None:
            raise ResyncError("no-pds", "the DID document names no PDS")
        key = who.signing_key
        if settings.VERIFY_COMMITS and key is None:
            raise ResyncError("no-signing-key", "the DID document has no usable #atproto key")
        with fetched_repository(client, who.pds, did) as car:
            repo = verify_repository(car, did, key if settings.VERIFY_COMMITS else None)
            return store_repository(did, repo)
    except (IdentityError, OutboundError, SyncError) as exc:
        prefix = {IdentityError: "identity-", OutboundError: "fetch-"}.get(type(exc), "")
        failure = ResyncError(prefix + exc.reason, str(exc))
        _fail(did, failure.reason, str(exc))
        raise failure from None


@contextmanager
def fetched_repository(client: Outbound, pds: str, did: str) -> Iterator[mmap.mmap]:
    """The repository export of ``did`` from ``pds``, spooled to a temporary file and mapped: a repository of
    any size is read in place, never held whole in memory."""
    url = f"{pds.rstrip('/')}/xrpc/com.atproto.sync.getRepo?{urlencode({'did': did})}"
    with tempfile.TemporaryFile(prefix="repo-", suffix=".car") as spool:
        size = client.download(url, spool, max_bytes=settings.RESYNC_MAX_BYTES, accept="application/vnd.ipld.car")
        if size == 0:
            raise ResyncError("car-invalid", "the PDS sent an empty repository")
        spool.flush()
        with mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped


def store_repository(did: str, repo: VerifiedRepository) -> ResyncResult:
    """Makes the stored records of ``did`` equal to the verified repository (each written at its rev)."""
    rev = repo.commit.rev or LEGACY_REV
    uris: set[str] = set()
    errors = 0
    writes: list[RecordWrite] = []
    dids: set[str] = {did}
    for order, (path, cid) in enumerate(repo.records):
        collection, _, rkey = path.partition("/")
        op = stored_record_op(collection, rkey, cid, repo.block(cid) or b"")
        if op is None:
            errors += 1
            continue
        write, bad = record_write(did, op, rev=rev, seq=0, order=order)
        errors += bad
        if write is None:
            continue
        uris.add(write.uri)
        writes.append(write)
        dids.update(named_dids(write))
        if len(writes) >= WRITE_BATCH:
            services.index_repository_records(writes=writes, dids=dids)
            writes, dids = [], {did}
    if writes:
        services.index_repository_records(writes=writes, dids=dids)
    services.complete_repository(did=did, rev=rev, uris=uris)
    logger.info("resynced %s at rev %s: %d records, %d refused", did, rev, len(uris), errors)
    return ResyncResult(did=did, rev=rev, records=len(uris), errors=errors)


def _fail(did: str, reason: str, detail: str) -> None:
    logger.warning("resync of %s failed: %s: %s", did, reason, detail[:300])
    with connection.cursor() as cur:
        cur.execute(f"SELECT sync_tries FROM {ACTOR} WHERE did = %s", [did])
        row = cur.fetchone()
        tries = (row[0] if row else 0) + 1
        wait = min(BACKOFF_FIRST_SECONDS * 2 ** (tries - 1), BACKOFF_MAX_SECONDS) * random.uniform(0.8, 1.2)
        cur.execute(
            f"UPDATE {ACTOR} SET sync_status = %s, sync_reason = %s, sync_tries = %s,"
            " resync_after = now() + %s, updated_at = now() WHERE did = %s",
            [RepoSyncStatus.ERROR, f"{reason}: {detail}"[:500], tries, timedelta(seconds=wait), did],
        )
