"""relaysim.pds.LocalPds: the com.atproto.sync reads of a PDS over the simulator's repositories, with its fault
knobs, on loopback."""

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import libipld
import pytest

from protocol.crypto import atproto_signing_key
from protocol.repo import SyncError, verify_repository
from relaysim.pds import HostedAccounts, LocalPds
from relaysim.signed import SignedFirehose

ACTORS = 60


@pytest.fixture(scope="module")
def firehose() -> SignedFirehose:
    firehose = SignedFirehose(seed=13, actors=ACTORS)
    for _ in firehose.frames(1500):
        pass
    return firehose


@pytest.fixture
def pds(firehose: SignedFirehose) -> Iterator[LocalPds]:
    with LocalPds(firehose.accounts) as server:
        yield server


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as http:
        yield http


def xrpc(client: httpx.Client, pds: LocalPds, method: str, **params: Any) -> httpx.Response:
    return client.get(f"{pds.url}/xrpc/{method}", params=params)


def key_of(accounts: HostedAccounts, did: str) -> Any:
    return atproto_signing_key(accounts.documents[did], did)


def test_it_serves_each_repository_whole_as_a_car_that_verifies(
        firehose: SignedFirehose, pds: LocalPds, client: httpx.Client) -> None:
    accounts = firehose.accounts
    assert len(accounts.repos) == ACTORS
    records = 0
    for did, repo in accounts.repos.items():
        answer = xrpc(client, pds, "com.atproto.sync.getRepo", did=did)
        assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/vnd.ipld.car"
        repository = verify_repository(answer.content, did, key_of(accounts, did))
        assert (repository.commit_cid, repository.commit.rev) == (repo.head, repo.rev)
        assert dict(repository.records) == dict(repo.records)
        records += len(repository.records)
    assert records > 1000


def test_it_answers_the_latest_commit(firehose: SignedFirehose, pds: LocalPds, client: httpx.Client) -> None:
    for did, repo in list(firehose.accounts.repos.items())[:10]:
        answer = xrpc(client, pds, "com.atproto.sync.getLatestCommit", did=did).json()
        assert answer == {"cid": libipld.encode_cid(repo.head or b""), "rev": repo.rev}


def test_it_refuses_what_a_pds_refuses(firehose: SignedFirehose, pds: LocalPds, client: httpx.Client) -> None:
    did = next(iter(firehose.accounts.repos))
    for method in ("com.atproto.sync.getRepo", "com.atproto.sync.getLatestCommit"):
        unknown = xrpc(client, pds, method, did="did:plc:nobodyhereaaaaaaaaaaaaaa")
        assert (unknown.status_code, unknown.json()["error"]) == (404, "RepoNotFound")
        assert (xrpc(client, pds, method, did="alice").status_code, xrpc(client, pds, method).status_code) == (400, 400)
        for status, error in (("deactivated", "RepoDeactivated"), ("takendown", "RepoTakendown"),
                              ("suspended", "RepoSuspended")):
            firehose.accounts.statuses[did] = status
            try:
                refused = xrpc(client, pds, method, did=did)
            finally:
                del firehose.accounts.statuses[did]
            assert (refused.status_code, refused.json()["error"]) == (400, error)
    missing = xrpc(client, pds, "com.atproto.sync.getBlob", did=did, cid="bafy")
    assert (missing.status_code, missing.json()["error"]) == (501, "MethodNotImplemented")
    for limit in ("0", "1001", "ten"):
        assert xrpc(client, pds, "com.atproto.sync.listRepos", limit=limit).status_code == 400
    assert xrpc(client, pds, "com.atproto.sync.listReposByCollection", collection="not an nsid").status_code == 400


def test_it_lists_every_repository_once_in_pages(firehose: SignedFirehose, pds: LocalPds, client: httpx.Client) -> None:
    accounts = firehose.accounts
    deactivated = sorted(accounts.repos)[3]
    accounts.statuses[deactivated] = "deactivated"
    try:
        pages: list[list[dict[str, Any]]] = []
        cursor: str | None = None
        while True:
            params = {"limit": 7} if cursor is None else {"limit": 7, "cursor": cursor}
            page = xrpc(client, pds, "com.atproto.sync.listRepos", **params).json()
            pages.append(page["repos"])
            cursor = page.get("cursor")
            if cursor is None:
                break
    finally:
        del accounts.statuses[deactivated]
    assert [len(page) for page in pages] == [7] * (ACTORS // 7) + [ACTORS % 7]
    listed = [entry for page in pages for entry in page]
    assert [entry["did"] for entry in listed] == sorted(accounts.repos)
    for entry in listed:
        repo = accounts.repos[entry["did"]]
        assert (entry["head"], entry["rev"]) == (libipld.encode_cid(repo.head or b""), repo.rev)
        expected = {"active": False, "status": "deactivated"} if entry["did"] == deactivated else {"active": True}
        assert {name: entry[name] for name in ("active", "status") if name in entry} == expected
    default = xrpc(client, pds, "com.atproto.sync.listRepos").json()
    assert len(default["repos"]) == ACTORS and "cursor" not in default


def test_it_lists_the_repositories_holding_a_collection(
        firehose: SignedFirehose, pds: LocalPds, client: httpx.Client) -> None:
    accounts = firehose.accounts
    for collection in ("app.bsky.graph.list", "app.bsky.actor.profile", "com.example.nothing"):
        holding = sorted(did for did, repo in accounts.repos.items() if collection in repo.collections)
        dids: list[str] = []
        cursor = ""
        while True:
            page = xrpc(client, pds, "com.atproto.sync.listReposByCollection", collection=collection, limit=4,
                        cursor=cursor).json()
            dids += [entry["did"] for entry in page["repos"]]
            if "cursor" not in page:
                break
            cursor = page["cursor"]
        assert dids == holding
        if collection != "com.example.nothing":
            assert 0 < len(holding) < ACTORS


def test_its_fault_knobs_refuse_or_cut_the_next_answers(
        firehose: SignedFirehose, pds: LocalPds, client: httpx.Client) -> None:
    did = max(firehose.accounts.repos, key=lambda did: len(firehose.accounts.repos[did].records))
    key = key_of(firehose.accounts, did)

    def get_repo() -> httpx.Response:
        return xrpc(client, pds, "com.atproto.sync.getRepo", did=did)

    pds.answer_429(2, retry_after=3)
    pds.answer_500(1)
    statuses = [get_repo() for _ in range(3)]
    assert [answer.status_code for answer in statuses] == [429, 429, 500]
    assert statuses[0].headers["Retry-After"] == "3"
    whole = get_repo().content
    pds.truncate_next(1)
    cut = get_repo()
    assert cut.status_code == 200 and cut.content == whole[: len(whole) // 2]
    with pytest.raises(SyncError):
        verify_repository(cut.content, did, key)
    assert get_repo().content == whole
    pds.delay = 0.2
    started = time.monotonic()
    get_repo()
    assert time.monotonic() - started >= 0.2
    requests = pds.requests[-7:]
    assert {(request.path, request.query) for request in requests} == {
        ("/xrpc/com.atproto.sync.getRepo", f"did={did.replace(':', '%3A')}")}
    assert pds.request_count >= 7


def test_it_serves_consistent_repositories_while_the_simulator_changes_them() -> None:
    firehose = SignedFirehose(seed=14, actors=20)
    accounts = firehose.accounts
    failures: list[str] = []
    fetched = 0
    done = threading.Event()

    def fetch_all() -> None:
        nonlocal fetched
        with httpx.Client(timeout=5) as own:
            while not done.is_set():
                with accounts.lock:
                    dids = list(accounts.repos)
                    keys = {did: key_of(accounts, did) for did in dids}
                for did in dids:
                    try:
                        answer = own.get(f"{pds.url}/xrpc/com.atproto.sync.getRepo", params={"did": did})
                        if answer.status_code in (400, 404):
                            continue  # deactivated or deleted meanwhile
                        verify_repository(answer.content, did, keys[did])
                    except (SyncError, httpx.HTTPError) as exc:
                        failures.append(f"{did}: {type(exc).__name__}: {exc}")
                    fetched += 1

    with LocalPds(accounts) as pds:
        reader = threading.Thread(target=fetch_all)
        reader.start()
        try:
            # At least 3,000 events, and on until the reader has checked a hundred exports taken meanwhile
            # (how many it takes during 3,000 events depends on the machine's speed).
            produced = 0
            while produced < 3000 or (fetched <= 100 and produced < 100_000):
                produced += sum(1 for _ in firehose.frames(100))
        finally:
            done.set()
            reader.join(timeout=30)
    assert failures == [] and fetched > 100
