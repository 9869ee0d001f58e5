"""The relay's wire format (com.atproto.sync.subscribeRepos).

A frame is two concatenated DAG-CBOR objects: a header ``{op, t}`` and a body. Nothing the network
sends is trusted: every function here checks types, sizes and syntax and raises ``FrameError`` with one
clear sentence when a frame is unusable. Encoding helpers serve the relay simulator and the tests.
"""

import hashlib
from dataclasses import dataclass
from typing import Any

import libipld

from firehose import syntax

MAX_FRAME_BYTES = 5 * 1024 * 1024
MAX_BLOCKS_BYTES = 2 * 1024 * 1024
MAX_OPS = 200
MAX_SEQ = 2**63 - 1

OP_MESSAGE = 1
OP_ERROR = -1
EVENT_TYPES = ("#commit", "#identity", "#account", "#sync")
OP_ACTIONS = ("create", "update", "delete")

DAG_CBOR_CODEC = 0x71
SHA2_256 = 0x12
SHA2_256_PREFIX = bytes((SHA2_256, 32))  # a sha2-256 multihash's head; alone, a CIDv0's


class FrameError(ValueError):
    """A frame (or part of one) that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Frame:
    op: int
    type: str | None
    body: dict[str, Any]

    @property
    def is_error(self) -> bool:
        return self.op == OP_ERROR


@dataclass(frozen=True, slots=True)
class Event:
    """What run_firehose needs to know of a repo event before pushing it."""

    seq: int
    type: str
    did: str


@dataclass(frozen=True, slots=True)
class RecordOp:
    action: str
    collection: str
    rkey: str
    cid: str | None
    record: dict[str, Any] | None

    def uri(self, did: str) -> str:
        return f"at://{did}/{self.collection}/{self.rkey}"


def decode_frame(data: bytes, *, max_bytes: int = MAX_FRAME_BYTES) -> Frame:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FrameError(f"frame is {type(data).__name__}, not binary")
    if len(data) > max_bytes:
        raise FrameError(f"frame of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        parts = libipld.decode_dag_cbor_multi(bytes(data))
    except (ValueError, RecursionError, OverflowError) as exc:
        raise FrameError(f"frame is not valid DAG-CBOR: {exc}") from None
    if len(parts) != 2:
        raise FrameError(f"frame holds {len(parts)} DAG-CBOR objects, expected a header and a body")
    header, body = parts
    if not isinstance(header, dict) or not isinstance(body, dict):
        raise FrameError("frame header and body must both be maps")
    op = header.get("op")
    if type(op) is not int or op not in (OP_MESSAGE, OP_ERROR):
        raise FrameError(f"frame header op must be 1 or -1, got {op!r}")
    frame_type = header.get("t")
    if op == OP_MESSAGE and not isinstance(frame_type, str):
        raise FrameError(f"message frame header t must be a string, got {frame_type!r}")
    return Frame(op=op, type=frame_type if isinstance(frame_type, str) else None, body=body)


def event_of(frame: Frame) -> Event:
    """Checks the fields every repo event needs (seq, repo DID) and, for commits, the size limits."""
    if frame.type not in EVENT_TYPES:
        raise FrameError(f"frame type {frame.type!r} is not a repo event")
    body = frame.body
    seq = body.get("seq")
    if type(seq) is not int or not 0 < seq <= MAX_SEQ:
        raise FrameError(f"{frame.type} seq must be a positive 64-bit integer, got {seq!r}")
    did = body.get("repo") if frame.type == "#commit" else body.get("did")
    if not isinstance(did, str) or not syntax.is_did(did):
        raise FrameError(f"{frame.type} seq {seq} has an invalid repo DID {str(did)[:100]!r}")
    if frame.type in ("#commit", "#sync"):
        blocks = body.get("blocks")
        if not isinstance(blocks, bytes):
            raise FrameError(f"{frame.type} seq {seq} blocks must be bytes")
        if len(blocks) > MAX_BLOCKS_BYTES:
            raise FrameError(f"{frame.type} seq {seq} blocks of {len(blocks)} bytes exceed {MAX_BLOCKS_BYTES}")
    if frame.type == "#commit":
        ops = body.get("ops")
        if not isinstance(ops, list):
            raise FrameError(f"#commit seq {seq} ops must be a list")
        if len(ops) > MAX_OPS:
            raise FrameError(f"#commit seq {seq} has {len(ops)} ops, more than {MAX_OPS}")
    return Event(seq=seq, type=frame.type, did=did)


def commit_ops(body: dict[str, Any]) -> list[RecordOp]:
    """The record operations of a ``#commit`` body, with each created or updated record decoded from
    the commit's CAR blocks. Raises ``FrameError`` when the blocks or an op are unusable."""
    blocks = body.get("blocks")
    if not isinstance(blocks, bytes):
        raise FrameError("commit blocks must be bytes")
    block_spans = car_block_spans(blocks) if blocks else {}
    ops = body.get("ops")
    if not isinstance(ops, list):
        raise FrameError("commit ops must be a list")
    return [_record_op(op, blocks, block_spans) for op in ops]


def car_block_spans(car: bytes) -> dict[bytes, tuple[int, int]]:
    """Where each block of a CAR v1 file lies: binary CID -> (start, end) of the block's bytes.

    Only the blocks that ops point to are decoded afterwards: a commit's CAR also carries the commit
    object and the MST nodes on the path to each record, which the indexer does not read, and decoding
    them all was the largest single cost of a worker's parsing."""
    try:
        header_length, position = _read_varint(car, 0)
        header_end = position + header_length
        if header_length == 0 or header_end > len(car):
            raise FrameError("its header length is out of bounds")
        header = libipld.decode_dag_cbor(car[position:header_end])
        if not isinstance(header, dict) or header.get("version") != 1:
            raise FrameError("its header is not a CAR v1 header")
        spans: dict[bytes, tuple[int, int]] = {}
        position = header_end
        size = len(car)
        while position < size:
            length = car[position]
            if length < 0x80:  # most blocks are under 128 bytes
                start = position + 1
            else:
                length, start = _read_varint(car, position)
            end = start + length
            if end > size or length < 4:
                raise FrameError("a block is too short or runs past the end of the file")
            data_start = _cid_end(car, start, end)
            spans[car[start:data_start]] = (data_start, end)
            position = end
        return spans
    except ValueError as exc:  # a FrameError of the checks above, or libipld's own
        raise FrameError(f"commit blocks are not a valid CAR file: {exc}") from None


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    """An unsigned LEB128 varint at ``position``: its value and the position after it."""
    value = shift = 0
    while shift < 63:
        if position >= len(data):
            raise FrameError("a varint is cut off")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    raise FrameError("a varint is longer than 9 bytes")


def _cid_end(data: bytes, start: int, end: int) -> int:
    """The position after the binary CID that opens the block ``data[start:end]``."""
    if data[start] == 1 and data[start + 1] < 0x80 and data[start + 2:start + 4] == SHA2_256_PREFIX:
        cid_end = start + 36  # CIDv1 with a one-byte codec and a sha2-256 digest: every block of the network
    elif data[start:start + 2] == SHA2_256_PREFIX:
        cid_end = start + 34
    else:
        version, position = _read_varint(data, start)
        if version != 1:
            raise FrameError(f"a block's CID has version {version}")
        _, position = _read_varint(data, position)  # codec
        _, position = _read_varint(data, position)  # multihash function
        digest_length, position = _read_varint(data, position)
        cid_end = position + digest_length
    if cid_end > end:
        raise FrameError("a block's CID runs past the block")
    return cid_end


def _record_op(op: Any, blocks: bytes, block_spans: dict[bytes, tuple[int, int]]) -> RecordOp:
    if not isinstance(op, dict):
        raise FrameError("commit op must be a map")
    action = op.get("action")
    if action not in OP_ACTIONS:
        raise FrameError(f"commit op action must be create, update or delete, got {action!r}")
    path = op.get("path")
    if not isinstance(path, str) or path.count("/") != 1:
        raise FrameError(f"commit op path must be collection/rkey, got {str(path)[:200]!r}")
    collection, rkey = path.split("/")
    if not syntax.is_nsid(collection):
        raise FrameError(f"commit op collection {collection[:200]!r} is not a valid NSID")
    if not syntax.is_record_key(rkey):
        raise FrameError(f"commit op record key {rkey[:200]!r} is not valid")
    if action == "delete":
        return RecordOp(action=action, collection=collection, rkey=rkey, cid=None, record=None)
    cid = op.get("cid")
    if not isinstance(cid, bytes):
        raise FrameError(f"commit op {action} of {path} has no CID link")
    span = block_spans.get(cid)
    if span is None:
        raise FrameError(f"commit op {action} of {path}: its record block is missing from the CAR")
    try:
        record = libipld.decode_dag_cbor(blocks[span[0]:span[1]])
        cid_text = libipld.encode_cid(cid)
    except (ValueError, RecursionError, OverflowError) as exc:
        raise FrameError(f"commit op {action} of {path}: its record block or CID is not valid: {exc}") from None
    if not isinstance(record, dict):
        raise FrameError(f"commit op {action} of {path}: its record is not a map")
    return RecordOp(action=action, collection=collection, rkey=rkey, cid=cid_text, record=record)


def encode_frame(header: dict[str, Any], body: dict[str, Any]) -> bytes:
    return libipld.encode_dag_cbor(header) + libipld.encode_dag_cbor(body)


def cid_for_block(block: bytes) -> bytes:
    """The binary CIDv1 (dag-cbor, sha2-256) of an encoded block."""
    return bytes((1, DAG_CBOR_CODEC, SHA2_256, 32)) + hashlib.sha256(block).digest()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def encode_car(roots: list[bytes], blocks: list[bytes]) -> bytes:
    """A CAR v1 file holding the given encoded blocks, each under the CID of its bytes."""
    header = libipld.encode_dag_cbor({"version": 1, "roots": roots})
    parts = [_varint(len(header)), header]
    for block in blocks:
        cid = cid_for_block(block)
        parts += [_varint(len(cid) + len(block)), cid, block]
    return b"".join(parts)
