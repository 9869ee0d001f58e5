"""Real repositories for the simulator and the tests: an MST of records, signed commits, and the
``#commit`` bodies a PDS would emit for them (Sync v1.1: the CAR carries the inversion proof, the body
carries ``prevData``), and the export ``com.atproto.sync.getRepo`` would serve.

    repo = SimRepo("did:plc:...", PrivateKey.generate(seed=b"alice"))
    body = repo.apply([("create", "app.bsky.feed.post/3l...", {"$type": ..., ...})], rev=tid)
    # body: the #commit fields (repo, rev, since, commit, blocks, ops, prevData, ...); add seq and time.

A record is given as a dict, or as its DAG-CBOR block when the caller has encoded it already.
"""

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, TypedDict

import libipld

from protocol import syntax
from protocol.cid import cid_for_block
from protocol.crypto import PrivateKey
from protocol.mst import Tree
from protocol.repo import COMMIT_VERSION, SignedCommit
from protocol.testing import car_of_cids


class CommitDiff(TypedDict):
    """The #commit body fields a repository decides (com.atproto.sync.subscribeRepos#commit); the relay
    adds seq and time."""

    repo: str
    rev: str
    since: str | None
    commit: bytes
    blocks: bytes
    ops: list[dict[str, Any]]
    prevData: bytes
    tooBig: bool
    rebase: bool
    blobs: list[bytes]


Record = dict[str, Any] | bytes  # a record, or its DAG-CBOR block
Op = tuple[str, str, Record | None]  # (action, "collection/rkey", record; None for a delete)


def _no_stored_blocks(cid: bytes) -> bytes | None:
    return None  # every node of a SimRepo's tree is in memory


class SimRepo:
    """One account's repository, in memory."""

    def __init__(self, did: str, key: PrivateKey) -> None:
        if not syntax.is_did(did):
            raise ValueError(f"{did!r} is not a DID")
        self.did = did
        self.key = key
        self._tree = Tree(None, _no_stored_blocks)
        self._records: dict[str, bytes] = {}  # path -> record CID
        self._blocks: dict[bytes, bytes] = {}  # record CID -> block
        self._references: dict[bytes, int] = {}  # record CID -> how many paths hold it
        self._collections: dict[str, int] = {}  # collection -> how many records it holds
        self._rev: str | None = None
        self._head: bytes | None = None
        self._commit_block = b""
        self._data = self._tree.root_cid()

    @property
    def rev(self) -> str | None:
        return self._rev

    @property
    def head(self) -> bytes | None:
        """The latest commit's CID (None before the first commit)."""
        return self._head

    @property
    def data(self) -> bytes:
        """The MST root's CID."""
        return self._data

    @property
    def records(self) -> Mapping[str, bytes]:
        """path ("collection/rkey") -> record CID; a read-only view."""
        return MappingProxyType(self._records)

    @property
    def collections(self) -> Mapping[str, int]:
        """collection -> how many records of it the repository holds (none: absent); a read-only view."""
        return MappingProxyType(self._collections)

    @property
    def commit_block(self) -> bytes:
        """The latest signed commit's block (empty before the first commit)."""
        return self._commit_block

    def apply(self, ops: list[Op], *, rev: str) -> CommitDiff:
        """Applies ``(action, "collection/rkey", record or None)`` ops as one signed commit with revision
        ``rev`` (a TID above the previous one) and returns its #commit body. Raises ValueError for an op
        that does not fit the repository (create of an existing record, update or delete of a missing
        one, two ops on one path)."""
        if not syntax.is_tid(rev) or (self._rev is not None and rev <= self._rev):
            raise ValueError(f"rev {rev!r} is not a TID above {self._rev!r}")
        self._check_ops(ops)
        prev_data = self._data
        records: dict[bytes, bytes] = {}
        body_ops = [self._apply_op(action, path, record, records) for action, path, record in ops]
        nodes = self._tree.encode_changes()
        self._data = self._tree.root_cid()
        unsigned = SignedCommit(did=self.did, version=COMMIT_VERSION, data=self._data, rev=rev, prev=None, sig=b"")
        commit = SignedCommit(did=self.did, version=COMMIT_VERSION, data=self._data, rev=rev, prev=None,
                              sig=self.key.sign(unsigned.unsigned_bytes()))
        commit_block = commit.encode()
        commit_cid = cid_for_block(commit_block)
        # New nodes, then the unchanged ones that prove each op (what undoing it reads).
        proof = dict(nodes)
        for op in body_ops:
            for node in self._tree.covering_proof(op["path"].encode()):
                proof.setdefault(node.cid, node.block)
        blocks = car_of_cids([commit_cid], [(commit_cid, commit_block), *proof.items(), *records.items()])
        since, self._rev, self._head, self._commit_block = self._rev, rev, commit_cid, commit_block
        return {
            "repo": self.did, "rev": rev, "since": since, "commit": commit_cid, "blocks": blocks, "ops": body_ops,
            "prevData": prev_data, "tooBig": False, "rebase": False, "blobs": [],
        }

    def _check_ops(self, ops: list[Op]) -> None:
        """Refuses the whole commit before anything changes (ops on distinct paths do not interact)."""
        if len({path for _, path, _ in ops}) != len(ops):
            raise ValueError("two ops on one path")
        for action, path, record in ops:
            collection, _, rkey = path.partition("/")
            if not (syntax.is_nsid(collection) and syntax.is_record_key(rkey)):
                raise ValueError(f"{path!r} is not collection/rkey")
            if action not in ("create", "update", "delete") or (action == "delete") != (record is None):
                raise ValueError(f"op {action!r} on {path} is not a create or update with a record, or a delete")
            if (action == "create") == (path in self._records):
                raise ValueError(f"{action} of {path}, which {'exists' if action == 'create' else 'does not exist'}")

    def _apply_op(self, action: str, path: str, record: Record | None,
                  new_records: dict[bytes, bytes]) -> dict[str, Any]:
        key = path.encode()
        if record is None:
            previous = self._tree.delete(key)
            self._forget(path, previous)
            return {"action": action, "path": path, "cid": None, "prev": previous}
        block = record if isinstance(record, bytes) else libipld.encode_dag_cbor(record)
        cid = cid_for_block(block)
        previous = self._tree.put(key, cid)
        if previous is not None:
            self._forget(path, previous)
        self._records[path] = cid
        collection = path.partition("/")[0]
        self._collections[collection] = self._collections.get(collection, 0) + 1
        self._blocks[cid] = block
        self._references[cid] = self._references.get(cid, 0) + 1
        new_records[cid] = block
        op = {"action": action, "path": path, "cid": cid}
        if previous is not None:
            op["prev"] = previous
        return op

    def _forget(self, path: str, cid: bytes) -> None:
        del self._records[path]
        collection = path.partition("/")[0]
        left = self._collections[collection] - 1
        if left:
            self._collections[collection] = left
        else:
            del self._collections[collection]
        remaining = self._references[cid] - 1
        if remaining:
            self._references[cid] = remaining
        else:
            del self._references[cid], self._blocks[cid]

    def export_car(self) -> bytes:
        """The whole repository as ``com.atproto.sync.getRepo`` serves it: root = the latest commit, then
        the commit, every MST node and every record."""
        if self._head is None:
            raise ValueError("the repository has no commit yet")
        return car_of_cids([self._head], self._export_blocks())

    def _export_blocks(self) -> Iterator[tuple[bytes, bytes]]:
        yield self._head, self._commit_block
        if not self._records:
            yield from self._tree.encode_changes()  # the empty tree's one node
        for node in self._tree.nodes():
            yield node.cid, node.block
        for cid in sorted(self._blocks):
            yield cid, self._blocks[cid]

    def did_document(self, pds_url: str, handle: str) -> dict[str, Any]:
        """A did:plc-style DID document naming this repository's signing key, handle and PDS."""
        return {
            "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
            "id": self.did,
            "alsoKnownAs": [f"at://{handle}"],
            "verificationMethod": [{
                "id": f"{self.did}#atproto",
                "type": "Multikey",
                "controller": self.did,
                "publicKeyMultibase": self.key.public_key.multikey(),
            }],
            "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds_url}],
        }
