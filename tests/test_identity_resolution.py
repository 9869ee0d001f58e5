"""DID resolution (SPEC section 12): did:plc from the PLC directory and did:web from its host, through local
servers; the caches in memory and PostgreSQL and their TTL; unknown, tombstoned and malformed documents."""

import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_django.fixtures import Settings

from identity import services
from identity.services import IdentityError, refresh, resolve, signing_keys
from protocol.crypto import P256, SECP256K1, atproto_signing_key
from tests.identity_helpers import (
    IdentityNetwork,
    document_of,
    fixture_documents,
    forget_memory,
    identity_network,
    plc_requests,
    stored,
)

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
OTHER_DID = "did:plc:abcdefghijklmnopqrstuvwx"
CURVES = {"did:plc:dpg45vsnuir2vqqqadsn6afg": P256, "did:plc:wqgdnqlv2mwiio6pfchwtrff": SECP256K1,
          "did:plc:cmpvykrzb2l22kj4ojlv3ox4": SECP256K1}


@pytest.fixture
def network(settings: Settings, monkeypatch: pytest.MonkeyPatch, transactional_db: None) -> Iterator[IdentityNetwork]:
    """Background resolutions write from their own connections: the tables are emptied after the test."""
    with identity_network(settings, monkeypatch) as local:
        yield local


def test_it_resolves_each_fixture_did_plc_through_the_plc_directory(network: IdentityNetwork) -> None:
    documents = fixture_documents()
    network.plc.documents.update(documents)
    for did, document in documents.items():
        identity = resolve(did)
        assert identity.did == did
        assert identity.document == document
        assert identity.pds == document["service"][0]["serviceEndpoint"]
        assert identity.signing_key is not None and identity.signing_key.curve == CURVES[did]
        row = stored(did)
        assert row is not None and row.signing_key == identity.signing_key.multikey()
        assert row.pds == identity.pds and row.document == document
    assert [request.path for request in plc_requests(network)] == [f"/{did}" for did in documents]


def test_it_resolves_a_did_web_from_its_host(network: IdentityNetwork) -> None:
    did = "did:web:web.test"
    network.plc.web_documents["web.test"] = document_of(did, pds="https://pds.web.test")
    identity = resolve(did)
    assert identity.pds == "https://pds.web.test"
    assert identity.signing_key is not None
    assert [(request.host, request.path) for request in network.plc.requests] == [
        ("web.test", "/.well-known/did.json")]


@pytest.mark.parametrize("did", ["did:web:web.test%3A8080", "did:web:web.test:users:alice", "did:web:localhost",
                                 "did:web:127.0.0.1", "did:plc:short", "did:key:zQ3shunBKsXixLxKtC5qeSG9E4J5RkGN",
                                 "not a did"])
def test_it_refuses_dids_it_cannot_resolve_without_a_request(network: IdentityNetwork, did: str) -> None:
    with pytest.raises(IdentityError) as raised:
        resolve(did)
    assert raised.value.reason == "not-found"
    assert signing_keys([did], wait=1) == {did: None}
    assert network.plc.request_count == 0
    assert services.stats() == {}


def test_it_answers_from_memory_then_from_postgresql_within_the_ttl(
        network: IdentityNetwork, monkeypatch: pytest.MonkeyPatch) -> None:
    network.plc.documents[DID] = document_of(DID)
    first = dataclasses.replace(resolve(DID), document={})  # the in-process cache keeps no document
    assert resolve(DID) == first
    forget_memory(monkeypatch)
    assert dataclasses.replace(resolve(DID), document={}) == first
    assert network.plc.request_count == 1
    assert services.stats() == {"resolutions": 1, "memory_hits": 1, "db_hits": 1}


def test_it_fetches_again_after_the_ttl(network: IdentityNetwork, settings: Settings) -> None:
    settings.IDENTITY_CACHE_TTL = 1
    network.plc.documents[DID] = document_of(DID, pds="https://old.example.com")
    assert resolve(DID).pds == "https://old.example.com"
    network.plc.documents[DID] = document_of(DID, pds="https://new.example.com")
    assert resolve(DID).pds == "https://old.example.com"
    time.sleep(1.05)
    assert resolve(DID).pds == "https://new.example.com"
    assert network.plc.request_count == 2
    assert stored(DID).pds == "https://new.example.com"


def test_it_fetches_again_on_refresh(network: IdentityNetwork) -> None:
    network.plc.documents[DID] = document_of(DID, pds="https://old.example.com")
    resolve(DID)
    network.plc.documents[DID] = document_of(DID, pds="https://new.example.com")
    assert refresh(DID).pds == "https://new.example.com"
    assert resolve(DID).pds == "https://new.example.com"
    assert network.plc.request_count == 2


@pytest.mark.parametrize("tombstoned", [False, True])
def test_it_caches_an_unknown_or_tombstoned_did_as_not_found(network: IdentityNetwork, tombstoned: bool) -> None:
    if tombstoned:
        network.plc.tombstoned.add(DID)
    for _ in range(2):
        with pytest.raises(IdentityError) as raised:
            resolve(DID)
        assert raised.value.reason == "not-found"
        assert ("tombstoned" in raised.value.message) is tombstoned
    assert signing_keys([DID], wait=1) == {DID: None}
    assert network.plc.request_count == 1
    row = stored(DID)
    assert row.document is None and row.last_error == "not-found"


def test_it_replaces_a_document_by_the_tombstone_that_follows_it(network: IdentityNetwork) -> None:
    network.plc.documents[DID] = document_of(DID)
    assert resolve(DID).signing_key is not None
    network.plc.tombstoned.add(DID)
    with pytest.raises(IdentityError, match="tombstoned"):
        refresh(DID)
    assert signing_keys([DID], wait=1) == {DID: None}
    assert stored(DID).signing_key is None


def bad_documents() -> dict[str, Any]:
    good = document_of(DID)
    return {
        "another id": {**good, "id": OTHER_DID},
        "no id": {key: value for key, value in good.items() if key != "id"},
        "an id that is not a string": {**good, "id": 7},
        "oversized": {**good, "padding": "x" * 70_000},
        "not JSON": b"<html>hello</html>",
        "not UTF-8": b'{"id": "\xff"}',
        "a JSON array": json.dumps([good]).encode(),
        "deeply nested": b"[" * 30_000 + b"]" * 30_000,
        "alsoKnownAs a string": {**good, "alsoKnownAs": "at://alice.test"},
        "alsoKnownAs holding a number": {**good, "alsoKnownAs": [5]},
        "verificationMethod an object": {**good, "verificationMethod": good["verificationMethod"][0]},
        "service holding strings": {**good, "service": ["https://pds.example.com"]},
    }


@pytest.mark.parametrize("case", list(bad_documents()))
def test_it_refuses_a_document_that_is_not_a_valid_document_of_the_did(network: IdentityNetwork, case: str) -> None:
    network.plc.documents[DID] = bad_documents()[case]
    with pytest.raises(IdentityError) as raised:
        resolve(DID)
    assert raised.value.reason == "invalid-document"
    assert signing_keys([DID], wait=1) == {DID: None}
    assert stored(DID).last_error == "invalid-document"


def test_it_maps_a_document_without_a_usable_key_to_none(network: IdentityNetwork) -> None:
    no_key = {key: value for key, value in document_of(DID).items() if key != "verificationMethod"}
    bad_key = document_of(OTHER_DID)
    bad_key["verificationMethod"][0]["publicKeyMultibase"] = "zNotAKey"
    network.plc.documents.update({DID: no_key, OTHER_DID: bad_key})
    assert resolve(DID).signing_key is None
    assert signing_keys([DID, OTHER_DID], wait=2) == {DID: None, OTHER_DID: None}


def test_it_gets_a_batch_of_keys_from_memory_postgresql_and_the_network(
        network: IdentityNetwork, monkeypatch: pytest.MonkeyPatch) -> None:
    documents = fixture_documents()
    network.plc.documents.update(documents)
    expected = {did: resolve(did).signing_key for did in documents}
    network.plc.documents[DID] = document_of(DID)
    services.stats()

    forget_memory(monkeypatch)
    resolve(next(iter(documents)))  # one in memory, the others in PostgreSQL, DID nowhere yet
    keys = signing_keys([*documents, DID, *documents], wait=5)
    assert keys == {**expected, DID: atproto_signing_key(document_of(DID), DID)}
    assert len(plc_requests(network)) == len(documents) + 1
    assert services.stats() == {"db_hits": 3, "memory_hits": 1, "resolutions": 1}


def test_it_answers_within_the_wait_when_the_plc_is_slow_and_fills_the_caches_later(
        network: IdentityNetwork) -> None:
    network.plc.documents[DID] = document_of(DID)
    network.plc.delay = 0.6
    started = time.monotonic()
    assert signing_keys([DID], wait=0.1) == {}
    assert time.monotonic() - started < 0.3
    assert signing_keys([DID], wait=2) == {DID: resolve(DID).signing_key}
    assert network.plc.request_count == 1
    assert stored(DID).signing_key is not None


def test_it_answers_within_the_wait_when_the_plc_is_dead(
        network: IdentityNetwork, settings: Settings) -> None:
    network.plc.stop()
    started = time.monotonic()
    assert signing_keys([DID], wait=2) == {}
    assert time.monotonic() - started < 1
    reasons = []
    for letter in "abc":  # three failures in a row (each DID also waits on its own after failing) ...
        with pytest.raises(IdentityError) as raised:
            resolve(f"did:plc:{letter * 24}")
        reasons.append(raised.value.reason)
    assert reasons == ["unavailable", "unavailable", "backing-off"]  # ... and the directory is left alone
    assert stored(DID).last_error == "unavailable"


def test_it_gives_up_on_a_plc_slower_than_the_timeout(network: IdentityNetwork) -> None:
    network.plc.documents[DID] = document_of(DID)
    network.plc.delay = 2.5
    started = time.monotonic()
    with pytest.raises(IdentityError) as raised:
        resolve(DID)
    assert raised.value.reason == "timeout"
    assert time.monotonic() - started < 2


def test_it_keeps_the_last_known_key_while_the_plc_fails(
        network: IdentityNetwork, settings: Settings) -> None:
    settings.IDENTITY_CACHE_TTL = 1
    network.plc.documents[DID] = document_of(DID)
    known = resolve(DID)
    time.sleep(1.05)
    network.plc.answer_500(10)
    assert resolve(DID) == known
    assert signing_keys([DID], wait=1) == {DID: known.signing_key}
    with pytest.raises(IdentityError) as raised:
        refresh(DID)
    assert raised.value.reason == "backing-off"
    row = stored(DID)
    assert row.failures == 1 and row.last_error == "unavailable" and row.signing_key == known.signing_key.multikey()
