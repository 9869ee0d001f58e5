"""relaysim.repos.SimRepo: real repositories whose commits and exports pass protocol.repo's verification."""

import random
from typing import Any

import libipld
import pytest

from protocol.car import block_spans, car_roots
from protocol.crypto import P256, PrivateKey, atproto_signing_key, handle_of, pds_endpoint
from protocol.mst import EMPTY_TREE_CID
from protocol.repo import read_commit, verify_commit_event, verify_repository
from relaysim.repos import SimRepo
from relaysim.simulation import tid
from tests.conftest import FIXTURES

DID = "did:plc:simrepotestaaaaaaaaaaaaa"
START_US = 1_700_000_000_000_000


class Clock:
    """Increasing revs, and record keys just below them."""

    def __init__(self) -> None:
        self.now = START_US

    def rev(self) -> str:
        self.now += 1000
        return tid(self.now, 9)

    def rkey(self, offset: int = 0) -> str:
        return tid(self.now + 1 + offset, 9)


def like(number: int) -> dict[str, Any]:
    return {"$type": "app.bsky.feed.like", "createdAt": "2025-01-01T00:00:00.000Z",
            "subject": {"uri": f"at://did:plc:someone/app.bsky.feed.post/{number}", "cid": "bafy"}}


def random_ops(rng: random.Random, repo: SimRepo, clock: Clock) -> list[tuple[str, str, dict[str, Any] | None]]:
    existing = list(repo.records)
    paths: set[str] = set()
    ops: list[tuple[str, str, dict[str, Any] | None]] = []
    for offset in range(rng.choice((1, 1, 2, 3, 5))):
        roll = rng.random()
        if existing and roll < 0.25:
            path = rng.choice(existing)
            action, record = ("delete", None) if roll < 0.15 else ("update", like(rng.randrange(10**6)))
        else:
            collection = rng.choice(("app.bsky.feed.like", "app.bsky.feed.post", "app.bsky.graph.follow"))
            path, action, record = f"{collection}/{clock.rkey(offset)}", "create", like(rng.randrange(10**6))
        if path not in paths:
            paths.add(path)
            ops.append((action, path, record))
    return ops


@pytest.mark.parametrize("curve", ["secp256k1", P256])
def test_it_writes_commits_that_verify_with_the_key_of_its_did_document(curve: str) -> None:
    rng = random.Random(5)
    repo = SimRepo(DID, PrivateKey.generate(curve, seed=b"writer"))
    document = repo.did_document("https://pds.example.com", "writer.example.com")
    key = atproto_signing_key(document, DID)
    assert key == repo.key.public_key
    clock = Clock()
    for _ in range(400):
        before_rev, before_data = repo.rev, repo.data
        ops = random_ops(rng, repo, clock)
        body = repo.apply(ops, rev=clock.rev())
        commit = verify_commit_event(body, block_spans(body["blocks"]), key)
        assert (body["since"], body["prevData"], body["repo"]) == (before_rev, before_data, DID)
        assert (commit.rev, commit.data, body["commit"]) == (repo.rev, repo.data, repo.head)
        assert car_roots(body["blocks"]) == [body["commit"]]
        assert (body["tooBig"], body["rebase"], body["blobs"]) == (False, False, [])
        for (action, path, record), op in zip(ops, body["ops"], strict=True):
            assert (op["action"], op["path"]) == (action, path)
            assert op["cid"] == (None if record is None else repo.records[path])
            assert ("prev" in op) == (action != "create")
    assert len(repo.records) > 300


def test_it_exports_a_repository_that_verifies_and_holds_what_was_applied() -> None:
    rng = random.Random(8)
    repo = SimRepo(DID, PrivateKey.generate(seed=b"exporter"))
    clock = Clock()
    applied: dict[str, dict[str, Any]] = {}
    for _ in range(300):
        ops = random_ops(rng, repo, clock)
        repo.apply(ops, rev=clock.rev())
        for _, path, record in ops:
            if record is None:
                del applied[path]
            else:
                applied[path] = record
    repository = verify_repository(repo.export_car(), DID, repo.key.public_key)
    assert repository.commit_cid == repo.head and repository.commit.rev == repo.rev
    assert dict(repository.records) == dict(repo.records)
    assert {path: libipld.decode_dag_cbor(repository.block(cid)) for path, cid in repository.records} == applied


def test_it_reaches_the_root_of_a_real_repository_by_applying_its_records() -> None:
    car = (FIXTURES / "repos" / "paul_staging.repo.car").read_bytes()
    spans = block_spans(car)
    start, end = spans[car_roots(car)[0]]
    real = verify_repository(car, read_commit(car[start:end]).did, None)
    repo = SimRepo(real.commit.did, PrivateKey.generate(seed=b"copy"))
    clock = Clock()
    records = list(real.records)
    random.Random(3).shuffle(records)
    for path, cid in records:
        repo.apply([("create", path, libipld.decode_dag_cbor(real.block(cid)))], rev=clock.rev())
    assert repo.data == real.commit.data
    assert dict(repo.records) == dict(real.records)


def test_it_empties_a_repository_and_fills_it_again() -> None:
    repo = SimRepo(DID, PrivateKey.generate(seed=b"empty"))
    key = repo.key.public_key
    clock = Clock()
    assert repo.data == EMPTY_TREE_CID and repo.head is None and repo.rev is None
    paths = [f"app.bsky.feed.like/{clock.rkey(offset)}" for offset in range(40)]
    first = repo.apply([("create", path, like(index)) for index, path in enumerate(paths)], rev=clock.rev())
    assert first["since"] is None and first["prevData"] == EMPTY_TREE_CID
    verify_commit_event(first, block_spans(first["blocks"]), key)
    for index in range(0, 40, 4):
        body = repo.apply([("delete", path, None) for path in paths[index:index + 4]], rev=clock.rev())
        verify_commit_event(body, block_spans(body["blocks"]), key)
    assert repo.data == EMPTY_TREE_CID and not repo.records
    assert verify_repository(repo.export_car(), DID, key).records == []
    again = repo.apply([("create", paths[0], like(1))], rev=clock.rev())
    assert again["prevData"] == EMPTY_TREE_CID
    verify_commit_event(again, block_spans(again["blocks"]), key)


def test_it_refuses_ops_that_do_not_fit_and_changes_nothing() -> None:
    repo = SimRepo(DID, PrivateKey.generate(seed=b"strict"))
    clock = Clock()
    path = f"app.bsky.feed.like/{clock.rkey()}"
    repo.apply([("create", path, like(1))], rev=clock.rev())
    state = (repo.rev, repo.head, repo.data, dict(repo.records))
    other = f"app.bsky.feed.like/{clock.rkey(5)}"
    refused = [
        ([("create", path, like(2))], clock.rev()),  # exists
        ([("update", other, like(2))], clock.rev()),  # does not exist
        ([("delete", other, None)], clock.rev()),
        ([("create", other, like(2)), ("delete", other, None)], clock.rev()),  # two ops on one path
        ([("create", other, like(2)), ("create", path, like(3))], clock.rev()),  # the second one fails
        ([("create", "not a path", like(2))], clock.rev()),
        ([("update", path, None)], clock.rev()),
        ([("create", other, like(2))], state[0]),  # rev not above the last
    ]
    for ops, rev in refused:
        with pytest.raises(ValueError):
            repo.apply(ops, rev=rev)
        assert (repo.rev, repo.head, repo.data, dict(repo.records)) == state
    with pytest.raises(ValueError):
        SimRepo("not-a-did", PrivateKey.generate(seed=b"x"))


def test_it_publishes_a_did_document_naming_its_key_handle_and_pds() -> None:
    repo = SimRepo(DID, PrivateKey.generate(seed=b"document"))
    document = repo.did_document("http://127.0.0.1:2583", "Alice.Test")
    assert document["id"] == DID
    assert atproto_signing_key(document, DID) == repo.key.public_key
    assert pds_endpoint(document) == "http://127.0.0.1:2583"
    assert handle_of(document) == "alice.test"
