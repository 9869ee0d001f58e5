"""A batch of parsed events reduced to its final effects, in Python, before any SQL: the last write of
each URI, the last delete of each URI, the last change of each actor. Testable without PostgreSQL."""

from collections.abc import Iterable
from dataclasses import dataclass, field

from appview.indexing.events import ParsedEvent, RecordWrite


@dataclass(slots=True)
class Folded:
    """A batch reduced to its final effects: the last write per URI, the last change per actor."""

    writes: dict[str, RecordWrite] = field(default_factory=dict)
    # The last delete of each URI, even when a later write of the URI wins: its tombstone is kept as
    # it would be had the two come in separate batches.
    deletes: dict[str, RecordWrite] = field(default_factory=dict)
    dids: set[str] = field(default_factory=set)
    handles: dict[str, tuple[int, str]] = field(default_factory=dict)
    accounts: dict[str, tuple[int, bool, str]] = field(default_factory=dict)
    purges: dict[str, int] = field(default_factory=dict)
    syncs: dict[str, tuple[int, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, events: Iterable[ParsedEvent]) -> "Folded":
        folded = cls()
        writes, deletes = folded.writes, folded.deletes
        for event in events:
            if not event.usable:
                continue
            folded.dids.update(event.dids)
            for write in event.writes:
                _keep_latest(writes, write)
                if write.is_delete:
                    _keep_latest(deletes, write)
            did, seq = event.did, event.seq
            if event.handle is not None and seq > folded.handles.get(did, (0, ""))[0]:
                folded.handles[did] = (seq, event.handle)
            if event.account is not None:
                active, status = event.account
                if seq > folded.accounts.get(did, (0, True, ""))[0]:
                    folded.accounts[did] = (seq, active, status)
                if status == "deleted":
                    folded.purges[did] = max(seq, folded.purges.get(did, 0))
            if event.sync_rev is not None and seq > folded.syncs.get(did, (0, ""))[0]:
                folded.syncs[did] = (seq, event.sync_rev)
        return folded


def _keep_latest(by_uri: dict[str, RecordWrite], write: RecordWrite) -> None:
    """Keeps ``write`` unless the mapping holds a later op on its URI (higher seq, or later in one commit)."""
    current = by_uri.get(write.uri)
    if current is None or (write.seq, write.order) > (current.seq, current.order):
        by_uri[write.uri] = write
