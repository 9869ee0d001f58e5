"""Outbound requests to hosts we do not control (identity/outbound.py): rate limits and failures make a host
wait before it is called again, concurrency per host is bounded, and only https to public domain names is
called unless the operator configured otherwise."""

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from django.db import connection
from pytest_django.fixtures import Settings

from identity.outbound import Outbound, OutboundError, rate_limit_wait
from identity.services import IdentityError, resolve
from tests.identity_helpers import IdentityNetwork, document_of, identity_network

DIDS = [f"did:plc:{letter * 24}" for letter in "abcdefg"]


@pytest.fixture
def network(settings: Settings, monkeypatch: pytest.MonkeyPatch, transactional_db: None) -> Iterator[IdentityNetwork]:
    """Background resolutions write from their own connections: the tables are emptied after the test."""
    with identity_network(settings, monkeypatch) as local:
        local.plc.documents.update({did: document_of(did) for did in DIDS})
        yield local


def reason_of(did: str) -> str:
    with pytest.raises(IdentityError) as raised:
        resolve(did)
    return raised.value.reason


@pytest.mark.parametrize("header", ["Retry-After", "RateLimit-Reset"])
def test_it_calls_a_rate_limited_host_again_only_after_the_time_it_names(
        network: IdentityNetwork, header: str) -> None:
    if header == "Retry-After":
        network.plc.answer_429(1, retry_after=2)
    else:
        network.plc.answer_429(1, ratelimit_reset=int(time.time()) + 3)
    limited_at = time.monotonic()
    assert reason_of(DIDS[0]) == "backing-off"
    started = time.monotonic()
    assert [reason_of(did) for did in DIDS[1:4]] == ["backing-off"] * 3
    assert time.monotonic() - started < 0.1  # refused at once, not after a wait
    assert network.plc.request_count == 1
    while True:
        try:
            resolve(DIDS[0])
            break
        except IdentityError as exc:
            assert exc.reason == "backing-off"
            time.sleep(0.1)
    first, second = network.plc.requests
    # Retry-After named 2 s; RateLimit-Reset named a whole second 2 to 3 s ahead of the test's clock.
    assert second.at - first.at >= (1.9 if header == "Retry-After" else 1.0)
    assert time.monotonic() - limited_at < 4


def test_it_waits_longer_after_each_server_error_from_the_third_in_a_row(network: IdentityNetwork) -> None:
    network.plc.answer_500(4)
    # Two failures in a row leave the host usable (one slow answer of the PLC must not stop every resolution).
    assert reason_of(DIDS[0]) == "unavailable"
    assert reason_of(DIDS[1]) == "unavailable"
    assert reason_of(DIDS[2]) == "unavailable"
    assert reason_of(DIDS[3]) == "backing-off"
    # A DID that failed waits on its own too (10 s): each attempt after a failure is of another DID.
    candidates = iter(DIDS[4:])
    did = next(candidates)
    while len(network.plc.requests) < 5:
        try:
            resolve(did)
        except IdentityError as exc:
            assert exc.reason in ("backing-off", "unavailable")
            did = next(candidates) if exc.reason == "unavailable" else did
            time.sleep(0.05)
    third, fourth, fifth = (request.at for request in network.plc.requests[2:])
    assert 0.95 <= fourth - third < 1.5  # waited 1 s after the third failure in a row
    assert 1.95 <= fifth - fourth < 2.5  # 2 s after the fourth


def test_it_runs_at_most_the_configured_requests_at_once_per_host(
        network: IdentityNetwork, settings: Settings) -> None:
    settings.IDENTITY_CONCURRENCY = 2
    settings.IDENTITY_TIMEOUT = 3.0
    network.plc.delay = 0.3
    def resolve_in_thread(did: str) -> None:
        try:
            resolve(did)
        finally:
            connection.close()  # the thread's own, which would otherwise outlive the test database

    threads = [threading.Thread(target=resolve_in_thread, args=(did,)) for did in DIDS[:6]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    arrivals = sorted(request.at for request in network.plc.requests)
    assert len(arrivals) == 6
    # With two slots and 0.3 s per answer, a third request starts only when one of the first two ended.
    assert all(later - earlier >= 0.28 for earlier, later in zip(arrivals, arrivals[2:], strict=False))


@pytest.mark.parametrize("url", ["http://example.com/x", "https://127.0.0.1/x", "https://[::1]/x", "https://localhost/x",
                                 "https://printer.local/x", "https://user:secret@example.com/x", "ftp://example.com/x",
                                 "https://example.internal/x", "https:///x"])
def test_it_refuses_urls_other_than_https_to_a_public_domain_name(url: str) -> None:
    client = Outbound(timeout=1.0, concurrency=1, host_overrides={})
    with pytest.raises(OutboundError) as raised:
        client.get(url, max_bytes=1024)
    assert raised.value.reason == "refused"


def test_it_refuses_an_answer_larger_than_the_callers_limit(network: IdentityNetwork) -> None:
    client = Outbound(timeout=1.0, concurrency=1, host_overrides={})
    network.plc.documents[DIDS[0]] = {"id": DIDS[0], "padding": "x" * 5000}
    assert len(client.get(f"{network.plc.url}/{DIDS[0]}", max_bytes=6000, trusted=True)) > 5000
    with pytest.raises(OutboundError) as raised:
        client.get(f"{network.plc.url}/{DIDS[0]}", max_bytes=4000, trusted=True)
    assert raised.value.reason == "too-large"


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Retry-After": "30"}, 30.0),
    ({"Retry-After": "Thu, 01 Jan 2015 00:01:40 GMT"}, 100.0),
    ({"RateLimit-Reset": "1420070420"}, 20.0),  # a Unix time, as Bluesky's PDSes send
    ({"RateLimit-Reset": "45"}, 45.0),  # seconds, as the IETF draft says
    ({"Retry-After": "999999"}, 3600.0),
    ({"Retry-After": "soon"}, None),
    ({}, None),
])
def test_it_reads_the_wait_a_rate_limited_answer_asks_for(headers: dict[str, str], expected: float | None) -> None:
    now = 1420070400.0  # 2015-01-01T00:00:00Z
    assert rate_limit_wait(httpx.Headers(headers), now=now) == expected
