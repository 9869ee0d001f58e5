"""Each real repository export of tests/fixtures/repos, served by the local PDS, is stored record for record: the
collection/rkey/CID list of its MST.

Two fixtures need adjusted inputs (tests/test_protocol_repo.py shows why): fakermaker's commit carries a high-S
P-256 signature from before atproto required low-S ones, so it is loaded with VERIFY_COMMITS off; greenground's
commit names did:plc:kzcq... while its document is did:plc:wqgd...'s (one key signed both), so it is served
under the DID its commit names, with its document's id changed to match. Every document is given the local PDS
as its endpoint and no handle (nothing to confirm by DNS)."""

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import libipld
import pytest
from pytest_django.fixtures import Settings

from appview.models import Actor, BackfillRepo
from appview.sync.backfill import Scope
from protocol.car import block_spans, car_roots
from protocol.repo import read_commit, verify_repository
from tests.backfill_helpers import RELAY, backfill, local_network, stored_records
from tests.conftest import FIXTURES
from tests.worker_helpers import assert_aggregates_match_rows

pytestmark = pytest.mark.django_db(transaction=True)

REPOS = FIXTURES / "repos"
# Fixture -> whether its signature can be checked (see the module docstring).
FIXTURE_REPOS = {"paul_staging": True, "greenground": True, "fakermaker": False}


@dataclass
class ExportRepo:
    """A repository export served as it is (a relaysim.pds.HostedRepo)."""

    car: bytes
    head: bytes
    rev: str | None
    collections: Mapping[str, int] = field(default_factory=dict)

    def export_car(self) -> bytes:
        return self.car


def hosted_fixture(name: str) -> tuple[str, ExportRepo, dict[str, Any]]:
    car = (REPOS / f"{name}.repo.car").read_bytes()
    head = car_roots(car)[0]
    start, end = block_spans(car)[head]
    commit = read_commit(car[start:end])
    document = json.loads((REPOS / f"{name}.didDoc.json").read_text())
    document.pop("alsoKnownAs", None)
    document = {**document, "id": commit.did,
                "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
                             "serviceEndpoint": "https://pds.sim.test"}]}
    for method in document["verificationMethod"]:
        method["controller"] = commit.did
    return commit.did, ExportRepo(car=car, head=head, rev=commit.rev), document


@pytest.mark.parametrize("name", sorted(FIXTURE_REPOS))
def test_it_stores_a_real_repository_record_for_record(
        name: str, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.VERIFY_COMMITS = FIXTURE_REPOS[name]
    did, repo, document = hosted_fixture(name)
    expected = sorted((path, libipld.encode_cid(cid)) for path, cid in verify_repository(repo.car, did, None).records)
    with local_network(settings, monkeypatch) as network:
        network.host(did, repo, document)
        progress = backfill(Scope(dids=(did,), relay=RELAY))
    state = BackfillRepo.objects.get()
    assert (state.state, state.error, progress.refused) == ("done", "", 0)
    assert stored_records(did) == expected
    assert state.records == len(expected) > 0
    actor = Actor.objects.get(did=did)
    assert actor.floor_rev == state.rev == (repo.rev or "2222222222222")
    assert_aggregates_match_rows()
