"""What the identity tests share: the local PLC directory and DNS server wired into the settings, the fixture
DID documents, and a process state (memory cache, counters) that starts empty for each test."""

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from pytest_django.fixtures import Settings

from identity import cache, services
from identity.models import DidDocument
from relaysim.identity_servers import LocalDns, LocalPlc, Request
from tests.conftest import FIXTURES, fixture_files

REPOS = FIXTURES / "repos"
TIMEOUT = 1.0
# Host names the local server answers for (did:web hosts and handles' domains), as IDENTITY_HOST_OVERRIDES.
WEB_HOSTS = ("web.test", "alice.test", "bob.test", "ebert9014-89.test", "greenground.bsky.social",
             "paul.staging.bsky.dev")


@dataclass
class IdentityNetwork:
    plc: LocalPlc
    dns: LocalDns


def fixture_documents() -> dict[str, dict[str, Any]]:
    """The real DID documents of tests/fixtures/repos, by DID."""
    documents = [json.loads(path.read_text()) for path in fixture_files(REPOS, "*.didDoc.json")]
    return {document["id"]: document for document in documents}


def document_of(did: str, *, handle: str | None = None, pds: str = "https://pds.example.com") -> dict[str, Any]:
    """A DID document of ``did`` with the signing key of a fixture document, naming ``handle``."""
    key_method = next(iter(fixture_documents().values()))["verificationMethod"][0]
    document: dict[str, Any] = {
        "id": did,
        "verificationMethod": [{**key_method, "controller": did}],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds}],
    }
    if handle is not None:
        document["alsoKnownAs"] = [f"at://{handle}"]
    return document


@contextmanager
def identity_network(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[IdentityNetwork]:
    """A local PLC directory (also the web host of WEB_HOSTS) and DNS server, in the settings; an empty
    memory cache and counters. Waits at the end for background resolutions, so that none outlives the test."""
    monkeypatch.setattr(services, "_memory", cache.MemoryCache(services.MEMORY_CACHE_SIZE))
    services.stats()
    with LocalPlc() as plc, LocalDns() as dns_server:
        settings.PLC_URL = plc.url
        settings.DNS_NAMESERVERS = [dns_server.address]
        settings.IDENTITY_TIMEOUT = TIMEOUT
        settings.IDENTITY_HOST_OVERRIDES = dict.fromkeys(WEB_HOSTS, plc.address)
        try:
            yield IdentityNetwork(plc=plc, dns=dns_server)
        finally:
            wait_for(lambda: services.pending_resolutions() == 0, timeout=10)


def wait_for(condition: Callable[[], bool], *, timeout: float, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(interval)


def plc_requests(network: IdentityNetwork) -> list[Request]:
    """The requests the server answered as a PLC directory (not as a web host)."""
    return [request for request in network.plc.requests if request.path.startswith("/did:")]


def stored(did: str) -> DidDocument | None:
    return DidDocument.objects.filter(did=did).first()


def forget_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a new process starts: nothing in memory, what PostgreSQL holds kept."""
    monkeypatch.setattr(services, "_memory", cache.MemoryCache(services.MEMORY_CACHE_SIZE))
