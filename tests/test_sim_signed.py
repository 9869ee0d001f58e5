"""relaysim.signed: the simulator's stream of real, signed commits of repositories that a local PLC directory,
PDS and DNS server serve, and the commit faults that spoil only what is emitted."""

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import dns.resolver
import httpx
import libipld
import pytest
from websockets.asyncio.client import connect

from protocol.car import block_spans, car_roots
from protocol.crypto import P256, PublicKey, atproto_signing_key, handle_of, pds_endpoint
from protocol.frames import Frame, decode_frame
from protocol.repo import SyncError, read_commit, verify_commit_event, verify_repository
from relaysim.pds import LocalNetwork
from relaysim.relay_server import PATH, RelayOptions, RelaySimulator
from relaysim.signed import COMMIT_FAULTS, CommitFault, SignedFirehose
from relaysim.simulation import renumbered

ACTORS = 300
EVENTS = 3000
# What verify_commit_event says of a commit each fault spoils.
FAULT_REASONS = {"bad-signature": "bad-signature", "missing-block": "missing-block", "cid-mismatch": "cid-mismatch"}


@pytest.fixture
def firehose() -> SignedFirehose:
    return SignedFirehose(seed=21, actors=ACTORS)


@pytest.fixture
def network(firehose: SignedFirehose) -> Iterator[LocalNetwork]:
    with LocalNetwork(firehose.accounts) as running:
        yield running


_client = httpx.Client(timeout=5)  # one for every request: a client of its own per request costs 50 ms


def get(url: str) -> httpx.Response:
    return _client.get(url)


def plc_key(network: LocalNetwork, did: str) -> PublicKey:
    answer = get(f"{network.plc.url}/{did}")
    assert answer.status_code == 200
    document = answer.json()
    assert pds_endpoint(document) == "https://pds.sim.test"
    key = atproto_signing_key(document, did)
    assert key is not None
    return key


def txt_did(network: LocalNetwork, handle: str) -> str | None:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [network.dns.address[0]]
    resolver.port = network.dns.address[1]
    try:
        answer = resolver.resolve(f"_atproto.{handle}", "TXT", lifetime=2)
    except dns.resolver.NXDOMAIN:
        return None
    return b"".join(answer[0].strings).decode().removeprefix("did=")


def commits(frames: list[tuple[int, bytes]]) -> Iterator[tuple[int, dict[str, Any]]]:
    for seq, frame in frames:
        decoded = decode_frame(frame)
        if decoded.type == "#commit":
            yield seq, decoded.body


def verified(body: dict[str, Any], key: PublicKey | None) -> Any:
    return verify_commit_event(body, block_spans(body["blocks"]), key)


def test_it_signs_each_commit_with_the_key_of_the_document_the_plc_serves(
        firehose: SignedFirehose, network: LocalNetwork) -> None:
    keys: dict[str, PublicKey] = {}
    chain: dict[str, tuple[str, bytes]] = {}  # repo -> (rev, data) of its last commit
    counts = {"#commit": 0, "#sync": 0}
    for _, frame in firehose.frames(EVENTS):
        decoded = decode_frame(frame)
        body = decoded.body
        if decoded.type == "#commit":
            did = body["repo"]
            if did not in keys:  # fetched when first seen: the account may be deleted later in the stream
                keys[did] = plc_key(network, did)
            commit = verified(body, keys[did])
            if did in chain:
                assert (body["since"], body["prevData"]) == chain[did]
            chain[did] = (body["rev"], commit.data)
        elif decoded.type == "#sync":
            # The repository's current commit, signed like the others.
            car = body["blocks"]
            [root] = car_roots(car)
            start, end = block_spans(car)[root]
            commit = read_commit(car[start:end])
            did = body["did"]
            assert commit.rev == body["rev"] and commit.did == did
            assert plc_key(network, did).verify(commit.unsigned_bytes(), commit.sig)
            chain[did] = (commit.rev, commit.data)
        counts[decoded.type] = counts.get(decoded.type, 0) + 1
    assert counts["#commit"] > 0.95 * EVENTS and counts["#sync"] > 0
    assert len(keys) > ACTORS / 2
    assert any(key.curve == P256 for key in keys.values()) and any(key.curve != P256 for key in keys.values())
    assert firehose.commits == counts["#commit"]


def test_it_keeps_the_plc_pds_and_dns_in_step_with_identity_and_account_events(
        firehose: SignedFirehose, network: LocalNetwork) -> None:
    seen: set[str] = set()
    # Each event is checked before the next is made: what follows may change the accounts again.
    for _, frame in firehose.frames(EVENTS * 3):
        decoded = decode_frame(frame)
        body = decoded.body
        if decoded.type == "#identity":
            answer = get(f"{network.plc.url}/{body['did']}")
            if answer.status_code == 200:  # not deleted since
                assert handle_of(answer.json()) == body["handle"]
                assert txt_did(network, body["handle"]) == body["did"]
        elif decoded.type == "#account":
            status = body.get("status", "active")
            repo = get(f"{network.pds.url}/xrpc/com.atproto.sync.getRepo?did={body['did']}")
            if status == "deleted":
                assert repo.status_code == 404 and repo.json()["error"] == "RepoNotFound"
                assert get(f"{network.plc.url}/{body['did']}").status_code == 410
            elif status == "active":
                assert repo.status_code == 200
            else:
                expected = {"deactivated": "RepoDeactivated", "takendown": "RepoTakendown",
                            "suspended": "RepoSuspended"}[status]
                assert (repo.status_code, repo.json()["error"]) == (400, expected)
        seen.add(f"{decoded.type} {body.get('status', '')}")
    assert {"#identity ", "#account ", "#account deactivated", "#account deleted"} <= seen


def test_it_gives_the_same_bytes_for_the_same_seed() -> None:
    first = list(SignedFirehose(seed=4, actors=60).frames(400))
    again = list(SignedFirehose(seed=4, actors=60).frames(400))
    other = list(SignedFirehose(seed=5, actors=60).frames(400))
    assert first == again
    assert [frame for _, frame in first] != [frame for _, frame in other]


@pytest.mark.parametrize("kind", COMMIT_FAULTS)
def test_it_spoils_the_emitted_commit_as_each_fault_says_and_never_the_repository(kind: str) -> None:
    firehose = SignedFirehose(seed=8, actors=ACTORS, faults=[CommitFault(kind, every=40)])
    frames = []
    keys: dict[str, PublicKey | None] = {}
    for seq, frame in firehose.frames(1200):
        frames.append((seq, frame))
        did = decode_frame(frame).body.get("repo")
        if did is not None and did not in keys:  # taken when first seen: the account may be deleted later
            keys[did] = atproto_signing_key(firehose.accounts.documents[did], did)
    injected = list(firehose.injected)
    assert len(injected) >= 1200 // 40 - 2 and {fault.kind for fault in injected} == {kind}
    spoiled = {fault.seq: fault for fault in injected}
    emitted: dict[str, str] = {}  # repo -> rev of its last emitted commit
    emitted_revs: set[str] = set()
    broken_chains = 0
    for seq, body in commits(frames):
        did = body["repo"]
        if seq in spoiled:
            assert (spoiled[seq].did, spoiled[seq].rev) == (did, body["rev"])
            if kind == "too-big":
                assert (body["tooBig"], body["blocks"], body["ops"]) == (True, b"", [])
            else:
                with pytest.raises(SyncError) as failure:
                    verified(body, keys.get(did))
                assert failure.value.reason == FAULT_REASONS[kind]
        else:
            verified(body, keys[did])
        if did in emitted and body["since"] != emitted[did]:
            broken_chains += 1
        emitted[did] = body["rev"]
        emitted_revs.add(body["rev"])
    if kind == "gap":
        assert list(spoiled) == [None]  # never emitted
        assert not {fault.rev for fault in injected} & emitted_revs
        assert broken_chains >= 1
    else:
        assert broken_chains == 0
    # The repositories stay whole: their exports verify and hold what they should.
    with LocalNetwork(firehose.accounts) as network:
        for did in {fault.did for fault in injected} & set(firehose.accounts.repos):
            car = get(f"{network.pds.url}/xrpc/com.atproto.sync.getRepo?did={did}").content
            repository = verify_repository(car, did, atproto_signing_key(firehose.accounts.documents[did], did))
            assert dict(repository.records) == dict(firehose.accounts.repos[did].records)


def test_it_injects_a_fault_due_at_one_commit_once_and_defers_block_faults_to_a_commit_with_a_record() -> None:
    firehose = SignedFirehose(seed=8, actors=ACTORS, faults=[CommitFault("bad-signature", at=30),
                                                            CommitFault("missing-block", every=1)])
    bodies = dict(commits(list(firehose.frames(300))))
    [bad_signature] = [fault.seq for fault in firehose.injected if fault.kind == "bad-signature"]
    assert sorted(bodies).index(bad_signature) == 29
    # Every commit is due a missing block: those without a record (deletes only) pass it on, and so does the one
    # that carries the bad signature.
    with_records = {seq for seq, body in bodies.items() if any(op["cid"] for op in body["ops"])}
    assert len(with_records) < len(bodies)
    missing = [fault.seq for fault in firehose.injected if fault.kind == "missing-block"]
    assert set(missing) == with_records - {bad_signature}


def test_it_reads_fault_options() -> None:
    assert CommitFault.parse("bad-signature=every:100") == CommitFault("bad-signature", every=100)
    assert CommitFault.parse("gap=at:7") == CommitFault("gap", at=7)
    for text in ("gap", "gap=sometimes:3", "gap=every:x", "typo=every:3", "gap=every:0", "gap=at:-1"):
        with pytest.raises(ValueError):
            CommitFault.parse(text)
    assert [number for number in range(1, 13) if CommitFault("gap", every=4).due(number)] == [4, 8, 12]


def test_a_second_relay_serves_the_same_events_under_its_own_seqs() -> None:
    firehose = SignedFirehose(seed=3, actors=60)
    source, mirrored = itertools.tee(firehose.frames(300))
    first = RelaySimulator(source, options=RelayOptions(start_immediately=True))
    second = RelaySimulator(mirrored, options=RelayOptions(start_immediately=True, seq_offset=5000),
                            first_seq=5001)

    async def read(port: int) -> list[Frame]:
        async with connect(f"ws://127.0.0.1:{port}{PATH}?cursor=0", max_size=None, open_timeout=5) as ws:
            return [decode_frame(await asyncio.wait_for(ws.recv(), 10)) for _ in range(300)]

    async def scenario() -> tuple[list[Frame], list[Frame]]:
        ports = [await first.start("127.0.0.1", 0), await second.start("127.0.0.1", 0)]
        try:
            return await read(ports[0]), await read(ports[1])
        finally:
            await first.stop()
            await second.stop()

    on_first, on_second = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert [frame.body["seq"] for frame in on_first] == list(range(1, 301))
    assert [frame.body["seq"] for frame in on_second] == list(range(5001, 5301))
    for one, two in zip(on_first, on_second, strict=True):
        assert {**one.body, "seq": 0} == {**two.body, "seq": 0} and one.type == two.type


def test_it_renumbers_a_frame_and_leaves_what_is_not_an_event() -> None:
    _, frame = next(SignedFirehose(seed=3, actors=60).frames(1))
    again = renumbered(frame, 77)
    assert decode_frame(again).body == {**decode_frame(frame).body, "seq": 77}
    assert libipld.decode_dag_cbor_multi(again)[0] == libipld.decode_dag_cbor_multi(frame)[0]
    assert renumbered(b"\xff garbage", 5) == b"\xff garbage"
