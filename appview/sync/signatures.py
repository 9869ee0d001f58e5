"""The signature check of a batch's commits, once their repos' keys are known (``identity.signing_keys``).

A commit is checked everywhere else while it is parsed (``events.parse_entry``); only its signature waits for
the batch, so that the keys of all its repos are looked up together and a slow PLC costs a batch at most
``SIGNING_KEY_WAIT`` seconds. A repo whose key is still unknown then is queued for resync (its commit is not
applied), as is one whose commit does not verify even with its DID document fetched again within the same wait
(the key may have been rotated since the cached document)."""

import logging
import time
from collections.abc import Sequence

from appview.indexing.events import ParsedEvent
from identity import services as identity
from protocol.repo import SignedCommit

logger = logging.getLogger(__name__)

# DID documents fetched again per batch for signatures that fail with the cached key: a flood of forged
# commits cannot turn into a flood of PLC requests.
REFRESHES_PER_BATCH = 8


def check_signatures(events: Sequence[ParsedEvent], *, wait: float) -> None:
    """Marks (``sync_problem``) each commit whose signature does not verify against its repo's key, or whose
    key is not known within ``wait`` seconds; such a commit loses its writes."""
    signed = [(event, event.signed) for event in events if event.signed is not None and event.sync_problem is None]
    if not signed:
        return
    deadline = time.monotonic() + wait
    keys = identity.signing_keys({event.did for event, _ in signed}, wait=wait)
    failing: list[tuple[ParsedEvent, SignedCommit]] = []
    for event, commit in signed:
        key = keys.get(event.did)
        if key is None:
            _refuse(event, "no-signing-key")
        elif not key.verify(commit.unsigned_bytes(), commit.sig):
            failing.append((event, commit))
    if not failing:
        return
    dids = list(dict.fromkeys(event.did for event, _ in failing))[:REFRESHES_PER_BATCH]
    refreshed = identity.refreshed_signing_keys(dids, wait=max(deadline - time.monotonic(), 0.0))
    for did in set(dids) - set(refreshed):
        logger.info("the DID document of %s did not come again in time: its failing commits are refused", did)
    for event, commit in failing:
        key = refreshed.get(event.did)
        if key is None or not key.verify(commit.unsigned_bytes(), commit.sig):
            _refuse(event, "bad-signature")


def _refuse(event: ParsedEvent, reason: str) -> None:
    logger.warning("#commit seq %d of %s not applied: %s", event.seq, event.did, reason)
    event.sync_problem = reason
    event.writes = []
