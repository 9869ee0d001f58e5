"""A PDS that answers 429 or 500, a truncated CAR, a CAR whose signature or CIDs are wrong: each leaves its
repository ``failed`` with the reason, and every other repository is stored as if nothing had happened; one PDS
is asked for no more repositories at once than BACKFILL_PDS_CONCURRENCY."""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from pytest_django.fixtures import Settings

from appview.models import BackfillRepo
from appview.sync.backfill import Scope
from protocol.crypto import PrivateKey
from relaysim.bulk_repos import did_document
from relaysim.repos import SimRepo
from tests.backfill_helpers import RELAY, backfill, generated, local_network, sim_repo, states, stored_records
from tests.worker_helpers import assert_aggregates_match_rows

pytestmark = pytest.mark.django_db(transaction=True)

WHEN = "2025-01-01T00:00:00.000Z"
HEALTHY, RATE_LIMITED, FAILING, TRUNCATING = "pds.sim.test", "busy.sim.test", "broken.sim.test", "cut.sim.test"


@dataclass
class TamperedRepo:
    """A repository whose export has one byte of a record block changed (its CID no longer matches)."""

    repo: SimRepo

    @property
    def head(self) -> bytes | None:
        return self.repo.head

    @property
    def rev(self) -> str | None:
        return self.repo.rev

    @property
    def collections(self) -> Mapping[str, int]:
        return self.repo.collections

    def export_car(self) -> bytes:
        car = bytearray(self.repo.export_car())
        text = b"tampered text"
        at = car.index(text)
        car[at] ^= 0x20
        return bytes(car)


def posts(count: int) -> list[tuple[str, dict[str, str]]]:
    return [(f"app.bsky.feed.post/3laaaaaaaa{index:02d}", {"$type": "app.bsky.feed.post", "text": "tampered text",
                                                             "createdAt": WHEN}) for index in range(count)]


def test_it_marks_each_faulty_repository_failed_with_its_reason_and_stores_the_others(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings.VERIFY_COMMITS = True
    settings.BACKFILL_MAX_TRIES = 1
    with local_network(settings, monkeypatch, hosts=(HEALTHY, RATE_LIMITED, FAILING, TRUNCATING)) as network:
        healthy = generated(network, tmp_path, accounts=12, records=40, seed=3)
        faulty = {
            "fetch-rate-limited": sim_repo(network, 20, posts(3), host=RATE_LIMITED),
            "fetch-unavailable": sim_repo(network, 21, posts(3), host=FAILING),
            "car-invalid": sim_repo(network, 22, posts(30), host=TRUNCATING),
            "bad-signature": sim_repo(network, 23, posts(3)),
            "cid-mismatch": sim_repo(network, 24, posts(3)),
        }
        network.pds(RATE_LIMITED).answer_429(100, retry_after=1)
        network.pds(FAILING).answer_500(100)
        network.pds(TRUNCATING).truncate_next(100)
        resigned = faulty["bad-signature"]  # its document names another key than the one that signed it
        network.plc.documents[resigned.did] = did_document(resigned.did, PrivateKey.generate(seed=b"other"),
                                                           f"https://{HEALTHY}")
        tampered = faulty["cid-mismatch"]
        network.host(tampered.did, TamperedRepo(tampered), network.plc.documents[tampered.did])
        backfill(Scope(dids=(*healthy, *(repo.did for repo in faulty.values())), relay=RELAY))

    outcome = states()
    for reason, repo in faulty.items():
        state, error = outcome[repo.did]
        assert (state, error.partition(":")[0]) == ("failed", reason), error
        assert stored_records(repo.did) == []
    for did, records in healthy.items():
        assert outcome[did] == ("done", "")
        assert stored_records(did) == records
    failed = BackfillRepo.objects.filter(state="failed")
    assert {(row.tries, row.due_at) for row in failed} == {(1, None)}  # no try left: not due again
    assert_aggregates_match_rows()


def test_it_tries_a_failed_repository_again_after_its_backoff(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.BACKFILL_MAX_TRIES = 3
    with local_network(settings, monkeypatch) as network:
        repo = sim_repo(network, 30, posts(2))
        network.pds().answer_500(1)
        network.pds().answer_429(1, retry_after=1)
        backfill(Scope(dids=(repo.did,), relay=RELAY))
        fetches = [request for request in network.pds().requests if request.path.endswith("getRepo")]
    row = BackfillRepo.objects.get()
    # 500 (a try, then the PDS is backed off from), 429 honoured with its Retry-After, then the repository.
    assert (row.state, row.tries, row.error, len(fetches)) == ("done", 0, "", 3)
    assert fetches[2].at - fetches[1].at >= 1.0
    assert stored_records(repo.did) != []


@pytest.mark.parametrize("limit", [1, 3])
def test_it_asks_one_pds_for_no_more_repositories_at_once_than_its_limit(
        limit: int, settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings.BACKFILL_PDS_CONCURRENCY = limit
    with local_network(settings, monkeypatch) as network:
        repos = generated(network, tmp_path, accounts=8, records=20, seed=5)
        network.pds().delay = 0.2  # every answer takes a while: loaders pile up on the PDS if they may
        backfill(Scope(dids=tuple(repos), relay=RELAY), concurrency=6, processes=0)
        assert {state for state, _ in states().values()} == {"done"}
        assert network.pds().peak_concurrency == limit
