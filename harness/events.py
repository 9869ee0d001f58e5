"""Filling firehose:events as run_firehose does, and building ``#commit`` frames: for the worker tests and
the worker benchmarks."""

import time
from collections.abc import Iterable
from typing import Any

import libipld
import redis

from pipeline import redis_store, stream
from protocol.cid import cid_for_block
from protocol.frames import FrameError, decode_frame, event_of
from protocol.syntax import tid_of
from protocol.testing import encode_car, encode_frame

DID = "did:plc:44ybard66vv44zksje25o7dz"
TID = "3lmxjza3h2i27"
WHEN = "2025-04-16T21:30:26.611Z"  # a valid createdAt / event time
REV_EPOCH_US = 1_744_800_000_000_000  # 2025-04-16: the revs of test commits are TIDs of this time plus their seq


def push(client: redis.Redis, frames: Iterable[tuple[int, bytes]], *, generation: int = 1,
         explicit_ids: bool = True) -> int:
    """Adds entries the way run_firehose does (docs/ARCHITECTURE.md), with IDs ``<generation>-<seq>``; with
    ``explicit_ids=False`` the stream order is the order given, whatever the seqs (to deliver events out of
    order)."""
    stream.ensure_group(client)
    pipe = client.pipeline(transaction=False)
    count = 0
    for seq, frame in frames:
        decoded = decode_frame(frame)
        try:
            did = event_of(decoded).did
        except FrameError:
            did = ""  # a bad event still travels through the stream; the worker counts it
        fields = {"seq": seq, "t": decoded.type or "", "did": did, "frame": frame,
                  "received_at": int(time.time() * 1000)}
        pipe.xadd(redis_store.events_stream(), fields, id=f"{generation}-{seq}" if explicit_ids else "*")
        count += 1
    pipe.execute()
    return count


def rev_of(seq: int) -> str:
    """The rev test commits get by default: their revs grow with their seqs, as a repo's do."""
    return tid_of(REV_EPOCH_US + seq)


def commit_frame(seq: int, ops: list[tuple[str, str, dict[str, Any] | None]], *, did: str = DID,
                 rev: str | None = None, since: str | None = None) -> bytes:
    """A #commit frame whose ops are (action, "collection/rkey", record or None); its rev is ``rev_of(seq)``
    unless given."""
    rev = rev or rev_of(seq)
    blocks: list[bytes] = []
    op_list = []
    for action, path, record in ops:
        op: dict[str, Any] = {"action": action, "path": path, "cid": None}
        if record is not None:
            block = libipld.encode_dag_cbor(record)
            blocks.append(block)
            op["cid"] = cid_for_block(block)
        op_list.append(op)
    commit_block = libipld.encode_dag_cbor({"did": did, "version": 3, "rev": rev})
    root = cid_for_block(commit_block)
    body = {"seq": seq, "rebase": False, "tooBig": False, "repo": did, "commit": root, "rev": rev, "since": since,
            "blocks": encode_car([root], [commit_block, *blocks]), "ops": op_list, "blobs": [],
            "time": WHEN}
    return encode_frame({"op": 1, "t": "#commit"}, body)
