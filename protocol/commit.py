"""The record operations of a ``#commit``, each created or updated record decoded from the commit's blocks."""

from dataclasses import dataclass
from typing import Any

import libipld

from protocol import syntax
from protocol.car import CarError, ConflictingBlockError, block_spans
from protocol.dagcbor import decode_record
from protocol.frames import FrameError
from protocol.repo import SyncError

OP_ACTIONS = ("create", "update", "delete")


class CommitError(FrameError, SyncError):
    """A commit whose blocks or ops are unusable; ``reason`` is one of ``protocol.repo.REASONS``."""


@dataclass(frozen=True, slots=True)
class RecordOp:
    action: str
    collection: str
    rkey: str
    cid: str | None
    record: dict[str, Any] | None

    def uri(self, did: str) -> str:
        return f"at://{did}/{self.collection}/{self.rkey}"


def commit_spans(body: dict[str, Any]) -> dict[bytes, tuple[int, int]]:
    """Where each block of a ``#commit`` body's CAR lies (``protocol.car.block_spans``); raises when
    the blocks are not a CAR (``CommitError``)."""
    blocks = body.get("blocks")
    if not isinstance(blocks, bytes):
        raise CommitError("car-invalid", "commit blocks must be bytes")
    try:
        return block_spans(blocks) if blocks else {}
    except ConflictingBlockError as exc:
        raise CommitError("cid-mismatch", f"commit blocks: {exc}") from None
    except CarError as exc:
        raise CommitError("car-invalid", f"commit blocks are not a valid CAR file: {exc}") from None


def commit_ops(body: dict[str, Any], spans: dict[bytes, tuple[int, int]] | None = None) -> list[RecordOp]:
    """The record operations of a ``#commit`` body, with each created or updated record decoded from
    the commit's CAR blocks (located by ``spans`` when the caller has them). Raises ``CommitError`` when the
    blocks or an op are unusable."""
    if spans is None:
        spans = commit_spans(body)
    blocks = body["blocks"]
    ops = body.get("ops")
    if not isinstance(ops, list):
        raise CommitError("ops-invalid", "commit ops must be a list")
    return [_record_op(op, blocks, spans) for op in ops]


def _record_op(op: Any, blocks: bytes, spans: dict[bytes, tuple[int, int]]) -> RecordOp:
    if not isinstance(op, dict):
        raise CommitError("ops-invalid", "commit op must be a map")
    action = op.get("action")
    if action not in OP_ACTIONS:
        raise CommitError("ops-invalid", f"commit op action must be create, update or delete, got {action!r}")
    path = op.get("path")
    if not isinstance(path, str) or path.count("/") != 1:
        raise CommitError("ops-invalid", f"commit op path must be collection/rkey, got {str(path)[:200]!r}")
    collection, rkey = path.split("/")
    if not syntax.is_nsid(collection):
        raise CommitError("ops-invalid", f"commit op collection {collection[:200]!r} is not a valid NSID")
    if not syntax.is_record_key(rkey):
        raise CommitError("ops-invalid", f"commit op record key {rkey[:200]!r} is not valid")
    if action == "delete":
        return RecordOp(action=action, collection=collection, rkey=rkey, cid=None, record=None)
    cid = op.get("cid")
    if not isinstance(cid, bytes):
        raise CommitError("ops-invalid", f"commit op {action} of {path} has no CID link")
    span = spans.get(cid)
    if span is None:
        raise CommitError("missing-block", f"commit op {action} of {path}: its record block is missing from the CAR")
    try:
        record = decode_record(blocks[span[0]:span[1]])
        cid_text = libipld.encode_cid(cid)
    except (ValueError, RecursionError, OverflowError) as exc:
        raise CommitError("ops-invalid",
                          f"commit op {action} of {path}: its record block or CID is not valid: {exc}") from None
    if not isinstance(record, dict):
        raise CommitError("ops-invalid", f"commit op {action} of {path}: its record is not a map")
    return RecordOp(action=action, collection=collection, rkey=rkey, cid=cid_text, record=record)
