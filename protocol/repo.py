"""Repository verification: a firehose ``#commit`` checked the way Sync v1.1 asks (atproto proposal 0006,
indigo's ``VerifyCommitMessage``), and a whole repository export (``com.atproto.sync.getRepo``) checked
block by block.

A commit event is checked cheapest first, so that a bad event costs little: every block's bytes against
its CID, the ops' shape and blocks, the commit block (repo, rev, version), its signature, then the MST
inversion proof: starting from the new tree and using only the event's blocks, undoing every op must give
the previous tree's root, ``prevData``. Failures raise ``SyncError``, whose ``reason`` is one of
``REASONS``: a short stable name, used as a metrics label.
"""

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import libipld

from protocol import cborwrite, syntax
from protocol.car import Buffer, CarError, ConflictingBlockError, block_spans, car_roots
from protocol.cid import DAG_CBOR_CID_PREFIX
from protocol.crypto import PublicKey
from protocol.mst import BlockSource, MissingBlockError, MstError, Tree, walk

REASONS = (
    "car-invalid", "cid-mismatch", "missing-block", "commit-invalid", "repo-mismatch", "rev-mismatch",
    "bad-signature", "no-signing-key", "mst-invalid", "inversion-failed", "ops-invalid",
)
COMMIT_VERSION = 3
LEGACY_COMMIT_VERSION = 2  # no rev; still found in old exports
# The rev a version 2 commit's records are stored at: the lowest TID, below every rev a later commit has.
LEGACY_REV = "2222222222222"
MAX_PATH_BYTES = 1024
Spans = Mapping[bytes, tuple[int, int]]


class SyncError(ValueError):
    """A commit or repository that fails verification. ``reason`` is one of ``REASONS``; the message is
    a short human detail."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SignedCommit:
    did: str
    version: int
    data: bytes  # CID of the MST root
    rev: str | None  # None only in a version 2 commit
    prev: bytes | None
    sig: bytes

    def unsigned_bytes(self) -> bytes:
        """What the signature signs: the commit without ``sig``, as canonical DAG-CBOR."""
        return self._encode(signed=False)

    def encode(self) -> bytes:
        """The commit block."""
        return self._encode(signed=True)

    def _encode(self, *, signed: bool) -> bytes:
        # Keys in DAG-CBOR order: did, rev, sig, data, prev, version.
        parts = [b"\x63did", cborwrite.text(self.did)]
        if self.rev is not None:
            parts += (b"\x63rev", cborwrite.text(self.rev))
        if signed:
            parts += (b"\x63sig", cborwrite.byte_string(self.sig))
        parts += (b"\x64data", cborwrite.link(self.data), b"\x64prev", cborwrite.link(self.prev),
                  b"\x67version", cborwrite.unsigned(self.version))
        return cborwrite.head(5, len(parts) // 2) + b"".join(parts)


def read_commit(block: bytes) -> SignedCommit:
    """A commit block decoded and its fields' types checked (``SyncError("commit-invalid")`` otherwise).
    Accepts versions 2 and 3; a firehose commit must be version 3."""
    try:
        data: Any = libipld.decode_dag_cbor(block)
    except (ValueError, OverflowError, RecursionError) as exc:
        raise SyncError("commit-invalid", f"the commit block is not DAG-CBOR: {exc}") from None
    if type(data) is not dict:
        raise SyncError("commit-invalid", "the commit block is not a map")
    version = data.get("version")
    did, rev, root, prev, sig = data.get("did"), data.get("rev"), data.get("data"), data.get("prev"), data.get("sig")
    if version not in (COMMIT_VERSION, LEGACY_COMMIT_VERSION) or type(version) is not int:
        raise SyncError("commit-invalid", f"the commit's version is {str(version)[:20]}, not 3")
    expected_rev_type = str if version == COMMIT_VERSION else type(None)
    if (type(did) is not str or type(rev) is not expected_rev_type or type(root) is not bytes
            or type(sig) is not bytes or not (prev is None or type(prev) is bytes)):
        raise SyncError("commit-invalid", "the commit's did, rev, data, prev or sig has the wrong type")
    return SignedCommit(did=did, version=version, data=root, rev=rev, prev=prev, sig=sig)


def check_block_cids(car: Buffer, spans: Spans) -> None:
    """Every block's CID is a dag-cbor sha2-256 CIDv1 (every block of a repository is DAG-CBOR: commits, MST
    nodes, records) of its bytes; ``SyncError("cid-mismatch")``."""
    view = memoryview(car)
    sha256 = hashlib.sha256
    for cid, (start, end) in spans.items():
        if cid[:-32] != DAG_CBOR_CID_PREFIX or sha256(view[start:end]).digest() != cid[-32:]:
            raise SyncError("cid-mismatch", "a block's bytes do not hash to its CID (or it is not a dag-cbor sha2-256"
                            " CID)")


@dataclass(frozen=True, slots=True)
class _Op:
    action: str
    key: bytes  # "collection/rkey"
    cid: bytes | None
    prev: bytes | None


def _event_ops(ops: Any, spans: Spans, *, need_prev: bool) -> list[_Op]:
    if type(ops) is not list:
        raise SyncError("ops-invalid", "the commit's ops are not a list")
    parsed: list[_Op] = []
    paths: set[str] = set()
    for op in ops:
        if type(op) is not dict:
            raise SyncError("ops-invalid", "an op is not a map")
        action, path, cid, prev = op.get("action"), op.get("path"), op.get("cid"), op.get("prev")
        if (type(path) is not str or path.count("/") != 1 or path[0] == "/" or path[-1] == "/"
                or len(path) > MAX_PATH_BYTES or not path.isascii()):
            raise SyncError("ops-invalid", f"an op's path is not collection/rkey: {str(path)[:100]!r}")
        if not (prev is None or type(prev) is bytes):
            raise SyncError("ops-invalid", f"the op on {path} has a prev that is not a CID")
        if action == "delete":
            if cid is not None or (need_prev and prev is None):
                raise SyncError("ops-invalid", f"the delete of {path} has a cid or lacks its prev")
        elif action == "create" or action == "update":
            if type(cid) is not bytes:
                raise SyncError("ops-invalid", f"the {action} of {path} has no cid")
            if cid not in spans:
                raise SyncError("missing-block", f"the record block of the {action} of {path} is not in the CAR")
            if (action == "create" and prev is not None) or (action == "update" and need_prev and prev is None):
                raise SyncError("ops-invalid", f"the {action} of {path} has a wrong prev")
        else:
            raise SyncError("ops-invalid", f"an op's action is {str(action)[:20]!r}")
        if path in paths:
            raise SyncError("ops-invalid", f"two ops on {path}")
        paths.add(path)
        parsed.append(_Op(action, path.encode(), cid, prev))
    return parsed


def _block_source(car: Buffer, spans: Spans) -> BlockSource:
    def load(cid: bytes) -> bytes | None:
        span = spans.get(cid)
        return None if span is None else bytes(car[span[0]:span[1]])

    return load


def verify_commit_event(body: dict[str, Any], spans: Spans, key: PublicKey | None, *,
                        check_mst: bool = True) -> SignedCommit:
    """Checks a decoded ``#commit`` body whose CAR (``body["blocks"]``) the caller has indexed with
    ``protocol.car.block_spans``; returns its commit. ``key`` None skips the signature only. Raises
    ``SyncError``."""
    blocks = body.get("blocks")
    if type(blocks) is not bytes:
        raise SyncError("car-invalid", "the commit's blocks are not bytes")
    check_block_cids(blocks, spans)
    prev_data = body.get("prevData")
    if not (prev_data is None or type(prev_data) is bytes):
        raise SyncError("ops-invalid", "the commit's prevData is not a CID")
    ops = _event_ops(body.get("ops"), spans, need_prev=check_mst and prev_data is not None)
    commit_cid = body.get("commit")
    span = spans.get(commit_cid) if type(commit_cid) is bytes else None
    if span is None:
        raise SyncError("commit-invalid", "the commit block is not in the CAR")
    commit = read_commit(blocks[span[0]:span[1]])
    if commit.version != COMMIT_VERSION:
        raise SyncError("commit-invalid", f"the commit's version is {commit.version}, not 3")
    if commit.did != body.get("repo"):
        raise SyncError("repo-mismatch", "the signed commit names another repository")
    rev = body.get("rev")
    if commit.rev != rev or not syntax.is_tid(rev):
        raise SyncError("rev-mismatch", "the signed commit's rev is not the event's, or not a TID")
    if key is not None and not key.verify(commit.unsigned_bytes(), commit.sig):
        raise SyncError("bad-signature", "the commit's signature does not verify with the repository's key")
    if check_mst:
        load = _block_source(blocks, spans)
        if prev_data is not None:
            _check_inversion(commit.data, ops, load, prev_data)
        else:
            _check_ops_in_tree(commit.data, ops, load)
    return commit


def _check_inversion(root: bytes, ops: Iterable[_Op], load: BlockSource, prev_data: bytes) -> None:
    """Undoes every op on the new tree (deletions first, then by path, as indigo does) and compares the
    result with the previous root."""
    try:
        tree = Tree(root, load)
        for op in sorted(ops, key=lambda op: (op.action != "delete", op.key)):
            if op.action == "create":
                if tree.delete(op.key) != op.cid:
                    raise SyncError("inversion-failed", f"the tree does not hold the created {op.key.decode()}")
            elif op.action == "update":
                if tree.put(op.key, op.prev) != op.cid:
                    raise SyncError("inversion-failed", f"the tree does not hold the updated {op.key.decode()}")
            elif tree.put(op.key, op.prev) is not None:
                raise SyncError("inversion-failed", f"the tree still holds the deleted {op.key.decode()}")
        if tree.root_cid() != prev_data:
            raise SyncError("inversion-failed", "undoing the ops does not give the previous tree (prevData)")
    except MissingBlockError:
        raise SyncError("inversion-failed", "a tree node needed to undo the ops is missing from the CAR") from None
    except MstError as exc:
        raise SyncError("mst-invalid", str(exc)) from None


def _check_ops_in_tree(root: bytes, ops: Iterable[_Op], load: BlockSource) -> None:
    """Without prevData (commits from before Sync v1.1): the new tree holds what the ops say."""
    try:
        tree = Tree(root, load)
        for op in ops:
            if tree.get(op.key) != op.cid:
                raise SyncError("mst-invalid", f"the tree's value of {op.key.decode()} is not the op's")
    except MissingBlockError:
        raise SyncError("missing-block", "a tree node on the path of an op is missing from the CAR") from None
    except MstError as exc:
        raise SyncError("mst-invalid", str(exc)) from None


@dataclass(frozen=True, slots=True)
class VerifiedRepository:
    commit_cid: bytes
    commit: SignedCommit
    records: list[tuple[str, bytes]]  # ("collection/rkey", record CID) in key order
    spans: Spans
    car: Buffer

    def block(self, cid: bytes) -> bytes | None:
        """A block's bytes (a record's, to decode), or None when the CAR has no such block."""
        span = self.spans.get(cid)
        return None if span is None else bytes(self.car[span[0]:span[1]])


def check_export_commit(block: bytes | None, did: str, key: PublicKey | None) -> SignedCommit:
    """The commit of a repository export (the block of the CAR's root, None when missing), checked: it names
    ``did``, has a TID rev (version 3) and is signed by ``key`` (None skips the signature only). Raises
    ``SyncError``."""
    if block is None:
        raise SyncError("commit-invalid", "the commit block (the CAR's root) is not in the CAR")
    commit = read_commit(block)
    if commit.did != did:
        raise SyncError("repo-mismatch", "the signed commit names another repository")
    if commit.version == COMMIT_VERSION and not syntax.is_tid(commit.rev):
        raise SyncError("rev-mismatch", "the commit's rev is not a TID")
    if key is not None and not key.verify(commit.unsigned_bytes(), commit.sig):
        raise SyncError("bad-signature", "the commit's signature does not verify with the repository's key")
    return commit


def tree_records(root: bytes, load: BlockSource) -> Iterator[tuple[str, bytes]]:
    """("collection/rkey", record CID) of the tree at ``root`` in key order, checking on the way that the MST is
    the canonical one. Raises ``SyncError`` ("missing-block" for a node not available, "mst-invalid") at the first
    fault: a caller keeps nothing of a repository until the iteration has ended."""
    try:
        for path, cid in walk(root, load):
            yield path.decode(), cid
    except MissingBlockError:
        raise SyncError("missing-block", "an MST node block is missing from the CAR") from None
    except UnicodeDecodeError:
        raise SyncError("mst-invalid", "an MST key is not UTF-8") from None
    except MstError as exc:
        raise SyncError("mst-invalid", str(exc)) from None


def verify_repository(car: Buffer, did: str, key: PublicKey | None) -> VerifiedRepository:
    """Checks a whole repository export: every block's CID, the commit (the CAR's root) naming ``did``
    and signed by ``key`` (None skips the signature only), and the MST: canonical, every node and record
    block present. ``car`` may be an mmap or a memoryview of it: blocks are read in place. Raises
    ``SyncError``."""
    try:
        spans = block_spans(car)
        roots = car_roots(car)
    except ConflictingBlockError as exc:
        raise SyncError("cid-mismatch", str(exc)) from None
    except CarError as exc:
        raise SyncError("car-invalid", str(exc)) from None
    if not roots:
        raise SyncError("car-invalid", "the CAR names no root")
    check_block_cids(car, spans)
    load = _block_source(car, spans)
    commit = check_export_commit(load(roots[0]), did, key)
    records: list[tuple[str, bytes]] = []
    for path, cid in tree_records(commit.data, load):
        if cid not in spans:
            raise SyncError("missing-block", f"the record block of {path} is missing")
        records.append((path, cid))
    return VerifiedRepository(commit_cid=roots[0], commit=commit, records=records, spans=spans, car=car)
