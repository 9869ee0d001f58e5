"""Handles (SPEC section 12): the handle a DID document names counts only when its domain names the DID back,
by a DNS TXT record ``_atproto.<handle>`` or by ``https://<handle>/.well-known/atproto-did``; otherwise it is
``handle.invalid``. Served by the local DNS server and web host."""

from collections.abc import Iterator

import pytest
from pytest_django.fixtures import Settings

from identity.services import INVALID_HANDLE, refresh, resolve
from tests.identity_helpers import IdentityNetwork, document_of, fixture_documents, identity_network, stored

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
OTHER_DID = "did:plc:abcdefghijklmnopqrstuvwx"
HANDLE = "alice.test"


@pytest.fixture
def network(settings: Settings, monkeypatch: pytest.MonkeyPatch, transactional_db: None) -> Iterator[IdentityNetwork]:
    with identity_network(settings, monkeypatch) as local:
        yield local


def test_it_confirms_each_fixture_handle_by_dns(network: IdentityNetwork) -> None:
    documents = fixture_documents()
    network.plc.documents.update(documents)
    handles = {did: document["alsoKnownAs"][0].removeprefix("at://") for did, document in documents.items()}
    network.dns.txt.update({handle: [f"did={did}"] for did, handle in handles.items()})
    for did, handle in handles.items():
        assert resolve(did).handle == handle
        assert stored(did).handle == handle
    assert network.dns.queries == [f"_atproto.{handle}" for handle in handles.values()]
    assert all(request.path.startswith("/did:") for request in network.plc.requests)  # DNS sufficed


def test_it_confirms_a_handle_over_https_when_dns_has_no_record(network: IdentityNetwork) -> None:
    network.plc.documents[DID] = document_of(DID, handle=HANDLE)
    network.plc.atproto_dids[HANDLE] = f"  {DID}\n"
    assert resolve(DID).handle == HANDLE
    assert network.dns.queries == [f"_atproto.{HANDLE}"]
    assert [(request.host, request.path) for request in network.plc.requests][-1] == (
        HANDLE, "/.well-known/atproto-did")


def test_it_lowercases_the_handle_it_confirms(network: IdentityNetwork) -> None:
    network.plc.documents[DID] = document_of(DID, handle="Alice.TEST")
    network.dns.txt[HANDLE] = [f"did={DID}"]
    assert resolve(DID).handle == HANDLE


def test_it_falls_back_to_https_when_dns_does_not_answer_in_time(
        network: IdentityNetwork, settings: Settings) -> None:
    settings.IDENTITY_TIMEOUT = 0.3
    network.dns.delay = 1.0
    network.dns.txt[HANDLE] = [f"did={OTHER_DID}"]  # too late to count
    network.plc.documents[DID] = document_of(DID, handle=HANDLE)
    network.plc.atproto_dids[HANDLE] = DID
    assert resolve(DID).handle == HANDLE


@pytest.mark.parametrize(("txt", "https", "expected"), [
    ([f"did={OTHER_DID}"], DID, INVALID_HANDLE),  # DNS names another DID: HTTPS is not asked
    ([], None, INVALID_HANDLE),  # the name exists without a record, and HTTPS has none
    (None, OTHER_DID, INVALID_HANDLE),
    (None, "x" * 5000, INVALID_HANDLE),  # an answer too long to be a DID
    ([f"did={DID}", f"did={OTHER_DID}"], None, INVALID_HANDLE),  # two records: neither counts
    ([f"did={DID}", f"did={OTHER_DID}"], DID, HANDLE),  # ... and HTTPS decides
    (["v=spf1 -all", f"did={DID}"], None, HANDLE),  # other TXT records are ignored
])
def test_it_makes_a_handle_that_does_not_confirm_invalid(
        network: IdentityNetwork, txt: list[str] | None, https: str | None, expected: str) -> None:
    network.plc.documents[DID] = document_of(DID, handle=HANDLE)
    if txt is not None:
        network.dns.txt[HANDLE] = txt
    if https is not None:
        network.plc.atproto_dids[HANDLE] = https
    assert resolve(DID).handle == expected
    assert stored(DID).handle == expected


@pytest.mark.parametrize("handle", ["handle.invalid", "alice.local", "printer.localhost", "alice.example"])
def test_it_does_not_look_up_handles_under_reserved_names(network: IdentityNetwork, handle: str) -> None:
    network.plc.documents[DID] = document_of(DID, handle=handle)
    network.dns.txt[handle] = [f"did={DID}"]
    assert resolve(DID).handle == INVALID_HANDLE
    assert network.dns.queries == []


@pytest.mark.parametrize("aliases", [None, [], ["https://alice.test"], ["at://not a handle"]])
def test_it_gives_no_handle_when_the_document_names_none(network: IdentityNetwork, aliases: list[str] | None) -> None:
    document = document_of(DID)
    if aliases is not None:
        document["alsoKnownAs"] = aliases
    network.plc.documents[DID] = document
    identity = resolve(DID)
    assert identity.handle is None
    assert identity.signing_key is not None
    assert network.dns.queries == []


def test_it_takes_a_new_handle_on_refresh(network: IdentityNetwork) -> None:
    network.plc.documents[DID] = document_of(DID, handle=HANDLE)
    network.dns.txt.update({HANDLE: [f"did={DID}"], "bob.test": [f"did={DID}"]})
    assert resolve(DID).handle == HANDLE
    network.plc.documents[DID] = document_of(DID, handle="bob.test")
    assert resolve(DID).handle == HANDLE
    assert refresh(DID).handle == "bob.test"
    del network.dns.txt["bob.test"]
    assert refresh(DID).handle == INVALID_HANDLE
