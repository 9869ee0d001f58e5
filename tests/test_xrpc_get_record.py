"""com.atproto.repo.getRecord answers every record of the relay scenarios exactly as the repo holds it: the
record block of each commit op, decoded by the test's own DAG-CBOR decoder (tests/dag_cbor_json.py) straight
into the data model's JSON form, is the reference; libipld, which the indexer uses, is not."""

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libipld
import pytest
from django.test import Client

from appview.indexing.sanitize import record_json
from harness.events import DID, TID, WHEN, push
from pipeline import redis_store
from protocol.cid import cid_for_block
from protocol.dagcbor import decode_record
from protocol.testing import car_of_cids, encode_frame
from relaysim.scenarios import load_scenario
from tests import dag_cbor_json
from tests.conftest import FIXTURES, SCENARIOS, fixture_files
from tests.worker_helpers import drain

pytestmark = pytest.mark.django_db(transaction=True)

SCENARIO_FILES = fixture_files(SCENARIOS, "*.json")
SHA2_256 = 0x12


@dataclass(frozen=True, slots=True)
class Write:
    """The last op of one path in a scenario."""

    seq: int
    action: str
    cid: str | None  # None for a delete
    record: dict[str, Any] | None  # the reference JSON; None for a delete
    forwarded: bool  # False: the relay dropped the message, so the worker never saw it
    invalid: bool  # the fixture marks the message invalid: the indexer may refuse it


def unwrap_bytes(value: Any) -> bytes:
    assert isinstance(value, dict) and set(value) == {"$bytes"}, f"not a byte string: {value!r}"
    text = value["$bytes"]
    return base64.b64decode(text + "=" * (-len(text) % 4))


def check_block(cid: str, block: bytes) -> None:
    """The block is the one its CID names (a CIDv1 base32 with a sha2-256 multihash)."""
    assert cid.startswith("b"), cid
    text = cid[1:].upper()
    binary = base64.b32decode(text + "=" * (-len(text) % 8))
    version, codec, function, length = binary[:4]
    assert (version, codec, function, length) == (1, 0x71, SHA2_256, 32), f"{cid}: not a dag-cbor sha2-256 CIDv1"
    assert binary[4:] == hashlib.sha256(block).digest(), f"{cid}: the block does not hash to its CID"


def message_flags(path: Path) -> list[tuple[bool, bool]]:
    """(drop, invalid) of each message of a fixture file, in order (load_scenario keeps only ``drop``)."""
    data = json.loads(path.read_text())
    if "messages" not in data:
        return [(False, False)]
    return [(bool(message.get("drop")), bool(message.get("invalid"))) for message in data["messages"]]


def final_writes(path: Path) -> tuple[list[Any], dict[tuple[str, str, str], Write]]:
    """The scenario's messages and, for each (did, collection, rkey) a commit op touched, its last op among the
    messages the relay forwards (or the last dropped one, when the relay forwarded none)."""
    messages = load_scenario(path)
    flags = message_flags(path)
    assert len(flags) == len(messages)
    final: dict[tuple[str, str, str], Write] = {}
    for message, (dropped, invalid) in zip(messages, flags, strict=True):
        assert message.dropped == dropped
        header, body = dag_cbor_json.decode_frame(message.frame)
        if header.get("t") != "#commit":
            continue
        blocks = dag_cbor_json.car_blocks(unwrap_bytes(body["blocks"]))
        for op in body["ops"]:
            collection, rkey = op["path"].split("/")
            key = (body["repo"], collection, rkey)
            cid = record = None
            if op["action"] in ("create", "update"):
                cid = op["cid"]["$link"]
                block = blocks[cid]
                check_block(cid, block)
                record = dag_cbor_json.decode(block)
                assert isinstance(record, dict), f"{op['path']}: the record is not a map"
            write = Write(seq=body["seq"], action=op["action"], cid=cid, record=record, forwarded=not dropped,
                          invalid=invalid)
            previous = final.get(key)
            # A forwarded op is never replaced by a dropped one: the worker only sees what the relay forwards.
            if previous is None or not dropped or not previous.forwarded:
                final[key] = write
    return messages, final


def get_record(client: Client, did: str, collection: str, rkey: str) -> tuple[int, dict[str, Any]]:
    response = client.get("/xrpc/com.atproto.repo.getRecord", {"repo": did, "collection": collection, "rkey": rkey})
    return response.status_code, json.loads(response.content)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def test_it_has_a_reference_decoder_that_tells_links_from_bytes() -> None:
    # {"a": CID link, "b": 36 bytes shaped like a binary CID, "c": 1.5, "d": -3, "e": [null, true]}
    binary_cid = bytes.fromhex("01711220") + bytes(range(32))
    encoded = (bytes([0xA5, 0x61]) + b"a" + bytes([0xD8, 42, 0x58, 37, 0x00]) + binary_cid
               + bytes([0x61]) + b"b" + bytes([0x58, 36]) + binary_cid
               + bytes([0x61]) + b"c" + bytes([0xFB]) + bytes.fromhex("3ff8000000000000")
               + bytes([0x61]) + b"d" + bytes([0x22])
               + bytes([0x61]) + b"e" + bytes([0x82, 0xF6, 0xF5]))
    link = "b" + base64.b32encode(binary_cid).decode().lower().rstrip("=")
    assert dag_cbor_json.decode(encoded) == {
        "a": {"$link": link},
        "b": {"$bytes": base64.b64encode(binary_cid).decode().rstrip("=")},
        "c": 1.5, "d": -3, "e": [None, True],
    }
    assert link.startswith("bafyrei")


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=[path.stem for path in SCENARIO_FILES])
def test_it_returns_each_record_as_the_repo_holds_it(path: Path) -> None:
    messages, final = final_writes(path)
    push(redis_store.connect(), [(m.seq, m.frame) for m in messages if not m.dropped])  # type: ignore[misc]
    drain()

    client = Client()
    compared = refused = 0
    problems = []
    for (did, collection, rkey), write in sorted(final.items()):
        uri = f"at://{did}/{collection}/{rkey}"
        status, answer = get_record(client, did, collection, rkey)
        if write.action == "delete" or not write.forwarded:
            # Deleted last, or only ever written by messages the relay dropped: nothing to find.
            if (status, answer.get("error")) != (400, "RecordNotFound"):
                problems.append(f"{uri}: expected RecordNotFound after seq {write.seq} ({write.action}, "
                                f"forwarded={write.forwarded}), got {status} {answer}")
            continue
        if write.invalid and (status, answer.get("error")) == (400, "RecordNotFound"):
            refused += 1  # an invalid message the indexer refused
            continue
        if status != 200:
            problems.append(f"{uri}: {status} {answer}")
            continue
        compared += 1
        if answer["uri"] != uri:
            problems.append(f"{uri}: answered uri {answer['uri']}")
        if answer["cid"] != write.cid:
            problems.append(f"{uri}: answered cid {answer['cid']}, the op's is {write.cid} (seq {write.seq})")
        if canonical(answer["value"]) != canonical(write.record):
            problems.append(f"{uri} (seq {write.seq}, cid {write.cid}):\n  answered  {canonical(answer['value'])}"
                            f"\n  reference {canonical(write.record)}")
    assert problems == []
    stored = sum(1 for write in final.values() if write.forwarded and write.action != "delete")
    assert compared + refused == stored
    # Not vacuous: every scenario whose final state holds a record compares at least one.
    assert compared > 0 or stored == 0


def test_it_compares_enough_records_of_the_scenarios() -> None:
    stored = {path.stem: sum(1 for write in final_writes(path)[1].values()
                             if write.forwarded and write.action != "delete") for path in SCENARIO_FILES}
    assert sum(stored.values()) >= 50, stored
    assert sum(1 for count in stored.values() if count) >= 8, stored


# -- Links and byte strings that no record of the fixtures holds ---------------------------------------------

def _head(major: int, length: int) -> bytes:
    if length < 24:
        return bytes([major << 5 | length])
    assert length < 256
    return bytes([major << 5 | 24, length])


def _text(value: str) -> bytes:
    data = value.encode()
    return _head(3, len(data)) + data


def _bytes(value: bytes) -> bytes:
    return _head(2, len(value)) + value


def _link(binary_cid: bytes) -> bytes:
    return bytes([0xD8, 42]) + _bytes(b"\x00" + binary_cid)


def _record_block(value: bytes) -> bytes:
    """DAG-CBOR of {"$type", "createdAt", "value"} with the given encoded value (keys in DAG-CBOR order)."""
    items = [("$type", _text(PROBE)), ("value", value), ("createdAt", _text("2025-04-16T21:30:26.611Z"))]
    items.sort(key=lambda item: (len(item[0]), item[0]))
    return _head(5, len(items)) + b"".join(_text(key) + encoded for key, encoded in items)


PROBE = "com.example.probe"
DIGEST = bytes(range(32))


# Encoded by hand: libipld would write any bytes that parse as a CID as a link.
VALUES = [
    pytest.param(_bytes(b"\x01\x02\x03\x04"), id="short-bytes"),
    pytest.param(_bytes(bytes((1, 0x71, 0x12, 32)) + DIGEST), id="bytes-shaped-like-a-cid"),
    pytest.param(_link(bytes((1, 0x71, 0x12, 32)) + DIGEST), id="dag-cbor-sha256-link"),
    pytest.param(_link(bytes((1, 0x55, 0x12, 32)) + DIGEST), id="raw-sha256-link"),
    pytest.param(_link(bytes((1, 0x55, 0x1E, 32)) + DIGEST), id="raw-blake3-link"),
]


@pytest.mark.parametrize("value", VALUES)
def test_it_tells_links_from_byte_strings(value: bytes) -> None:
    block = _record_block(value)
    cid = cid_for_block(block)
    commit_block = libipld.encode_dag_cbor({"did": DID, "version": 3, "rev": TID})
    root = cid_for_block(commit_block)
    body = {"seq": 10, "rebase": False, "tooBig": False, "repo": DID, "commit": root, "rev": TID, "since": None,
            "blocks": car_of_cids([root], [(root, commit_block), (cid, block)]),
            "ops": [{"action": "create", "path": f"{PROBE}/{TID}", "cid": cid}], "blobs": [], "time": WHEN}
    push(redis_store.connect(), [(10, encode_frame({"op": 1, "t": "#commit"}, body))])
    drain()
    status, answer = get_record(Client(), DID, PROBE, TID)
    assert status == 200, answer
    assert answer["cid"] == dag_cbor_json.cid_text(cid)
    assert canonical(answer["value"]) == canonical(dag_cbor_json.decode(block))


@pytest.mark.parametrize("case", json.loads((FIXTURES / "interop" / "data-model" / "data-model-fixtures.json")
                                            .read_text()), ids=lambda case: case["cid"][:16])
def test_it_converts_the_interop_data_model_fixtures_as_they_say(case: dict[str, Any]) -> None:
    block = base64.b64decode(case["cbor_base64"] + "=" * (-len(case["cbor_base64"]) % 4))
    assert dag_cbor_json.cid_text(cid_for_block(block)) == case["cid"]
    stored, altered = record_json(decode_record(block))
    assert not altered
    assert json.loads(stored) == case["json"]
