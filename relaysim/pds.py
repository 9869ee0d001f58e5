"""A local PDS, and the local network of a simulation: what an indexer fetches besides the relay's events.

``HostedAccounts`` holds the accounts of a simulated network: their repositories, account states, DID
documents and handles, under one lock. Whatever writes them (``SyntheticFirehose(signed=True)``, or a test)
shares the object with the servers that answer for them::

    firehose = SyntheticFirehose(seed=1, signed=True)
    with LocalNetwork(firehose.accounts) as network:  # a PLC directory, a PDS and a DNS server on loopback
        network.indexer_environment()  # {"PLC_URL": ..., "IDENTITY_HOST_OVERRIDES": ..., "DNS_NAMESERVERS": ...}

``LocalPds(accounts)`` answers GET ``/xrpc/<NSID>`` for:

- ``com.atproto.sync.getRepo?did=``: the whole repository as a CAR (``application/vnd.ipld.car``);
- ``com.atproto.sync.getLatestCommit?did=``: ``{"cid", "rev"}``;
- ``com.atproto.sync.listRepos?limit=&cursor=``: ``{"cursor", "repos": [{"did", "head", "rev", "active",
  "status"}]}`` in DID order (``cursor``: the last DID of the page, absent on the last page; ``status`` only
  for an account that is not active);
- ``com.atproto.sync.listReposByCollection?collection=&limit=&cursor=`` (a relay's, served here too so that a
  backfill by collection can be tested against one server): ``{"cursor", "repos": [{"did"}]}``.

Errors are JSON ``{"error", "message"}``: 404 ``RepoNotFound`` for a DID it does not host (or no longer: a
deleted account), 400 ``RepoDeactivated`` / ``RepoTakendown`` / ``RepoSuspended`` for an account in that
state (as a real PDS answers), 400 ``InvalidRequest`` for bad parameters, 501 ``MethodNotImplemented``.
Fault knobs: those of ``HttpService`` (delay, 429, 500, the request log) and ``truncate_next(n)``, which
cuts the next ``n`` repository exports in half (a 200 whose CAR ends early).

A repository is any ``HostedRepo`` (``relaysim.repos.SimRepo`` is one): a generator of large repositories
only has to give their head, rev, collections and export.
"""

import json
import threading
from bisect import bisect_right
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import libipld

from protocol import syntax
from relaysim.identity_servers import Answer, HttpService, LocalDns, LocalPlc, Running

PDS_HOST = "pds.sim.test"  # the PDS host name DID documents of the simulation name (https://pds.sim.test)
CAR_TYPE = "application/vnd.ipld.car"
LIST_REPOS_LIMIT = (500, 1000)  # default, maximum (as com.atproto.sync.listRepos's lexicon says)
LIST_BY_COLLECTION_LIMIT = (500, 2000)
NOT_ACTIVE_ERRORS = {"deactivated": "RepoDeactivated", "takendown": "RepoTakendown", "suspended": "RepoSuspended"}


class HostedRepo(Protocol):
    @property
    def head(self) -> bytes | None: ...  # the latest commit's CID

    @property
    def rev(self) -> str | None: ...

    @property
    def collections(self) -> Mapping[str, int]: ...  # collection -> how many records

    def export_car(self) -> bytes: ...


@dataclass(eq=False)
class HostedAccounts:
    """The accounts of a simulated network. Writers change them under ``lock``; the servers read under it."""

    pds_url: str = f"https://{PDS_HOST}"  # the PDS their DID documents name
    repos: dict[str, HostedRepo] = field(default_factory=dict)  # did -> repository (served by LocalPds)
    statuses: dict[str, str] = field(default_factory=dict)  # did -> deactivated/takendown/suspended; absent: active
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)  # did -> DID document (LocalPlc)
    tombstoned: set[str] = field(default_factory=set)  # deleted DIDs (LocalPlc answers 410)
    # The last documents of deleted DIDs: what an indexer that followed the stream live had cached when it
    # checked their commits (bench/sync_bench.py warms its cache with them).
    former_documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    handles: dict[str, str] = field(default_factory=dict)  # handle -> did (LocalDns's TXT answers)
    lock: threading.RLock = field(default_factory=threading.RLock)


class LocalPds(HttpService):
    """The ``com.atproto.sync`` reads of a PDS over ``accounts``; see the module docstring."""

    def __init__(self, accounts: HostedAccounts, *, port: int = 0) -> None:
        self.accounts = accounts
        self._truncations = 0
        super().__init__(port=port)

    def truncate_next(self, count: int) -> None:
        """The next ``count`` repository exports are cut to half their bytes (with a Content-Length that matches)."""
        with self._lock:
            self._truncations += count

    def _answer(self, host: str, path: str, query: str) -> Answer:
        method = path.removeprefix("/xrpc/")
        params = {name: values[0] for name, values in parse_qs(query, keep_blank_values=True).items()}
        answer = {
            "com.atproto.sync.getRepo": self._get_repo,
            "com.atproto.sync.getLatestCommit": self._latest_commit,
            "com.atproto.sync.listRepos": self._list_repos,
            "com.atproto.sync.listReposByCollection": self._list_repos_by_collection,
        }.get(method)
        if answer is None:
            return _error(HTTPStatus.NOT_IMPLEMENTED, "MethodNotImplemented", f"{method[:100]} is not served here")
        try:
            return answer(params)
        except _XrpcError as refusal:
            return _error(refusal.status, refusal.error, str(refusal))

    def _get_repo(self, params: dict[str, str]) -> Answer:
        with self.accounts.lock:
            car = self._available(params).export_car()  # a snapshot: the simulator goes on changing the repo
        with self._lock:
            truncate = self._truncations > 0
            self._truncations -= truncate
        if truncate:
            car = car[: len(car) // 2]
        return HTTPStatus.OK, {"Content-Type": CAR_TYPE}, car

    def _latest_commit(self, params: dict[str, str]) -> Answer:
        with self.accounts.lock:
            repo = self._available(params)
            head, rev = repo.head, repo.rev
        return _json({"cid": libipld.encode_cid(head or b""), "rev": rev})

    def _available(self, params: dict[str, str]) -> HostedRepo:
        """The repository of the ``did`` parameter; _XrpcError when a PDS would refuse it. Under the lock."""
        did = params.get("did", "")
        if not syntax.is_did(did):
            raise _XrpcError(HTTPStatus.BAD_REQUEST, "InvalidRequest", "did must be a DID")
        repo = self.accounts.repos.get(did)
        if repo is None or repo.head is None:
            raise _XrpcError(HTTPStatus.NOT_FOUND, "RepoNotFound", f"Could not find repo for DID: {did}")
        status = self.accounts.statuses.get(did)
        if status is not None:
            raise _XrpcError(HTTPStatus.BAD_REQUEST, NOT_ACTIVE_ERRORS.get(status, "RepoDeactivated"),
                           f"Repo has been {status}: {did}")
        return repo

    def _list_repos(self, params: dict[str, str]) -> Answer:
        limit = _limit(params, *LIST_REPOS_LIMIT)
        entries = []
        with self.accounts.lock:
            for did, repo in self._after(params.get("cursor", "")):
                head = repo.head
                if head is None:
                    continue
                status = self.accounts.statuses.get(did)
                entry: dict[str, Any] = {"did": did, "head": libipld.encode_cid(head), "rev": repo.rev,
                                         "active": status is None}
                if status is not None:
                    entry["status"] = status
                entries.append(entry)
                if len(entries) == limit:
                    break
            more = len(entries) == limit and self._has_after(entries[-1]["did"])
        return _json(_page(entries, more))

    def _list_repos_by_collection(self, params: dict[str, str]) -> Answer:
        collection = params.get("collection", "")
        if not syntax.is_nsid(collection):
            raise _XrpcError(HTTPStatus.BAD_REQUEST, "InvalidRequest", "collection must be an NSID")
        limit = _limit(params, *LIST_BY_COLLECTION_LIMIT)
        entries = []
        with self.accounts.lock:
            for did, repo in self._after(params.get("cursor", "")):
                if repo.collections.get(collection):
                    entries.append({"did": did})
                    if len(entries) == limit:
                        break
            more = len(entries) == limit and self._has_after(entries[-1]["did"])
        return _json(_page(entries, more))

    def _after(self, cursor: str) -> Iterator[tuple[str, HostedRepo]]:
        """The hosted repositories whose DID sorts after ``cursor``, in DID order. Under the lock."""
        repos = self.accounts.repos
        dids = sorted(repos)
        for did in dids[bisect_right(dids, cursor):]:
            yield did, repos[did]

    def _has_after(self, did: str) -> bool:
        return any(other > did for other in self.accounts.repos)


class _XrpcError(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


def _limit(params: dict[str, str], default: int, maximum: int) -> int:
    text = params.get("limit")
    if text is None:
        return default
    value = int(text) if text.isascii() and text.isdigit() else 0
    if not 1 <= value <= maximum:
        raise _XrpcError(HTTPStatus.BAD_REQUEST, "InvalidRequest", f"limit must be 1 to {maximum}")
    return value


def _page(entries: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    page: dict[str, Any] = {"repos": entries}
    if more:
        page["cursor"] = entries[-1]["did"]
    return page


def _json(value: dict[str, Any]) -> Answer:
    return HTTPStatus.OK, {"Content-Type": "application/json"}, json.dumps(value).encode()


def _error(status: int, error: str, message: str) -> Answer:
    return status, {"Content-Type": "application/json"}, json.dumps({"error": error, "message": message}).encode()


class LocalNetwork(Running):
    """A PLC directory (``plc``), a PDS (``pds``) and a DNS server (``dns``) on loopback, all answering for
    ``accounts``: the DID documents name the PDS as ``accounts.pds_url``, which an indexer reaches through
    ``IDENTITY_HOST_OVERRIDES``, and handles resolve by DNS TXT. Ports 0: free ones."""

    def __init__(self, accounts: HostedAccounts, *, pds_port: int = 0, plc_port: int = 0, dns_port: int = 0) -> None:
        self.accounts = accounts
        self.plc = LocalPlc(port=plc_port)
        self.plc.documents = accounts.documents
        self.plc.tombstoned = accounts.tombstoned
        self.pds = LocalPds(accounts, port=pds_port)
        self.dns = LocalDns(port=dns_port, handles=accounts.handles)

    @property
    def pds_host(self) -> str:
        return (urlsplit(self.accounts.pds_url).hostname or "").lower()

    def indexer_environment(self) -> dict[str, str]:
        """The settings an indexer needs to resolve the simulation's DIDs and handles and fetch its repos."""
        pds_address, pds_port = self.pds.address
        dns_address, dns_port = self.dns.address
        return {
            "PLC_URL": self.plc.url,
            "IDENTITY_HOST_OVERRIDES": f"{self.pds_host}={pds_address}:{pds_port}",
            "DNS_NAMESERVERS": f"{dns_address}:{dns_port}",
        }

    def start(self) -> None:
        for server in (self.plc, self.pds, self.dns):
            server.start()

    def stop(self) -> None:
        for server in (self.plc, self.pds, self.dns):
            server.stop()
