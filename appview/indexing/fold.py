"""A batch of parsed events reduced to its final effects, in Python, before any SQL: the last write of
each URI, the last delete of each URI, the last change of each actor, what each repo's commits say of its
sync. Testable without PostgreSQL."""

from collections import defaultdict
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
    # (since, rev, whether a #sync) of each commit applied and each #sync, per repo, for the check of its chain
    # of revs.
    commits: dict[str, list[tuple[str | None, str, bool]]] = field(default_factory=lambda: defaultdict(list))
    problems: dict[str, str] = field(default_factory=dict)  # repo -> why a commit of it was not applied
    identities: set[str] = field(default_factory=set)  # repos whose DID document is to be resolved again
    # Confirmed handles from DID documents resolved for this batch: DID -> (fetched at, ISO 8601; handle).
    handles: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    accounts: dict[str, tuple[str, bool, str]] = field(default_factory=dict)  # DID -> (position, active, status)
    purges: dict[str, str] = field(default_factory=dict)  # DID -> rev below which its records go

    @classmethod
    def of(cls, events: Iterable[ParsedEvent]) -> "Folded":
        folded = cls()
        writes, deletes = folded.writes, folded.deletes
        for event in events:
            if not event.usable:
                continue
            did = event.did
            folded.dids.update(event.dids)
            if event.sync_problem is not None:
                folded.problems.setdefault(did, event.sync_problem)
                continue
            if event.rev is not None:
                folded.commits[did].append((event.since, event.rev, event.type == "#sync"))
            for write in event.writes:
                _keep_latest(writes, write)
                if write.is_delete:
                    _keep_latest(deletes, write)
            if event.identity_changed:
                folded.identities.add(did)
            if event.account is not None:
                active, status = event.account
                if event.position > folded.accounts.get(did, ("", True, ""))[0]:
                    folded.accounts[did] = (event.position, active, status)
                if status == "deleted":
                    folded.purges[did] = max(event.purge_rev, folded.purges.get(did, ""))
        return folded


def _keep_latest(by_uri: dict[str, RecordWrite], write: RecordWrite) -> None:
    """Keeps ``write`` unless the mapping holds a later op on its URI (higher rev, or later in one commit)."""
    current = by_uri.get(write.uri)
    if current is None or (write.rev, write.order) > (current.rev, current.order):
        by_uri[write.uri] = write
