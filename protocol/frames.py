"""The relay's wire format (com.atproto.sync.subscribeRepos).

A frame is two concatenated DAG-CBOR objects: a header ``{op, t}`` and a body. Nothing the network
sends is trusted: every function here checks types, sizes and syntax and raises ``FrameError`` with one
clear sentence when a frame is unusable.
"""

from dataclasses import dataclass
from typing import Any

import libipld

from protocol import syntax

MAX_FRAME_BYTES = 5 * 1024 * 1024
MAX_BLOCKS_BYTES = 2 * 1024 * 1024
MAX_OPS = 200
MAX_SEQ = 2**63 - 1

OP_MESSAGE = 1
OP_ERROR = -1
# The repo events a relay sends (its other message type, #info, is about the connection).
REPO_EVENT_TYPES = ("#commit", "#identity", "#account", "#sync")


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
class RepoEvent:
    """What identifies a repo event: run_firehose needs no more of it before pushing it."""

    seq: int
    type: str
    did: str


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


def event_of(frame: Frame) -> RepoEvent:
    """Checks the fields every repo event needs (seq, repo DID) and, for commits, the size limits."""
    if frame.type not in REPO_EVENT_TYPES:
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
    return RepoEvent(seq=seq, type=frame.type, did=did)
