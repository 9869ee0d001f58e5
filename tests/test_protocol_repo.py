"""protocol.mst and protocol.repo: the MST against the interop fixtures, real firehose commits verified as
Sync v1.1 asks (signature, inversion proof), real repository exports, and tampered copies of each failing
with the right reason."""

import json
import mmap
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import libipld
import pytest

from protocol.car import block_spans, car_roots
from protocol.cid import cid_for_block, cid_from_text
from protocol.crypto import CURVE_ORDER, P256, PrivateKey, PublicKey, atproto_signing_key, parse_multikey
from protocol.mst import EMPTY_TREE_CID, Node, Tree, common_prefix_length, decode_node, encode_node, key_height
from protocol.repo import SignedCommit, SyncError, read_commit, verify_commit_event, verify_repository
from protocol.testing import car_of_cids
from relaysim.repos import SimRepo
from relaysim.scenarios import from_json_value
from relaysim.simulation import tid
from tests.conftest import FIXTURES, SCENARIOS, fixture_files

MST = FIXTURES / "interop" / "mst"
PROOF_CASES = json.loads((FIXTURES / "interop" / "firehose" / "commit-proof-fixtures.json").read_text())
REPOS = FIXTURES / "repos"


def car_blocks(car: bytes) -> dict[bytes, bytes]:
    return {cid: car[start:end] for cid, (start, end) in block_spans(car).items()}


def verify(body: dict[str, Any], key: PublicKey | None) -> SignedCommit:
    return verify_commit_event(body, block_spans(body["blocks"]), key)


def reason_of(body: dict[str, Any], key: PublicKey | None) -> str:
    with pytest.raises(SyncError) as failure:
        verify(body, key)
    return failure.value.reason


# --- the MST ---------------------------------------------------------------------------------------------

def test_it_computes_the_key_heights_of_the_fixtures() -> None:
    cases = json.loads((MST / "key_heights.json").read_text())
    assert [key_height(case["key"].encode()) for case in cases] == [case["height"] for case in cases]
    keys = [line for line in (MST / "example_keys.txt").read_text().splitlines() if line and line[0] != "#"]
    assert len(keys) > 100
    assert all(key_height(key.encode()) == int(key[1]) for key in keys)  # the digit after the letter


def test_it_computes_the_common_prefixes_of_the_fixtures() -> None:
    for case in json.loads((MST / "common_prefix.json").read_text()):
        assert common_prefix_length(case["left"].encode(), case["right"].encode()) == case["len"], case


@pytest.mark.parametrize("case", PROOF_CASES, ids=[case["comment"] for case in PROOF_CASES])
def test_it_builds_the_fixture_trees_and_inverts_their_commits_from_the_proof_blocks_alone(
        case: dict[str, Any]) -> None:
    leaf = cid_from_text(case["leafValue"])
    store: dict[bytes, bytes] = {}
    tree = Tree(None, store.get)
    for key in case["keys"]:
        assert tree.put(key.encode(), leaf) is None
    store.update(tree.encode_changes())
    assert libipld.encode_cid(tree.root_cid()) == case["rootBeforeCommit"]
    for key in case["adds"]:
        assert tree.put(key.encode(), leaf) is None
    for key in case["dels"]:
        assert tree.delete(key.encode()) == leaf
    store.update(tree.encode_changes())
    assert libipld.encode_cid(tree.root_cid()) == case["rootAfterCommit"]
    # The covering proof of the changed keys is exactly the fixture's.
    proof = {node.cid for key in case["adds"] + case["dels"] for node in tree.covering_proof(key.encode())}
    assert {libipld.encode_cid(cid) for cid in proof} == set(case["blocksInProof"])

    proof_blocks = {cid: store[cid] for cid in map(cid_from_text, case["blocksInProof"])}
    inverted = Tree(cid_from_text(case["rootAfterCommit"]), proof_blocks.get)
    for key in case["dels"]:
        assert inverted.put(key.encode(), leaf) is None
    for key in case["adds"]:
        assert inverted.delete(key.encode()) == leaf
    assert libipld.encode_cid(inverted.root_cid()) == case["rootBeforeCommit"]


def test_it_gives_one_tree_per_key_set_whatever_the_order_of_changes() -> None:
    value = cid_for_block(b"record")
    keys = [f"app.bsky.feed.post/{tid(1_700_000_000_000_000 + step * 7919, 3)}".encode() for step in range(600)]
    forward = Tree(None, {}.get)
    for key in keys:
        forward.put(key, value)
    shuffled = Tree(None, {}.get)
    for key in keys[::-2] + keys[::2] + [b"com.example.gone/a", b"com.example.gone/b"]:
        shuffled.put(key, value)
    shuffled.delete(b"com.example.gone/a")
    shuffled.delete(b"com.example.gone/b")
    assert shuffled.root_cid() == forward.root_cid()
    for key in keys:
        assert forward.get(key) == value
        assert forward.delete(key) == value
    assert forward.delete(keys[0]) is None
    assert forward.root_cid() == EMPTY_TREE_CID
    assert libipld.encode_cid(EMPTY_TREE_CID) == "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"


def test_it_refuses_nodes_that_are_not_canonical() -> None:
    value = cid_for_block(b"record")
    keys = [b"app.bsky.feed.like/3l2", b"app.bsky.feed.like/3l3"]
    canonical = encode_node(Node(keys, [value, value], [None, None, None]))
    assert decode_node(canonical).keys == keys
    entry = {"k": keys[1], "p": 0, "t": None, "v": value}
    uncompressed = libipld.encode_dag_cbor({"e": [{"k": keys[0], "p": 0, "t": None, "v": value}, entry], "l": None})
    unsorted = encode_node(Node(keys[::-1], [value, value], [None, None, None]))
    extra_field = libipld.encode_dag_cbor({"e": [{**entry, "x": 1}], "l": None})
    for block in (uncompressed, unsorted, extra_field, b"\xa1ae\x80", b"\xff"):
        with pytest.raises(ValueError):
            decode_node(block)


# --- firehose commits -------------------------------------------------------------------------------------

def scenario_commits() -> list[tuple[str, dict[str, Any], bool, PublicKey | None]]:
    """(scenario, #commit body, dropped by a correct relay, the account's key) of every scenario."""
    commits = []
    for path in fixture_files(SCENARIOS, "*.json"):
        if path.name.startswith("firehose_commit_"):
            continue
        scenario = json.loads(path.read_text())
        keys = {account["identity"]["did"]: parse_multikey(account["identity"]["keys"]["atproto"]["publicKeyMultibase"])
                for account in scenario["accounts"]}
        for message in scenario["messages"]:
            if message["frame"]["header"].get("t") == "#commit":
                body = from_json_value(message["frame"]["body"])
                commits.append((path.stem, body, bool(message.get("drop")), keys.get(body["repo"])))
    return commits


SCENARIO_COMMITS = scenario_commits()
SYNC_COMMITS = [body for _, body, dropped, _ in SCENARIO_COMMITS if not dropped and "prevData" in body]


def test_it_verifies_the_real_commits_of_the_relay_scenarios_with_their_accounts_keys() -> None:
    assert len(SYNC_COMMITS) >= 6  # commits with prevData: the inversion proof ran on each
    for scenario, body, dropped, key in SCENARIO_COMMITS:
        assert key is not None
        if dropped and scenario == "rev_ordering":  # the fixture's relay refuses these for their rev
            assert reason_of(body, key) == "rev-mismatch"
            continue
        commit = verify(body, key)
        assert (commit.did, commit.rev, commit.version) == (body["repo"], body["rev"], 3)


def firehose_commit(name: str) -> dict[str, Any]:
    return from_json_value(json.loads((SCENARIOS / f"firehose_commit_{name}.json").read_text()))


@pytest.mark.parametrize("name", ["4621317030", "4621317332", "4621332152", "4623075231"])
def test_it_verifies_the_pre_sync_commit_fixtures_without_a_key(name: str) -> None:
    body = firehose_commit(name)
    assert "prevData" not in body  # from before Sync v1.1: the ops are checked against the new tree only
    commit = verify(body, None)
    assert commit.rev == body["rev"] and commit.did == body["repo"]
    # Their CARs carry no inversion proof; indigo's own tests say the same of the first three.
    body_with_prev = {**body, "prevData": cid_for_block(b"unknown")}
    if name == "4623075231":
        assert reason_of(body_with_prev, None) == "inversion-failed"  # inverts, to another root
    else:
        with pytest.raises(SyncError, match="missing") as failure:
            verify(body_with_prev, None)
        assert failure.value.reason == "inversion-failed"


def rebuilt(body: dict[str, Any], change: Callable[[dict[bytes, bytes]], None]) -> dict[str, Any]:
    """The body with its CAR rebuilt after ``change`` edited its blocks (CID -> bytes, in place)."""
    blocks = car_blocks(body["blocks"])
    change(blocks)
    return {**body, "blocks": car_of_cids(car_roots(body["blocks"]), blocks.items())}


def with_commit(body: dict[str, Any], commit_block: bytes) -> dict[str, Any]:
    """The body with another commit block (under its own CID)."""
    commit_cid = cid_for_block(commit_block)

    def swap(blocks: dict[bytes, bytes]) -> None:
        del blocks[body["commit"]]
        blocks[commit_cid] = commit_block

    return {**rebuilt(body, swap), "commit": commit_cid}


def search_path(tree: Tree, key: bytes) -> list[bytes]:
    """The CIDs of the nodes from the root to the one holding ``key``."""
    path = []
    for node in tree.covering_proof(key):
        path.append(node.cid)
        if key in node.keys:
            return path
    raise AssertionError(f"{key!r} is not in the tree")


def profile_update() -> tuple[dict[str, Any], PublicKey]:
    for _, body, _, key in SCENARIO_COMMITS:
        if body in SYNC_COMMITS and body["ops"][0]["action"] == "update" and key is not None:
            return body, key
    raise AssertionError("no update commit in the scenarios")


def test_it_fails_tampered_commits_with_the_reason_of_their_fault() -> None:
    body, key = profile_update()
    verify(body, key)
    op = body["ops"][0]
    commit = read_commit(car_blocks(body["blocks"])[body["commit"]])
    other_key = PrivateKey.generate(seed=b"someone else").public_key

    def flip_first_byte(cid: bytes) -> Callable[[dict[bytes, bytes]], None]:
        def change(blocks: dict[bytes, bytes]) -> None:
            blocks[cid] = bytes((blocks[cid][0] ^ 1,)) + blocks[cid][1:]
        return change

    def drop(cid: bytes) -> Callable[[dict[bytes, bytes]], None]:
        return lambda blocks: blocks.pop(cid) and None

    flipped_sig = commit.sig[:10] + bytes((commit.sig[10] ^ 1,)) + commit.sig[11:]
    mst_nodes = [cid for cid in car_blocks(body["blocks"]) if cid not in (body["commit"], op["cid"])]
    cases = {
        "cid-mismatch": rebuilt(body, flip_first_byte(op["cid"])),
        "missing-block": rebuilt(body, drop(op["cid"])),
        "ops-invalid": {**body, "ops": [op, op]},
        "commit-invalid": rebuilt(body, drop(body["commit"])),
        "repo-mismatch": {**body, "repo": "did:plc:someoneelseentirely00"},
        "rev-mismatch": {**body, "rev": tid(1_800_000_000_000_000, 1)},
        "bad-signature": with_commit(body, replace(commit, sig=flipped_sig).encode()),
        "inversion-failed": {**body, "prevData": commit.data},
    }
    for reason, tampered in cases.items():
        assert reason_of(tampered, key) == reason, reason
    assert reason_of(body, other_key) == "bad-signature"
    assert reason_of({**body, "ops": [{**op, "action": "move"}]}, key) == "ops-invalid"
    assert reason_of({**body, "ops": [{**op, "prev": None}]}, key) == "ops-invalid"  # an update needs its prev
    assert reason_of({**body, "ops": [{**op, "cid": body["commit"]}]}, key) == "inversion-failed"
    # Every node on the op's path is needed to undo it (the CAR's other nodes prove its neighbours).
    path = search_path(Tree(commit.data, car_blocks(body["blocks"]).get), op["path"].encode())
    assert path[0] == commit.data and set(path) <= set(mst_nodes)
    for cid in path:
        with pytest.raises(SyncError, match="missing") as failure:
            verify(rebuilt(body, drop(cid)), key)
        assert failure.value.reason == "inversion-failed"
    # The signature only is skipped without a key; with the MST check off, a wrong prevData passes.
    assert verify(with_commit(body, replace(commit, sig=flipped_sig).encode()), None).sig == flipped_sig
    assert verify_commit_event(cases["inversion-failed"], block_spans(body["blocks"]), key, check_mst=False)


def test_it_refuses_a_version_2_commit_in_an_event() -> None:
    body, _ = profile_update()
    commit = read_commit(car_blocks(body["blocks"])[body["commit"]])
    legacy = replace(commit, version=2, rev=None)
    assert reason_of(with_commit(body, legacy.encode()), None) == "commit-invalid"
    with pytest.raises(SyncError) as failure:  # the caller's block_spans refuses a CAR that is not one
        verify_commit_event({**body, "blocks": None}, {}, None)
    assert failure.value.reason == "car-invalid"


# --- whole repositories ---------------------------------------------------------------------------------

def fixture_repo(name: str) -> tuple[bytes, dict[str, Any], PublicKey]:
    document = json.loads((REPOS / f"{name}.didDoc.json").read_text())
    key = atproto_signing_key(document, document["id"])
    assert key is not None
    return (REPOS / f"{name}.repo.car").read_bytes(), document, key


def assert_records_are_real(repository: Any, count: int) -> None:
    """The records are the MST's: in key order, each block present and a record of its collection."""
    paths = [path for path, _ in repository.records]
    assert len(paths) == count and paths == sorted(paths) and len(set(paths)) == count
    for path, cid in repository.records:
        record = libipld.decode_dag_cbor(repository.block(cid))
        assert record["$type"] == path.split("/")[0]


def test_it_verifies_a_real_repository_against_its_did_document() -> None:
    car, document, key = fixture_repo("paul_staging")
    repository = verify_repository(car, document["id"], key)
    assert repository.commit.did == document["id"] and repository.commit.version == 2  # an export from 2023
    assert repository.commit_cid == car_roots(car)[0]
    assert_records_are_real(repository, 185)


def test_it_refuses_the_high_s_signature_of_a_p256_fixture_repository() -> None:
    """fakermaker's P-256 commit was signed before atproto required low-S signatures: its CIDs and MST
    verify, its signature verifies only once S is lowered, so the export as it is must be refused."""
    car, document, key = fixture_repo("fakermaker")
    with pytest.raises(SyncError) as failure:
        verify_repository(car, document["id"], key)
    assert failure.value.reason == "bad-signature"
    repository = verify_repository(car, document["id"], None)
    assert_records_are_real(repository, 142)
    commit = repository.commit
    lowered = commit.sig[:32] + (CURVE_ORDER[P256] - int.from_bytes(commit.sig[32:], "big")).to_bytes(32, "big")
    assert key.verify(commit.unsigned_bytes(), lowered)


def test_it_refuses_a_fixture_repository_signed_for_another_did() -> None:
    """greenground's export names did:plc:kzcq... while its document is did:plc:wqgd...'s (the same key
    signed both): the export is not that account's repository."""
    car, document, key = fixture_repo("greenground")
    with pytest.raises(SyncError) as failure:
        verify_repository(car, document["id"], key)
    assert failure.value.reason == "repo-mismatch"
    commit = read_commit(car_blocks(car)[car_roots(car)[0]])
    repository = verify_repository(car, commit.did, key)
    assert_records_are_real(repository, 2)


@pytest.mark.parametrize("name", ["paul_staging", "fakermaker", "greenground"])
def test_it_refuses_a_real_repository_once_any_byte_of_it_is_changed(name: str) -> None:
    """Bytes all over each export (header, lengths, CIDs, records, MST nodes, the commit) changed one at a time.
    fakermaker's high-S signature and greenground's other DID are what its own test says: checked as they pass."""
    car, _, key = fixture_repo(name)
    did = read_commit(car_blocks(car)[car_roots(car)[0]]).did
    checked_key = None if name == "fakermaker" else key
    verify_repository(car, did, checked_key)
    for at in range(0, len(car), max(len(car) // 300, 1)):
        changed = car[:at] + bytes((car[at] ^ 0x01,)) + car[at + 1:]
        with pytest.raises(SyncError):
            verify_repository(changed, did, checked_key)


def test_it_reads_a_repository_through_a_memory_map() -> None:
    car, document, key = fixture_repo("paul_staging")
    with (REPOS / "paul_staging.repo.car").open("rb") as file, \
            mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        from_map = verify_repository(mapped, document["id"], key)
        from_view = verify_repository(memoryview(mapped), document["id"], key)
        assert from_map.records == from_view.records == verify_repository(car, document["id"], key).records
        assert from_view.block(from_view.records[0][1]) == car_blocks(car)[from_view.records[0][1]]
        del from_map, from_view  # a view of the map left alive would keep it from closing


def small_repo() -> tuple[SimRepo, PrivateKey]:
    key = PrivateKey.generate(seed=b"tamper")
    repo = SimRepo("did:plc:tamperedrepositoryaaaaa", key)
    clock = 1_700_000_000_000_000
    for step in range(60):
        clock += 1000
        repo.apply([("create", f"app.bsky.feed.like/{tid(clock - 1, 2)}", {"$type": "app.bsky.feed.like",
                                                                           "n": step})], rev=tid(clock, 2))
    return repo, key


def relinked(repo: SimRepo, key: PrivateKey, change_node: Callable[[Node], bytes]) -> bytes:
    """The repo's export with the node that holds its first record replaced by ``change_node``'s block,
    every ancestor re-linked and the commit signed again: only the MST rules can catch it."""
    car = repo.export_car()
    blocks = car_blocks(car)
    tree = Tree(repo.data, blocks.get)
    target = next(iter(repo.records)).encode()
    path = search_path(tree, target)
    old_cid = path[-1]
    new_block = change_node(decode_node(blocks[old_cid]))
    new_cid = cid_for_block(new_block)
    del blocks[old_cid]
    blocks[new_cid] = new_block
    for ancestor in reversed(path[:-1]):
        block = blocks.pop(ancestor).replace(old_cid, new_cid)
        old_cid, new_cid = ancestor, cid_for_block(block)
        blocks[new_cid] = block
    unsigned = SignedCommit(did=repo.did, version=3, data=new_cid, rev=repo.rev, prev=None, sig=b"")
    commit_block = replace(unsigned, sig=key.sign(unsigned.unsigned_bytes())).encode()
    del blocks[repo.head]
    commit_cid = cid_for_block(commit_block)
    return car_of_cids([commit_cid], [(commit_cid, commit_block), *blocks.items()])


def unsorted(node: Node) -> bytes:
    return encode_node(Node(node.keys[::-1], node.values[::-1], node.subtrees[::-1]))


def uncompressed(node: Node) -> bytes:
    return libipld.encode_dag_cbor({"l": node.subtrees[0], "e": [
        {"k": key, "p": 0, "t": right if right is None or type(right) is bytes else right.cid, "v": value}
        for key, value, right in zip(node.keys, node.values, node.subtrees[1:], strict=True)]})


def wrong_layer(node: Node) -> bytes:
    """The first key renamed to a key of another layer that sorts in the same place."""
    first = node.keys[0]
    for suffix in range(1000):
        candidate = first + b"%03d" % suffix
        if key_height(candidate) != key_height(first) and (len(node.keys) == 1 or candidate < node.keys[1]):
            return encode_node(Node([candidate, *node.keys[1:]], node.values, node.subtrees))
    raise AssertionError("no key of another layer found")


@pytest.mark.parametrize("change_node", [unsorted, uncompressed, wrong_layer])
def test_it_refuses_a_signed_repository_whose_mst_breaks_the_rules(change_node: Callable[[Node], bytes]) -> None:
    repo, key = small_repo()
    public_key = key.public_key
    assert len(verify_repository(repo.export_car(), repo.did, public_key).records) == 60
    with pytest.raises(SyncError) as failure:
        verify_repository(relinked(repo, key, change_node), repo.did, public_key)
    assert failure.value.reason == "mst-invalid"


def test_it_fails_a_tampered_export_with_the_reason_of_its_fault() -> None:
    repo, key = small_repo()
    car = repo.export_car()
    blocks = car_blocks(car)
    record_cid = next(iter(repo.records.values()))
    node_cid = next(cid for cid in blocks if cid not in repo.records.values() and cid != repo.head)
    commit = read_commit(blocks[repo.head])

    def export(change: Callable[[dict[bytes, bytes]], Any], root: bytes | None = None) -> bytes:
        copy = dict(blocks)
        change(copy)
        return car_of_cids([root or repo.head], copy.items())

    flipped = commit.sig[:5] + bytes((commit.sig[5] ^ 0x80,)) + commit.sig[6:]
    resigned_commit = replace(commit, sig=flipped).encode()
    cases = {
        "cid-mismatch": export(lambda copy: copy.update({record_cid: copy[record_cid][:-1] + b"\x00"})),
        "missing-block": export(lambda copy: copy.pop(record_cid)),
        "bad-signature": export(lambda copy: copy.update({cid_for_block(resigned_commit): resigned_commit}),
                                root=cid_for_block(resigned_commit)),
        "commit-invalid": export(lambda copy: copy.pop(repo.head)),
        "car-invalid": b"\x05garbage",
    }
    for reason, tampered in cases.items():
        with pytest.raises(SyncError) as failure:
            verify_repository(tampered, repo.did, key.public_key)
        assert failure.value.reason == reason, reason
    with pytest.raises(SyncError, match="MST node") as failure:
        verify_repository(export(lambda copy: copy.pop(node_cid)), repo.did, key.public_key)
    assert failure.value.reason == "missing-block"
    with pytest.raises(SyncError) as failure:
        verify_repository(car, "did:plc:someoneelseentirely00", key.public_key)
    assert failure.value.reason == "repo-mismatch"
    # A copy of a block under its CID with other bytes, before the true one; and a block named by another codec.
    with pytest.raises(SyncError) as failure:
        verify_repository(car_of_cids([repo.head], [(record_cid, b"\xa0"), *blocks.items()]), repo.did,
                          key.public_key)
    assert failure.value.reason == "cid-mismatch"
    assert verify_repository(car_of_cids([repo.head], [*blocks.items(), *blocks.items()]), repo.did, key.public_key)
    raw_cid = b"\x01\x55" + record_cid[2:]
    with pytest.raises(SyncError) as failure:
        verify_repository(car_of_cids([repo.head], [*blocks.items(), (raw_cid, blocks[record_cid])]), repo.did,
                          key.public_key)
    assert failure.value.reason == "cid-mismatch"
