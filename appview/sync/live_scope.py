"""Which repositories live indexing follows (``LIVE_SCOPE``), as indigo's ``tap`` follows only the repositories
it tracks.

``network`` (the default): every repository the firehose carries. ``tracked``: the repositories of the backfill
queue (``BackfillRepo``, in any state: the DIDs, signal-collection listings and full-network listings of
``manage.py backfill`` runs), and any repository whose live commit creates or updates a record of
``SIGNAL_COLLECTION`` and passes every check: that commit brings it into the scope (it is indexed) and queues it
for backfill, so that the next run loads its history. Every other event is skipped (acknowledged, never indexed)
and counted in ``cluster:metrics`` ``outOfScope`` (and, as handled, in ``totalEvents``: the stream's arithmetic
of received against handled stays right); its frame is decoded but neither parsed nor verified, so a small
deployment on the full firehose spends little on the rest of the network.

Records of tracked repositories name untracked accounts (a follow's subject, a liked post's author): those get
actor rows, and their ``#identity`` and ``#account`` events stay in the scope, so that their handles and
statuses (a takedown hides what they wrote) stay current: from the batch after the one that first names them (a
worker reads a batch while it indexes the one before).

Two workers may read a repository's signal commit and its next commit at once: the second one skips it while
the first queues the repository. The gap this leaves in the repository's chain of revs has it resynced.
"""

from django.db import connection

from appview.indexing.events import ParsedEvent, writes_collection
from appview.models import Actor
from appview.sync.backfill import BACKFILL, queue_dids
from protocol.frames import Frame

ACTOR_EVENTS = ("#identity", "#account")
Headed = list[tuple[ParsedEvent, Frame | None]]


def tracked_repositories(dids: set[str]) -> set[str]:
    """Those of ``dids`` that the backfill queue holds, in one query."""
    return _present(BACKFILL, dids)


def mark_out_of_scope(headed: Headed, *, signal_collection: str) -> set[str]:
    """Marks ``out_of_scope`` the events (headers read, ``events.read_entry``) the scope leaves out. Returns the
    untracked repositories whose commits write ``signal_collection`` ("": none): their events are parsed and
    verified like the tracked ones', and they enter the scope only if one of those commits holds
    (``admit_signalled``)."""
    readable = [(event, frame) for event, frame in headed if frame is not None]
    tracked = tracked_repositories({event.did for event, _ in readable})
    candidates = {event.did for event, frame in readable if signal_collection and event.did not in tracked
                  and writes_collection(frame, signal_collection)}
    known = _present(Actor._meta.db_table, {event.did for event, _ in readable
                                            if event.type in ACTOR_EVENTS and event.did not in tracked})
    for event, _ in readable:
        if not (event.did in tracked or event.did in candidates or (event.type in ACTOR_EVENTS and event.did in known)):
            event.out_of_scope = True
    return candidates


def admit_signalled(headed: Headed, candidates: set[str], *, signal_collection: str) -> None:
    """Queues for backfill the candidate repositories (``mark_out_of_scope``) one of whose commits writing
    ``signal_collection`` passed every check (parsed and signatures checked); the others' events leave the scope,
    counted as nothing else."""
    signalled = {event.did for event, frame in headed if event.did in candidates and frame is not None
                 and event.sync_problem is None and writes_collection(frame, signal_collection)}
    if signalled:
        queue_dids(sorted(signalled))
    for event, _ in headed:
        if event.did in candidates and event.did not in signalled:
            event.out_of_scope = True
            event.writes, event.errors, event.filtered, event.sync_problem = [], 0, 0, None


def _present(table: str, dids: set[str]) -> set[str]:
    if not dids:
        return set()
    with connection.cursor() as cur:
        cur.execute(f"SELECT did FROM {table} WHERE did = ANY(%s)", [list(dids)])
        return {did for (did,) in cur.fetchall()}
