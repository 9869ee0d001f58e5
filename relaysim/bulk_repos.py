"""Repositories generated in bulk, for backfill's tests and benchmark: thousands of accounts with realistic
records, or one account holding a million, each written as the CAR file ``com.atproto.sync.getRepo`` serves
and hosted by ``relaysim.pds.LocalPds`` (a ``FileRepo`` is a ``HostedRepo``).

A repository is written in one pass over its records, without the per-commit tree of ``SimRepo``: record blocks
go to a temporary file as they are made, their (path, CID) pairs are sorted, the MST is built bottom-up from
them (``build_mst``: the one canonical tree of that key set, which ``protocol.mst`` checks), and the CAR is the
signed commit, the tree's nodes, then the record blocks.

    network = generate_network(directory, accounts=1000, records=lambda index: 200, seed=1)
    with LocalNetwork(network.accounts) as servers: ...
"""

import random
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import libipld

from protocol.cid import cid_for_block
from protocol.crypto import PrivateKey
from protocol.mst import EMPTY_NODE_BLOCK, EMPTY_TREE_CID, Node, encode_node, key_height
from protocol.repo import COMMIT_VERSION, SignedCommit
from protocol.testing import varint
from relaysim.pds import HostedAccounts
from relaysim.simulation import post_template, tid

EPOCH_US = 1_700_000_000_000_000  # 2023-11-14: the first record of a generated repository
_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
# The record mix of a repository (how often each kind is written), as the network's repositories hold them.
RECORD_MIX = (
    ("app.bsky.feed.like", 0.45), ("app.bsky.graph.follow", 0.18), ("app.bsky.feed.post", 0.2),
    ("app.bsky.feed.repost", 0.1), ("app.bsky.graph.block", 0.02), ("app.bsky.graph.listitem", 0.02),
    ("app.bsky.graph.list", 0.005), ("app.bsky.feed.threadgate", 0.005), ("fyi.unravel.frontpage.vote", 0.01),
)
UNKNOWN_POST_CID = "bafyreigaqcu4loopk4dkd57c6zulsivi6lnsrwkpyt5t3khnixglnvwx2i"


def _datetime(microseconds: int) -> str:
    return datetime.fromtimestamp(microseconds / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def plc_did(seed: int, index: int) -> str:
    """A did:plc of the right shape (24 base32 characters), the same for the same seed and index."""
    value = int.from_bytes(cid_for_block(f"{seed}/{index}".encode())[-15:], "big")
    return "did:plc:" + "".join(_BASE32[(value >> (5 * position)) & 31] for position in range(24))


def did_document(did: str, key: PrivateKey, pds_url: str) -> dict[str, Any]:
    """A DID document naming the signing key and the PDS, and no handle (nothing to confirm by DNS)."""
    return {
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": did,
        "verificationMethod": [{"id": f"{did}#atproto", "type": "Multikey", "controller": did,
                                "publicKeyMultibase": key.public_key.multikey()}],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds_url}],
    }


def build_mst(entries: list[tuple[bytes, bytes]]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The MST of ``entries`` (key, value CID), sorted by key and unique: its root CID and every node's (CID,
    block), children before parents. Each node holds the keys of its layer (a key's height) between its
    parent's keys, and a subtree for each range of lower keys between them."""
    if not entries:
        return EMPTY_TREE_CID, [(EMPTY_TREE_CID, EMPTY_NODE_BLOCK)]
    heights = [key_height(key) for key, _ in entries]
    nodes: list[tuple[bytes, bytes]] = []

    def build(low: int, high: int, layer: int) -> bytes | None:
        """The CID of the node at ``layer`` holding entries[low:high] (every height at most ``layer``)."""
        if low == high:
            return None
        keys: list[bytes] = []
        values: list[bytes] = []
        subtrees: list[bytes | None] = []
        start = low
        for position in range(low, high):
            if heights[position] == layer:
                subtrees.append(build(start, position, layer - 1) if layer else None)
                keys.append(entries[position][0])
                values.append(entries[position][1])
                start = position + 1
        subtrees.append(build(start, high, layer - 1) if layer and start < high else None)
        block = encode_node(Node(keys, values, subtrees))  # type: ignore[arg-type]
        cid = cid_for_block(block)
        nodes.append((cid, block))
        return cid

    root = build(0, len(entries), max(heights))
    assert root is not None
    return root, nodes


@dataclass
class FileRepo:
    """A repository export stored as a CAR file, with what a PDS says of it (a ``relaysim.pds.HostedRepo``)."""

    path: Path
    head: bytes
    rev: str
    counts: dict[str, int]  # collection -> records
    paths: list[tuple[str, bytes]] | None = None  # ("collection/rkey", record CID) in key order, when kept

    @property
    def collections(self) -> Mapping[str, int]:
        return MappingProxyType(self.counts)

    def export_car(self) -> bytes:
        return self.path.read_bytes()


def write_repository(path: Path, did: str, key: PrivateKey, records: Iterable[tuple[str, bytes]], *, rev: str,
                     keep_paths: bool = False) -> FileRepo:
    """Writes the repository holding ``records`` ("collection/rkey", DAG-CBOR block; each path once) at ``rev``,
    signed with ``key``, as a CAR file at ``path``."""
    entries: list[tuple[bytes, bytes]] = []
    counts: dict[str, int] = {}
    written: set[bytes] = set()
    with tempfile.TemporaryFile(prefix="records-", dir=path.parent) as blocks:
        for record_path, block in records:
            cid = cid_for_block(block)
            entries.append((record_path.encode(), cid))
            collection = record_path.partition("/")[0]
            counts[collection] = counts.get(collection, 0) + 1
            if cid not in written:  # records with the same content share one block, as in a PDS's export
                written.add(cid)
                blocks.write(varint(len(cid) + len(block)) + cid + block)
        entries.sort()
        root, nodes = build_mst(entries)
        unsigned = SignedCommit(did=did, version=COMMIT_VERSION, data=root, rev=rev, prev=None, sig=b"")
        commit = SignedCommit(did=did, version=COMMIT_VERSION, data=root, rev=rev, prev=None,
                              sig=key.sign(unsigned.unsigned_bytes()))
        commit_block = commit.encode()
        head = cid_for_block(commit_block)
        header = libipld.encode_dag_cbor({"version": 1, "roots": [head]})
        with path.open("wb") as car:
            car.write(varint(len(header)) + header)
            for cid, block in ((head, commit_block), *nodes):
                car.write(varint(len(cid) + len(block)) + cid + block)
            blocks.seek(0)
            shutil.copyfileobj(blocks, car)
    kept = [(record_path.decode(), cid) for record_path, cid in entries] if keep_paths else None
    return FileRepo(path=path, head=head, rev=rev, counts=counts, paths=kept)


@dataclass
class RecordMaker:
    """Records as the network's repositories hold them (``RECORD_MIX``), naming the accounts and posts given:
    likes and reposts of ``posts``, follows and blocks of ``dids``, replies and quotes; posts made are added to
    ``posts``."""

    rng: random.Random
    dids: list[str]
    posts: list[tuple[str, str]] = field(default_factory=list)  # (uri, cid) of posts to like, reply to, quote
    strangers: int = 100_000  # accounts outside the network that records also name
    _handles: list[str] = field(default_factory=list)
    _templates: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._handles = [f"user{index}.sim.test" for index in range(len(self.dids))]
        self._templates = [post_template(self.rng, self.dids, self._handles) for _ in range(200)]
        self._kinds = [kind for kind, _ in RECORD_MIX]
        self._weights = [weight for _, weight in RECORD_MIX]

    def records(self, did: str, count: int, *, start_us: int = EPOCH_US) -> Iterator[tuple[str, bytes]]:
        """``count`` records of ``did`` (a profile first), with TID keys that grow from ``start_us``."""
        rng = self.rng
        yield "app.bsky.actor.profile/self", libipld.encode_dag_cbor(
            {"$type": "app.bsky.actor.profile", "displayName": f"Account {did[-6:]}", "description": "Generated."})
        lists: list[str] = []
        for number, kind in enumerate(rng.choices(self._kinds, self._weights, k=max(count - 1, 0))):
            rkey = tid(start_us + number * 1000, number & 1023)
            if kind == "app.bsky.graph.listitem" and not lists:
                kind = "app.bsky.graph.list"
            record = self._record(did, kind, rkey, lists, _datetime(start_us + number * 1000))
            if kind == "app.bsky.graph.list":
                lists.append(f"at://{did}/{kind}/{rkey}")
            block = libipld.encode_dag_cbor(record)
            if kind == "app.bsky.feed.post":
                self.posts.append((f"at://{did}/{kind}/{rkey}", libipld.encode_cid(cid_for_block(block))))
            yield f"{kind}/{rkey}", block

    def _subject(self) -> dict[str, str]:
        """A post, the recent ones more often; before any post exists, one not in the network."""
        if not self.posts:
            return {"uri": f"at://{self.dids[0]}/app.bsky.feed.post/3kaaaaaaaaaa2", "cid": UNKNOWN_POST_CID}
        uri, cid = self.posts[int(len(self.posts) * self.rng.random() ** 0.5)]
        return {"uri": uri, "cid": cid}

    def _account(self) -> str:
        """An account of the network (the first ones more often), or one outside it."""
        rng = self.rng
        if rng.random() < 0.7:
            return self.dids[int(len(self.dids) * rng.random() ** 2)]
        return plc_did(-1, rng.randrange(self.strangers))

    def _record(self, did: str, kind: str, rkey: str, lists: list[str], when: str) -> dict[str, Any]:
        rng = self.rng
        if kind in ("app.bsky.feed.like", "app.bsky.feed.repost"):
            return {"$type": kind, "subject": self._subject(), "createdAt": when}
        if kind in ("app.bsky.graph.follow", "app.bsky.graph.block"):
            return {"$type": kind, "subject": self._account(), "createdAt": when}
        if kind == "app.bsky.graph.listitem":
            return {"$type": kind, "list": rng.choice(lists), "subject": self._account(), "createdAt": when}
        if kind == "app.bsky.graph.list":
            return {"$type": kind, "name": "A list", "purpose": "app.bsky.graph.defs#curatelist", "createdAt": when}
        if kind == "app.bsky.feed.threadgate":
            return {"$type": kind, "post": f"at://{did}/app.bsky.feed.post/{rkey}", "createdAt": when}
        if kind == "app.bsky.feed.post":
            template = self._templates[int(len(self._templates) * rng.random())]
            record: dict[str, Any] = {"$type": kind, "text": template.text, "createdAt": when}
            if template.facets:
                record["facets"] = template.facets
            if template.langs:
                record["langs"] = template.langs
            roll = rng.random()
            if roll < 0.3 and self.posts:
                parent = self._subject()
                record["reply"] = {"root": parent, "parent": parent}
            elif roll < 0.36 and self.posts:
                record["embed"] = {"$type": "app.bsky.embed.record", "record": self._subject()}
            return record
        return {"$type": kind, "subject": self._subject()["uri"], "createdAt": when}


@dataclass
class GeneratedNetwork:
    accounts: HostedAccounts
    keys: dict[str, PrivateKey]  # did -> signing key
    repos: dict[str, FileRepo]  # did -> its export

    @property
    def records(self) -> int:
        return sum(sum(repo.counts.values()) for repo in self.repos.values())


def generate_network(directory: Path, *, accounts: int, records: Callable[[int], int], seed: int = 0,
                     pds_url: str = "https://pds.sim.test", keep_paths: bool = False) -> GeneratedNetwork:
    """``accounts`` repositories (``records(index)`` records each) written under ``directory``, their DID
    documents and keys, hosted by one PDS (``pds_url``)."""
    rng = random.Random(seed)
    dids = [plc_did(seed, index) for index in range(accounts)]
    maker = RecordMaker(rng, dids)
    hosted = HostedAccounts(pds_url=pds_url)
    keys: dict[str, PrivateKey] = {}
    repos: dict[str, FileRepo] = {}
    for index, did in enumerate(dids):
        key = PrivateKey.generate(seed=f"bulk/{seed}/{index}".encode())
        count = records(index)
        rev = tid(EPOCH_US + (count + 1) * 1000, index & 1023)
        repo = write_repository(directory / f"{index:07d}.car", did, key, maker.records(did, count), rev=rev,
                                keep_paths=keep_paths)
        keys[did], repos[did] = key, repo
        hosted.repos[did] = repo
        hosted.documents[did] = did_document(did, key, pds_url)
    return GeneratedNetwork(accounts=hosted, keys=keys, repos=repos)
