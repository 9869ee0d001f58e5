"""The signature check of a batch's commits (appview.sync.signatures) against a local PLC: a commit signed with a
key rotated since the cached DID document is applied once the document is fetched again; a forged one, or one
whose document does not come within the wait, is refused, and a slow PLC holds the batch no longer than the
wait."""

import time
from dataclasses import replace

import pytest
from pytest_django.fixtures import Settings

from appview.indexing.events import ParsedEvent
from appview.sync.signatures import check_signatures
from identity import services as identity
from protocol.crypto import PrivateKey
from protocol.mst import EMPTY_TREE_CID
from protocol.repo import COMMIT_VERSION, SignedCommit
from relaysim.bulk_repos import did_document
from tests.identity_helpers import identity_network

pytestmark = pytest.mark.django_db(transaction=True)

DID = "did:plc:rotatedkeyaaaaaaaaaaaaaa"
PDS = "https://pds.example.com"
WAIT = 1.0


def signed_event(key: PrivateKey, seq: int) -> ParsedEvent:
    commit = SignedCommit(did=DID, version=COMMIT_VERSION, data=EMPTY_TREE_CID, rev="3laaaaaaaaaa2", prev=None,
                          sig=b"")
    event = ParsedEvent(entry_id=b"1-%d" % seq, fields={}, type="#commit", seq=seq, did=DID)
    event.signed = replace(commit, sig=key.sign(commit.unsigned_bytes()))
    return event


def test_it_applies_a_commit_signed_with_a_rotated_key_and_refuses_a_forged_one(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new, forger = (PrivateKey.generate(seed=seed) for seed in (b"old", b"new", b"forger"))
    with identity_network(settings, monkeypatch) as network:
        network.plc.documents[DID] = did_document(DID, old, PDS)
        assert identity.signing_keys([DID], wait=WAIT)[DID] == old.public_key  # cached
        network.plc.documents[DID] = did_document(DID, new, PDS)
        rotated, forged = signed_event(new, 1), signed_event(forger, 2)
        check_signatures([rotated, forged], wait=WAIT)
        assert (rotated.sync_problem, forged.sync_problem) == (None, "bad-signature")
        assert forged.writes == []


def test_it_refuses_a_commit_whose_document_does_not_come_within_the_wait(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = PrivateKey.generate(seed=b"old"), PrivateKey.generate(seed=b"new")
    with identity_network(settings, monkeypatch) as network:
        network.plc.documents[DID] = did_document(DID, old, PDS)
        identity.signing_keys([DID], wait=WAIT)
        network.plc.documents[DID] = did_document(DID, new, PDS)
        network.plc.delay = 3 * WAIT
        event = signed_event(new, 1)
        started = time.monotonic()
        check_signatures([event], wait=WAIT)
        assert time.monotonic() - started < 2 * WAIT
        assert event.sync_problem == "bad-signature"
        network.plc.delay = 0.0
