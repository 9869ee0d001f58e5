"""Property-based tests of the frame decoder: whatever bytes the relay sends, decoding a frame, reading
its event and its commit ops either succeeds or raises ``FrameError``; nothing else may escape and stop
run_firehose or a worker."""

import struct
from typing import Any

import libipld
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.cid import cid_for_block
from protocol.commit import OP_ACTIONS, commit_ops
from protocol.frames import (
    MAX_SEQ,
    OP_ERROR,
    OP_MESSAGE,
    REPO_EVENT_TYPES,
    Frame,
    FrameError,
    RepoEvent,
    decode_frame,
    event_of,
)
from protocol.testing import encode_car, encode_frame
from relaysim.scenarios import load_scenario
from tests.conftest import SCENARIOS, fixture_files

FIXTURE_FRAMES = [
    message.frame
    for path in fixture_files(SCENARIOS, "*.json")
    for message in load_scenario(path)
]
COLLECTIONS = ("app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow", "com.example.thing")
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read_everything(data: bytes) -> Frame | None:
    """What run_firehose and the worker do with a frame; returns it when every step accepted it."""
    try:
        frame = decode_frame(data)
        if frame.is_error:
            return frame
        event = event_of(frame)
        if event.type == "#commit":
            commit_ops(frame.body)
        return frame
    except FrameError as exc:
        assert str(exc), "a FrameError must say what is wrong"
        return None


# Values DAG-CBOR can encode: anything libipld.encode_dag_cbor accepts.
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
dag_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | text | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(text, children, max_size=5),
    max_leaves=20,
)
tids = st.from_regex(r"[2-7a-j][2-7a-z]{12}", fullmatch=True)
dids = st.from_regex(r"did:plc:[a-z2-7]{24}", fullmatch=True)


def cbor_head(major: int, argument: int) -> bytes:
    if argument < 24:
        return bytes([major << 5 | argument])
    for info, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if argument < 256 ** struct.calcsize(fmt):
            return bytes([major << 5 | info]) + struct.pack(fmt, argument)
    raise ValueError(argument)


# Raw CBOR items, most of which DAG-CBOR forbids: any tag, simple values, NaN and half floats,
# indefinite lengths, non-string map keys, invalid UTF-8, reserved header values.
raw_cbor = st.recursive(
    st.builds(cbor_head, st.integers(0, 1), st.integers(0, 2**64 - 1))
    | st.binary(max_size=20).map(lambda b: cbor_head(2, len(b)) + b)
    | st.binary(max_size=20).map(lambda b: cbor_head(3, len(b)) + b)
    | st.integers(0, 255).map(lambda v: bytes([0xF8, v]) if v >= 32 else bytes([0xE0 | v]) if v < 24 else b"\xf7")
    | st.sampled_from([b"\xf9\x7e\x00", b"\xfa\x7f\xc0\x00\x00", b"\xfb\x7f\xf0\x00\x00\x00\x00\x00\x00",
                       b"\x1c", b"\x5f\x41\x00\xff", b"\xff"]),
    lambda children: st.lists(children, max_size=4).map(lambda items: cbor_head(4, len(items)) + b"".join(items))
    | st.lists(children, max_size=4).map(lambda items: b"\x9f" + b"".join(items) + b"\xff")
    | st.lists(st.tuples(children, children), max_size=3).map(
        lambda pairs: cbor_head(5, len(pairs)) + b"".join(k + v for k, v in pairs))
    | st.tuples(st.integers(0, 2**16), children).map(lambda tag: cbor_head(6, tag[0]) + tag[1]),
    max_leaves=12,
)


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    record = draw(st.dictionaries(text, dag_values, max_size=4))
    record["$type"] = draw(st.sampled_from(COLLECTIONS))
    return record


@st.composite
def commit_frames(draw: st.DrawFn) -> tuple[bytes, int, str, list[tuple[str, str, dict[str, Any] | None]]]:
    """A valid #commit frame, with what decoding it must give back: seq, repo and (action, path, record)."""
    seq = draw(st.integers(1, MAX_SEQ))
    did = draw(dids)
    # A real commit's CAR always has the signed commit block as its root, even when it only deletes.
    blocks = [libipld.encode_dag_cbor({"did": did, "version": 3, "rev": draw(tids), "data": None})]
    ops, expected = [], []
    for _ in range(draw(st.integers(1, 5))):
        path = f"{draw(st.sampled_from(COLLECTIONS))}/{draw(tids)}"
        if draw(st.booleans()):
            record = draw(records())
            block = libipld.encode_dag_cbor(record)
            blocks.append(block)
            ops.append({"action": "create", "path": path, "cid": cid_for_block(block)})
            expected.append(("create", path, record))
        else:
            ops.append({"action": "delete", "path": path, "cid": None})
            expected.append(("delete", path, None))
    body = {"seq": seq, "repo": did, "rev": draw(tids), "ops": ops, "time": "2024-01-01T00:00:00.000Z",
            "blocks": encode_car([cid_for_block(blocks[0])], blocks)}
    return encode_frame({"op": 1, "t": "#commit"}, body), seq, did, expected


valid_frames = st.sampled_from(FIXTURE_FRAMES) | commit_frames().map(lambda generated: generated[0])


@PROPERTY_SETTINGS
@given(commit_frames())
def test_it_reads_back_every_valid_commit(generated: tuple[bytes, int, str, list[Any]]) -> None:
    data, seq, did, expected = generated
    frame = decode_frame(data)
    assert event_of(frame) == RepoEvent(seq=seq, type="#commit", did=did)
    ops = commit_ops(frame.body)
    assert [(op.action, f"{op.collection}/{op.rkey}", op.record) for op in ops] == expected


@PROPERTY_SETTINGS
@given(st.binary(max_size=2000))
def test_it_raises_only_frame_errors_on_arbitrary_bytes(data: bytes) -> None:
    read_everything(data)


@PROPERTY_SETTINGS
@given(st.lists(raw_cbor, min_size=0, max_size=3).map(b"".join))
def test_it_raises_only_frame_errors_on_arbitrary_cbor(data: bytes) -> None:
    read_everything(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(valid_frames))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "duplicate"]))
        if kind == "flip" and position < len(data):
            data[position] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[position:]
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[position:position + draw(st.integers(1, 16))]
        elif kind == "duplicate":
            data[position:position] = data[position:position + draw(st.integers(1, 64))]
    return bytes(data)


@PROPERTY_SETTINGS
@given(mutated())
def test_it_raises_only_frame_errors_on_mutated_valid_frames(data: bytes) -> None:
    read_everything(data)


def either(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return valid | dag_values


@st.composite
def car_or_not(draw: st.DrawFn) -> Any:
    blocks = [libipld.encode_dag_cbor(draw(dag_values)) for _ in range(draw(st.integers(0, 3)))]
    car = encode_car([cid_for_block(block) for block in blocks[:1]], blocks)
    return draw(st.sampled_from([car, car[: len(car) // 2], car + b"\x00", draw(dag_values)]))


@st.composite
def ops_of_any_shape(draw: st.DrawFn) -> Any:
    op = st.fixed_dictionaries({}, optional={
        "action": either(st.sampled_from(OP_ACTIONS)),
        "path": either(st.builds("{}/{}".format, st.sampled_from(COLLECTIONS), tids) | text),
        "cid": either(st.binary(min_size=36, max_size=36).map(lambda digest: b"\x01\x71\x12\x20" + digest[4:])),
    })
    return draw(either(st.lists(either(op), max_size=4)))


body_of_any_shape = st.fixed_dictionaries({}, optional={
    "seq": either(st.integers(-5, 2**64 - 1)),
    "repo": either(dids),
    "did": either(dids),
    "blocks": car_or_not(),
    "ops": ops_of_any_shape(),
    "rev": either(tids),
    "time": dag_values,
})
header_of_any_shape = st.fixed_dictionaries({}, optional={
    "op": either(st.sampled_from([OP_MESSAGE, OP_ERROR])),
    "t": either(st.sampled_from([*REPO_EVENT_TYPES, "#info", "#unknown"])),
})


@PROPERTY_SETTINGS
@given(either(header_of_any_shape), either(body_of_any_shape))
def test_it_raises_only_frame_errors_on_well_formed_cbor_of_wrong_types(header: Any, body: Any) -> None:
    frame = read_everything(libipld.encode_dag_cbor(header) + libipld.encode_dag_cbor(body))
    if frame is not None and not frame.is_error:
        assert frame.type in REPO_EVENT_TYPES


@PROPERTY_SETTINGS
@given(body_of_any_shape)
def test_it_raises_only_frame_errors_from_commit_ops_on_any_body(body: dict[str, Any]) -> None:
    try:
        ops = commit_ops(body)
    except FrameError:
        return
    assert all(op.action in OP_ACTIONS and (op.record is None) == (op.action == "delete") for op in ops)
