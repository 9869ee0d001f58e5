"""The record operations of a ``#commit``, each created or updated record decoded from the commit's blocks."""

from dataclasses import dataclass
from typing import Any

import libipld

from protocol import syntax
from protocol.car import CarError, block_spans
from protocol.dagcbor import decode_record
from protocol.frames import FrameError

OP_ACTIONS = ("create", "update", "delete")


@dataclass(frozen=True, slots=True)
class RecordOp:
    action: str
    collection: str
    rkey: str
    cid: str | None
    record: dict[str, Any] | None

    def uri(self, did: str) -> str:
        return f"at://{did}/{self.collection}/{self.rkey}"


def commit_ops(body: dict[str, Any]) -> list[RecordOp]:
    """The record operations of a ``#commit`` body, with each created or updated record decoded from
    the commit's CAR blocks. Raises ``FrameError`` when the blocks or an op are unusable."""
    blocks = body.get("blocks")
    if not isinstance(blocks, bytes):
        raise FrameError("commit blocks must be bytes")
    try:
        spans = block_spans(blocks) if blocks else {}
    except CarError as exc:
        raise FrameError(f"commit blocks are not a valid CAR file: {exc}") from None
    ops = body.get("ops")
    if not isinstance(ops, list):
        raise FrameError("commit ops must be a list")
    return [_record_op(op, blocks, spans) for op in ops]


def _record_op(op: Any, blocks: bytes, spans: dict[bytes, tuple[int, int]]) -> RecordOp:
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
    span = spans.get(cid)
    if span is None:
        raise FrameError(f"commit op {action} of {path}: its record block is missing from the CAR")
    try:
        record = decode_record(blocks[span[0]:span[1]])
        cid_text = libipld.encode_cid(cid)
    except (ValueError, RecursionError, OverflowError) as exc:
        raise FrameError(f"commit op {action} of {path}: its record block or CID is not valid: {exc}") from None
    if not isinstance(record, dict):
        raise FrameError(f"commit op {action} of {path}: its record is not a map")
    return RecordOp(action=action, collection=collection, rkey=rkey, cid=cid_text, record=record)
