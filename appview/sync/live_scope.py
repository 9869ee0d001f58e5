"""Which repositories live indexing follows (``LIVE_SCOPE``), as indigo's ``tap`` follows only the repositories
it tracks.

``network`` (the default): every repository the firehose carries. ``tracked``: the repositories of the backfill
queue (``BackfillRepo``, in any state: the DIDs, signal-collection listings and full-network listings of
``manage.py backfill`` runs), and any repository whose live commit creates or updates a record of
``SIGNAL_COLLECTION``: that commit brings it into the scope (it is indexed) and queues it for backfill, so that
the next run loads its history. Every event of another repository is skipped (acknowledged, never indexed) and
counted in ``cluster:metrics`` ``outOfScope``; only its header is read, so a small deployment on the full
firehose spends nothing on verifying the rest of the network.

Records of tracked repositories may still name untracked ones (a follow's subject, a liked post's author):
those get actor rows and the counts the tracked records give them, as in the default scope.
"""

from django.db import connection

from appview.indexing.events import ParsedEvent, writes_collection
from appview.sync.backfill import BACKFILL, queue_dids
from protocol.frames import Frame


def tracked_repositories(dids: set[str]) -> set[str]:
    """Those of ``dids`` that the backfill queue holds, in one query."""
    if not dids:
        return set()
    with connection.cursor() as cur:
        cur.execute(f"SELECT did FROM {BACKFILL} WHERE did = ANY(%s)", [list(dids)])
        return {did for (did,) in cur.fetchall()}


def mark_out_of_scope(headed: list[tuple[ParsedEvent, Frame | None]], *, signal_collection: str) -> None:
    """Marks ``out_of_scope`` the events (headers read, ``events.read_entry``) of repositories the scope leaves
    out, and queues for backfill the untracked repositories that write ``signal_collection`` ("": none)."""
    readable = [(event, frame) for event, frame in headed if frame is not None]
    tracked = tracked_repositories({event.did for event, _ in readable})
    signalled = {event.did for event, frame in readable if signal_collection and event.did not in tracked
                 and writes_collection(frame, signal_collection)}
    if signalled:
        queue_dids(sorted(signalled))
    for event, _ in readable:
        if event.did not in tracked and event.did not in signalled:
            event.out_of_scope = True
