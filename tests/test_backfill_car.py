"""The pieces under backfill: a repository export read through the compact block index (appview.sync.backfill_car)
finds what protocol.repo finds and refuses what it refuses, and the generated repositories (relaysim.bulk_repos)
are the canonical trees of their records."""

import mmap
import random
from pathlib import Path

import libipld
import pytest

from appview.sync.backfill_car import CarIndex, open_repository
from protocol.car import block_spans, car_roots
from protocol.cid import cid_for_block
from protocol.crypto import PrivateKey
from protocol.mst import Tree
from protocol.repo import SyncError, verify_repository
from protocol.testing import car_of_cids
from relaysim.bulk_repos import build_mst, generate_network, write_repository
from tests.conftest import FIXTURES, fixture_files

DID = "did:plc:bulkrepositorytestaaaaaa"


def test_it_indexes_every_block_of_the_fixture_exports_as_the_block_spans_do() -> None:
    for path in fixture_files(FIXTURES / "repos", "*.repo.car"):
        car = path.read_bytes()
        index = CarIndex(car)
        spans = block_spans(car)
        assert index.count == len(spans)
        for cid, (start, end) in spans.items():
            assert index.block(cid) == car[start:end]
            assert cid in index
        missing = cid_for_block(b"not in any fixture")
        assert index.block(missing) is None and missing not in index and b"short" not in index


def test_it_reads_a_mapped_export_as_verify_repository_reads_it(tmp_path: Path) -> None:
    network = generate_network(tmp_path, accounts=1, records=lambda index: 3000, seed=4)
    did, repo = next(iter(network.repos.items()))
    key = network.keys[did].public_key
    with repo.path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        streamed = open_repository(mapped, did, key)
        assert list(streamed.records()) == verify_repository(repo.export_car(), did, key).records
        assert streamed.rev == repo.rev
        del streamed  # nothing may keep a view of the map once it closes


def test_it_keeps_one_copy_of_a_block_repeated_many_times() -> None:
    block = libipld.encode_dag_cbor({"$type": "app.bsky.feed.like", "n": 1})
    cid = cid_for_block(block)
    others = [libipld.encode_dag_cbor({"n": number}) for number in range(50)]
    car = car_of_cids([cid], [(cid, block)] * 5000 + [(cid_for_block(other), other) for other in others])
    index = CarIndex(car)
    assert index.count == 51
    assert index.block(cid) == block and all(index.block(cid_for_block(other)) == other for other in others)


def blocks_of(car: bytes) -> list[tuple[bytes, bytes]]:
    return [(cid, car[start:end]) for cid, (start, end) in block_spans(car).items()]


def with_a_false_first_copy(car: bytes) -> bytes:
    """The export with a block of other bytes under the CID of its first block, before the true one."""
    blocks = blocks_of(car)
    return car_of_cids(car_roots(car), [(blocks[0][0], b"\xa0"), *blocks])


def with_a_block_of_another_codec(car: bytes) -> bytes:
    cid, block = blocks_of(car)[0]
    return car_of_cids(car_roots(car), [*blocks_of(car), (b"\x01\x55" + cid[2:], block)])


@pytest.mark.parametrize(("spoil", "reason"), [
    (lambda car: car[:len(car) - 7], "car-invalid"),
    (lambda car: car.replace(b"liked", b"LIKED", 1), "cid-mismatch"),
    (with_a_false_first_copy, "cid-mismatch"),
    (with_a_block_of_another_codec, "cid-mismatch"),
])
def test_it_refuses_a_truncated_or_tampered_export(spoil: object, reason: str, tmp_path: Path) -> None:
    key = PrivateKey.generate(seed=b"tampered")
    records = [(f"app.bsky.feed.like/3laaaaaaaa{n:03d}", libipld.encode_dag_cbor({"text": f"liked {n}"}))
               for n in range(20)]
    repo = write_repository(tmp_path / "repo.car", DID, key, records, rev="3laaaaaaaaaa2")
    car = spoil(repo.export_car())  # type: ignore[operator]
    with pytest.raises(SyncError) as failure:
        open_repository(car, DID, key.public_key)
    assert failure.value.reason == reason


def test_it_builds_the_one_canonical_tree_of_the_records() -> None:
    rng = random.Random(3)
    entries = sorted({(f"app.bsky.feed.post/{rng.getrandbits(60):016x}".encode(),
                       cid_for_block(rng.randbytes(8))) for _ in range(2000)})
    tree = Tree(None, lambda cid: None)
    for path, cid in reversed(entries):  # another order of insertion: the same tree
        tree.put(path, cid)
    root, nodes = build_mst(entries)
    assert root == tree.root_cid()
    assert {cid for cid, _ in nodes} == {node.cid for node in tree.nodes()}
