"""Actors' handles come from their DID documents (SPEC section 12): the worker copies the handle each
resolution confirmed into the actor row (an #identity event has the document fetched again), a newer fetch
wins, and a confirmed handle is taken away from any other actor still holding it; an unconfirmed one
(handle.invalid) takes nothing from anyone."""

from datetime import datetime, timedelta

import pytest
from django.utils import timezone
from pytest_django.fixtures import Settings

from appview.models import Actor
from appview.sync.handles import copy_confirmed_handles
from harness.events import push
from identity import services
from identity.cache import store_identity
from identity.resolver import INVALID_HANDLE, Identity
from pipeline import redis_store
from tests.identity_helpers import document_of, identity_network, wait_for
from tests.worker_helpers import drain, event_frame

pytestmark = pytest.mark.django_db(transaction=True)

ALICE = "did:plc:aliceaaaaaaaaaaaaaaaaaaa"
MALLORY = "did:plc:mallorymmmmmmmmmmmmmmmmm"
WINDOW = timedelta(minutes=10)


def resolved(did: str, handle: str | None, *, at: datetime) -> None:
    document = {"id": did, "alsoKnownAs": [f"at://{handle}"] if handle else []}
    store_identity(Identity(did=did, handle=handle, signing_key=None, pds=None, fetched_at=at, document=document),
                   ttl=3600)


def handle_of(did: str) -> str | None:
    return Actor.objects.get(did=did).handle


def test_it_takes_a_confirmed_handle_from_the_document_and_from_whoever_held_it() -> None:
    Actor.objects.create(did=ALICE)
    Actor.objects.create(did=MALLORY, handle="alice.test")  # stale: alice.test now confirms for ALICE only
    resolved(ALICE, "alice.test", at=timezone.now())

    assert copy_confirmed_handles(fetched_within=WINDOW) == 2

    assert (handle_of(ALICE), handle_of(MALLORY)) == ("alice.test", INVALID_HANDLE)
    assert copy_confirmed_handles(fetched_within=WINDOW) == 0  # nothing newer: nothing changes


def test_it_never_takes_a_handle_away_for_an_unconfirmed_claim() -> None:
    Actor.objects.create(did=ALICE, handle="alice.test")
    Actor.objects.create(did=MALLORY)
    resolved(MALLORY, INVALID_HANDLE, at=timezone.now())  # its document named alice.test, which did not confirm

    copy_confirmed_handles(fetched_within=WINDOW)

    assert (handle_of(ALICE), handle_of(MALLORY)) == ("alice.test", INVALID_HANDLE)


def test_it_keeps_the_handle_of_the_newest_fetch() -> None:
    now = timezone.now()
    Actor.objects.create(did=ALICE, handle="new.test", handle_checked_at=now)
    resolved(ALICE, "old.test", at=now - timedelta(minutes=1))  # a slower resolution that finished later

    copy_confirmed_handles(fetched_within=WINDOW)

    assert handle_of(ALICE) == "new.test"
    resolved(ALICE, "newer.test", at=now + timedelta(seconds=1))
    copy_confirmed_handles(fetched_within=WINDOW)
    assert handle_of(ALICE) == "newer.test"


def test_it_takes_the_handle_an_identity_event_announces_once_the_document_confirms_it(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    with identity_network(settings, monkeypatch) as network:
        client = redis_store.connect()
        for seq, handle in enumerate(["alice.test", "bob.test"], start=1):
            network.plc.documents[ALICE] = document_of(ALICE, handle=handle)
            network.dns.handles = {handle: ALICE}
            push(client, [(seq, event_frame(seq, "#identity", did=ALICE, handle=handle))])
            drain()  # reads the event and fetches the document again, in the background
            wait_for(lambda: services.pending_resolutions() == 0, timeout=10)
            drain()  # copies the confirmed handle into the actor row
            assert handle_of(ALICE) == handle
