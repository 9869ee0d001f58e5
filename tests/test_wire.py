from pathlib import Path

import libipld
import pytest

from protocol.cid import cid_for_block
from protocol.commit import commit_ops
from protocol.frames import MAX_BLOCKS_BYTES, MAX_OPS, FrameError, RepoEvent, decode_frame, event_of
from protocol.testing import encode_car, encode_frame
from relaysim.scenarios import load_scenario
from tests.conftest import SCENARIOS, fixture_files

SCENARIO_FILES = fixture_files(SCENARIOS, "*.json")
DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"


def commit_frame(**overrides: object) -> bytes:
    record = libipld.encode_dag_cbor({"$type": "app.bsky.feed.like", "createdAt": "2024-01-01T00:00:00Z"})
    body = {
        "seq": 31_000_000_001,
        "repo": DID,
        "rev": "3kabcdefghij2",
        "blocks": encode_car([cid_for_block(record)], [record]),
        "ops": [{"action": "create", "path": "app.bsky.feed.like/3kabc", "cid": cid_for_block(record)}],
        "time": "2024-01-01T00:00:00.000Z",
    }
    body.update(overrides)
    return encode_frame({"op": 1, "t": "#commit"}, body)


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: p.stem)
def test_it_decodes_every_fixture_frame(path: Path) -> None:
    for message in load_scenario(path):
        frame = decode_frame(message.frame)
        event = event_of(frame)
        assert (event.seq, event.type) == (message.seq, message.type)
        if event.type == "#commit":
            ops = commit_ops(frame.body)
            assert ops and all(op.record is not None for op in ops if op.action != "delete")


def test_it_reads_seqs_above_32_bits_and_records_from_blocks() -> None:
    frame = decode_frame(commit_frame())
    assert event_of(frame) == RepoEvent(seq=31_000_000_001, type="#commit", did=DID)
    (op,) = commit_ops(frame.body)
    assert op.uri(DID) == f"at://{DID}/app.bsky.feed.like/3kabc"
    assert op.cid is not None and op.cid.startswith("bafyrei")
    assert op.record == {"$type": "app.bsky.feed.like", "createdAt": "2024-01-01T00:00:00Z"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "expected a header and a body"),
        (b"\xff\x00garbage", "not valid DAG-CBOR"),
        (commit_frame()[:-7], "not valid DAG-CBOR"),
        (libipld.encode_dag_cbor({"op": "1", "t": "#commit"}) + libipld.encode_dag_cbor({}), "op must be 1 or -1"),
        (libipld.encode_dag_cbor([1]) + libipld.encode_dag_cbor({}), "must both be maps"),
        (libipld.encode_dag_cbor({"op": 1}) + libipld.encode_dag_cbor({}), "t must be a string"),
    ],
)
def test_it_rejects_undecodable_frames_with_one_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        decode_frame(data)


def test_it_rejects_oversize_frames_before_decoding() -> None:
    with pytest.raises(FrameError, match="exceeds the limit"):
        decode_frame(b"\x00" * 101, max_bytes=100)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"seq": "12"}, "seq must be a positive 64-bit integer"),
        ({"seq": 2**63}, "seq must be a positive 64-bit integer"),
        ({"seq": 0}, "seq must be a positive 64-bit integer"),
        ({"repo": "not a did"}, "invalid repo DID"),
        ({"blocks": "text"}, "blocks must be bytes"),
        ({"blocks": b"\x00" * (MAX_BLOCKS_BYTES + 1)}, "exceed"),
        ({"ops": {"a": 1}}, "ops must be a list"),
        ({"ops": [{}] * (MAX_OPS + 1)}, "more than 200"),
    ],
)
def test_it_checks_event_fields(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(FrameError, match=message):
        event_of(decode_frame(commit_frame(**overrides)))


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        ([{"action": "upsert", "path": "app.bsky.feed.like/3kabc"}], "action must be"),
        ([{"action": "delete", "path": "app.bsky.feed.like"}], "path must be collection/rkey"),
        ([{"action": "delete", "path": "not an nsid/3kabc"}], "not a valid NSID"),
        ([{"action": "delete", "path": "app.bsky.feed.like/.."}], "record key"),
        ([{"action": "create", "path": "app.bsky.feed.like/3kabc", "cid": None}], "no CID link"),
        (
            [{"action": "create", "path": "app.bsky.feed.like/3kabc", "cid": cid_for_block(b"other")}],
            "missing from the CAR",
        ),
    ],
)
def test_it_rejects_unusable_ops(ops: list[dict[str, object]], message: str) -> None:
    frame = decode_frame(commit_frame(ops=ops))
    with pytest.raises(FrameError, match=message):
        commit_ops(frame.body)


def test_it_rejects_blocks_that_are_not_a_car_file() -> None:
    frame = decode_frame(commit_frame(blocks=b"\x05hello"))
    with pytest.raises(FrameError, match="not a valid CAR file"):
        commit_ops(frame.body)
