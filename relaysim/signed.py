"""The synthetic stream with real repositories: every account has a signing key, a DID document and an MST
repository, and every ``#commit`` is a real, signed diff of that repository (Sync v1.1: ``since``,
``prevData`` and the blocks that prove each op), so that an indexer can verify each event and resync any
repo from a PDS that serves the same repositories (``relaysim.pds``).

    firehose = SignedFirehose(seed=7, actors=500, faults=[CommitFault.parse("bad-signature=every:100")])
    with LocalNetwork(firehose.accounts) as network:   # PLC, PDS and DNS answering for those accounts
        for seq, frame in firehose.frames(1000): ...

- The events and their records are ``SyntheticFirehose``'s (same mix, same content), with these differences:
  every DID is a did:plc (a did:web would need a host name of its own); each account's key is derived from
  the seed and its DID (about one in twenty a P-256 key, the rest secp256k1); the posts from before the
  stream are real records of their authors' repositories, committed before the first event; ``#sync``
  carries the repository's current commit; ``#identity`` changes the handle in the DID document (and in
  DNS); ``#account`` changes what the PDS answers for the repo (RepoDeactivated, ...); a deleted account's
  repository leaves the PDS and its DID is tombstoned in the PLC directory, and its slot goes to a new
  account, whose repository starts with an empty commit.
- ``accounts`` (a ``relaysim.pds.HostedAccounts``) holds the repositories, states, DID documents and
  handles, changed under its lock as events are produced (ahead of their emission by a relay, as a PDS
  commits before the relay sends).
- ``CommitFault``\\ s spoil what is emitted, never the repository: ``bad-signature`` (the commit re-signed
  with a key no DID document names), ``missing-block`` (a created or updated record's block left out of the
  CAR), ``cid-mismatch`` (a record block whose bytes are another record's), ``gap`` (a commit applied to
  the repository but never emitted: the repo's next commit has a ``since`` and ``prevData`` that do not
  follow the last one emitted) and ``too-big`` (``tooBig`` true, no blocks and no ops). Each is due on
  every Nth commit (``every``) or on the Nth only (``at``), counted from 1 over the commits produced; one
  that does not fit the commit (a block fault on a commit of deletes only) waits for the next that fits.
  ``injected`` lists the latest faults: kind, repo, rev, and the seq of the event that carries it.
"""

import base64
import dataclasses
import hashlib
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import libipld

from protocol.car import block_spans
from protocol.cid import cid_for_block
from protocol.crypto import P256, SECP256K1, PrivateKey
from protocol.repo import read_commit
from protocol.testing import car_of_cids, encode_frame
from relaysim.pds import PDS_HOST, HostedAccounts
from relaysim.repos import CommitDiff, SimRepo
from relaysim.simulation import COMMIT_HEADER, EPOCH_US, SYNC_HEADER, TEMPLATES, PostRef, SyntheticFirehose, tid

COMMIT_FAULTS = ("bad-signature", "missing-block", "cid-mismatch", "gap", "too-big")
BLOCK_FAULTS = frozenset({"missing-block", "cid-mismatch"})  # need a created or updated record in the commit
INJECTED_KEPT = 10_000
P256_SHARE = 13  # of 256: about one account in twenty signs with P-256
EARLIER_POSTS_SPAN_US = 30 * 86_400_000_000  # posts from before the stream are up to 30 days old
# Signs the commits of the bad-signature fault: no DID document names it.
_STRANGER = PrivateKey.generate(seed=b"relaysim: a key no DID document names")
# The bytes a cid-mismatch fault puts under a record's CID.
_STRAY_RECORD = libipld.encode_dag_cbor({
    "$type": "app.bsky.feed.like", "createdAt": "2024-12-31T23:59:59.000Z",
    "subject": {"uri": "at://did:plc:relaysimstrayrecordaaaaa/app.bsky.feed.post/3ldbkzwcrrk2c",
                "cid": "bafyreigaqcu4loopk4dkd57c6zulsivi6lnsrwkpyt5t3khnixglnvwx2i"},
})


@dataclass(frozen=True)
class CommitFault:
    kind: str  # one of COMMIT_FAULTS
    every: int = 0  # on commits N, 2N, 3N...
    at: int = 0  # on commit N only

    def __post_init__(self) -> None:
        if self.kind not in COMMIT_FAULTS:
            raise ValueError(f"unknown commit fault {self.kind!r}: one of {', '.join(COMMIT_FAULTS)}")
        if (self.every > 0) == (self.at > 0) or self.every < 0 or self.at < 0:
            raise ValueError(f"a {self.kind} fault is due every N commits or at commit N: one positive number")

    @classmethod
    def parse(cls, text: str) -> "CommitFault":
        """``KIND=every:N`` or ``KIND=at:N``, e.g. ``bad-signature=every:100``; ValueError otherwise."""
        kind, _, schedule = text.partition("=")
        when, _, number = schedule.partition(":")
        if when not in ("every", "at") or not (number.isascii() and number.isdigit()):
            raise ValueError(f"{text!r} is not KIND=every:N or KIND=at:N")
        return cls(kind.strip(), **{when: int(number)})

    def due(self, number: int) -> bool:
        return number == self.at or (self.every > 0 and number % self.every == 0)


@dataclass(frozen=True)
class InjectedFault:
    kind: str
    did: str
    rev: str  # the spoiled commit's
    seq: int | None  # the event that carries it; None for a gap (never emitted)


class SignedFirehose(SyntheticFirehose):
    """A reproducible stream of signed commits of real repositories; see the module docstring."""

    def __init__(self, seed: int = 0, start_seq: int = 1, *, actors: int = 5000, wall_clock: bool = False,
                 pds_url: str = f"https://{PDS_HOST}", faults: Iterable[CommitFault] = ()) -> None:
        self.accounts = HostedAccounts(pds_url=pds_url)
        self.injected: deque[InjectedFault] = deque(maxlen=INJECTED_KEPT)
        self.commits = 0  # commits produced, those a fault spoiled or left out included
        self._seed = seed
        self._faults = tuple(faults)
        self._pending_faults: list[str] = []  # due, waiting for a commit they fit
        self._repo_of: list[SimRepo] = []  # by actor slot
        # Until the stream starts: the records from before it, per actor slot, committed at once at the end.
        self._setting_up = True
        self._earlier: dict[int, dict[str, bytes]] = {}
        super().__init__(seed, start_seq, actors=actors, wall_clock=wall_clock)
        with self.accounts.lock:
            for actor, repo in enumerate(self._repo_of):
                records = self._earlier.get(actor, {})
                repo.apply([("create", path, block) for path, block in sorted(records.items())],
                           rev=tid(EPOCH_US - 1000, actor))
        self._earlier = {}
        self._setting_up = False

    # -- accounts -----------------------------------------------------------------------------------------

    def _new_did(self) -> str:
        return "did:plc:" + base64.b32encode(self._rng.randbytes(15)).decode().lower()

    def _key_of(self, did: str) -> PrivateKey:
        secret = hashlib.sha256(f"relaysim {self._seed} {did}".encode()).digest()
        return PrivateKey.generate(P256 if secret[0] < P256_SHARE else SECP256K1, seed=secret)

    def _add_actor(self, index: int) -> None:
        super()._add_actor(index)
        did, handle = self._dids[index], self._handles[index]
        repo = SimRepo(did, self._key_of(did))
        if index == len(self._repo_of):
            self._repo_of.append(repo)
        else:
            self._repo_of[index] = repo
        accounts = self.accounts
        with accounts.lock:
            if not self._setting_up:
                repo.apply([], rev=tid(self._us, index))  # a new account's repository starts empty
            accounts.repos[did] = repo
            accounts.documents[did] = repo.did_document(accounts.pds_url, handle)
            accounts.handles[handle] = did

    def _handle_changed(self, actor: int, previous: str) -> None:
        did, handle = self._dids[actor], self._handles[actor]
        accounts = self.accounts
        with accounts.lock:
            accounts.documents[did] = self._repo_of[actor].did_document(accounts.pds_url, handle)
            accounts.handles.pop(previous, None)
            accounts.handles[handle] = did

    def _status_changed(self, actor: int, status: str | None) -> None:
        did = self._dids[actor]
        with self.accounts.lock:
            if status is None:
                self.accounts.statuses.pop(did, None)
            else:
                self.accounts.statuses[did] = status

    def _account_deleted(self, actor: int) -> None:
        did = self._dids[actor]
        accounts = self.accounts
        with accounts.lock:
            del accounts.repos[did]
            accounts.former_documents[did] = accounts.documents.pop(did)
            accounts.statuses.pop(did, None)
            accounts.handles.pop(self._handles[actor], None)
            accounts.tombstoned.add(did)

    def _add_earlier_post(self) -> None:
        rng = self._rng
        actor = int(len(self._dids) * rng.random())
        written_us = EPOCH_US - 1000 - int(rng.random() * EARLIER_POSTS_SPAN_US)
        template = self._templates[int(rng.random() * TEMPLATES)]
        record: dict[str, Any] = {"$type": "app.bsky.feed.post", "text": template.text,
                                  "createdAt": _iso_time(written_us)}
        if template.facets:
            record["facets"] = template.facets
        if template.langs:
            record["langs"] = template.langs
        block = libipld.encode_dag_cbor(record)
        path = f"app.bsky.feed.post/{tid(written_us, actor)}"
        self._earlier.setdefault(actor, {})[path] = block
        uri = f"at://{self._dids[actor]}/{path}"
        cid = libipld.encode_cid(cid_for_block(block))
        self._remember_post(PostRef(uri, cid, uri, cid))

    # -- events ----------------------------------------------------------------------------------------------

    def _commit(self, seq: int, actor: int, ops: list[tuple[Any, ...]]) -> bytes:
        repo = self._repo_of[actor]
        with self.accounts.lock:
            body = repo.apply([(action, path, block) for action, path, block, _ in ops], rev=tid(self._us, actor))
        self.commits += 1
        if self._faults:
            pending = self._pending_faults
            pending += [fault.kind for fault in self._faults if fault.due(self.commits) and fault.kind not in pending]
            fitting = next((kind for kind in pending if kind not in BLOCK_FAULTS or _record_cid(body)), None)
            if fitting is not None:
                pending.remove(fitting)
                if fitting == "gap":
                    self.injected.append(InjectedFault(fitting, body["repo"], body["rev"], None))
                    # The commit stays in the repository; another event takes its seq, a moment later.
                    self._advance_clock()
                    return self._event(seq)
                _spoil(body, fitting)
                self.injected.append(InjectedFault(fitting, body["repo"], body["rev"], seq))
        event: dict[str, Any] = {**body, "seq": seq, "time": self._time}
        return COMMIT_HEADER + libipld.encode_dag_cbor(event)

    def _sync(self, seq: int) -> bytes:
        actor = self._pick_actor()
        repo = self._repo_of[actor]
        with self.accounts.lock:
            head, block, rev = repo.head, repo.commit_block, repo.rev
        assert head is not None  # every account's repository has its first commit from the start
        body = {"seq": seq, "did": repo.did, "blocks": car_of_cids([head], [(head, block)]), "rev": rev,
                "time": self._time}
        return encode_frame(SYNC_HEADER, body)


def _iso_time(microseconds: int) -> str:
    seconds, rest = divmod(microseconds, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:03d}Z"


def _record_cid(body: CommitDiff) -> bytes | None:
    """The CID of the first record the commit creates or updates."""
    return next((op["cid"] for op in body["ops"] if op["cid"] is not None), None)


def _spoil(body: CommitDiff, kind: str) -> None:
    """Changes the #commit body as the fault ``kind`` says; the repository is untouched."""
    if kind == "too-big":
        body.update(tooBig=True, blocks=b"", ops=[])
        return
    car = body["blocks"]
    spans = block_spans(car)
    blocks = {cid: car[start:end] for cid, (start, end) in spans.items()}
    root = body["commit"]
    if kind == "bad-signature":
        commit = read_commit(blocks.pop(root))
        block = dataclasses.replace(commit, sig=_STRANGER.sign(commit.unsigned_bytes())).encode()
        root = cid_for_block(block)
        blocks = {root: block, **blocks}
    else:
        record = _record_cid(body)
        assert record is not None
        if kind == "missing-block":
            del blocks[record]
        else:
            blocks[record] = _STRAY_RECORD
    body.update(commit=root, blocks=car_of_cids([root], blocks.items()))
