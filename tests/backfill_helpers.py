"""What the backfill tests share: a local network (PLC directory, PDSes, relay listing) wired into the settings,
a backfill run in this process, and the stored records of a repository read back for comparison."""

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libipld
import pytest
from django.db import connection
from pytest_django.fixtures import Settings

from appview.indexing.collections import TABLE_BY_COLLECTION
from appview.models import BackfillRepo
from appview.sync.backfill import Backfill, Progress, Scope
from identity import cache, services
from protocol.crypto import PrivateKey
from relaysim.bulk_repos import EPOCH_US, did_document, generate_network, plc_did
from relaysim.identity_servers import LocalPlc
from relaysim.pds import HostedAccounts, HostedRepo, LocalPds
from relaysim.repos import SimRepo
from relaysim.simulation import tid
from tests.identity_helpers import wait_for

RELAY_HOST = "relay.sim.test"
RELAY = f"https://{RELAY_HOST}"


@dataclass
class Network:
    """A PLC directory and PDSes on loopback: ``pdses`` by host name, each hosting its own accounts; the first
    also answers as the relay (listRepos, listReposByCollection)."""

    plc: LocalPlc
    pdses: dict[str, LocalPds] = field(default_factory=dict)

    def pds(self, host: str = "pds.sim.test") -> LocalPds:
        return self.pdses[host]

    def host(self, did: str, repo: HostedRepo, document: dict[str, Any], *, host: str = "pds.sim.test") -> None:
        """Puts a repository on a PDS and its document in the PLC directory."""
        accounts = self.pdses[host].accounts
        with accounts.lock:
            accounts.repos[did] = repo
            accounts.documents[did] = document
        self.plc.documents[did] = document


@contextmanager
def local_network(settings: Settings, monkeypatch: pytest.MonkeyPatch, *,
                  hosts: tuple[str, ...] = ("pds.sim.test",)) -> Iterator[Network]:
    """A PLC directory and one PDS per host name, in the settings (IDENTITY_HOST_OVERRIDES, PLC_URL), with an
    empty identity cache; the first PDS is also the relay (``RELAY``)."""
    monkeypatch.setattr(services, "_memory", cache.MemoryCache(services.MEMORY_CACHE_SIZE))
    with ExitStack() as stack:
        plc = stack.enter_context(LocalPlc())
        network = Network(plc=plc)
        for host in hosts:
            network.pdses[host] = stack.enter_context(LocalPds(HostedAccounts(pds_url=f"https://{host}")))
        overrides = {host: pds.address for host, pds in network.pdses.items()}
        overrides[RELAY_HOST] = network.pdses[hosts[0]].address
        settings.PLC_URL = plc.url
        settings.IDENTITY_HOST_OVERRIDES = overrides
        settings.IDENTITY_TIMEOUT = 2.0
        settings.RESYNC_TIMEOUT = 5.0
        try:
            yield network
        finally:
            wait_for(lambda: services.pending_resolutions() == 0, timeout=10)


def generated(network: Network, directory: Path, *, accounts: int, records: int, seed: int,
              host: str = "pds.sim.test") -> dict[str, list[tuple[str, str]]]:
    """Generated repositories put on a PDS: their records ("collection/rkey", CID) by DID."""
    generated_network = generate_network(directory, accounts=accounts, records=lambda index: records, seed=seed,
                                         pds_url=f"https://{host}", keep_paths=True)
    for did, repo in generated_network.repos.items():
        network.host(did, repo, generated_network.accounts.documents[did], host=host)
    return {did: [(path, libipld.encode_cid(cid)) for path, cid in repo.paths or ()]
            for did, repo in generated_network.repos.items()}


def sim_repo(network: Network, index: int, records: list[tuple[str, dict[str, Any]]], *,
             host: str = "pds.sim.test") -> SimRepo:
    """A repository holding ``records`` ("collection/rkey", record) in one signed commit, on a PDS."""
    did = plc_did(7, index)
    key = PrivateKey.generate(seed=f"backfill-test/{index}".encode())
    repo = SimRepo(did, key)
    repo.apply([("create", path, record) for path, record in records], rev=tid(EPOCH_US + index, 0))
    network.host(did, repo, did_document(did, key, f"https://{host}"), host=host)
    return repo


def records_of(repo: SimRepo) -> list[tuple[str, str]]:
    """("collection/rkey", CID) of the repository's records, in key order."""
    return sorted((path, libipld.encode_cid(cid)) for path, cid in repo.records.items())


def backfill(scope: Scope | None = None, *, concurrency: int = 4, processes: int | None = None) -> Progress:
    """One backfill run in this process, to its end (``processes``: staging processes, BACKFILL_PROCESSES by
    default)."""
    return Backfill(concurrency=concurrency, processes=processes).run(scope or Scope(relay=RELAY))


def states() -> dict[str, tuple[str, str]]:
    """did -> (state, error) of every queued repository."""
    return {row.did: (row.state, row.error) for row in BackfillRepo.objects.all()}


def stored_records(did: str) -> list[tuple[str, str]]:
    """("collection/rkey", CID) of every stored record of ``did``, in key order."""
    rows: list[tuple[str, str]] = []
    with connection.cursor() as cursor:
        for spec in TABLE_BY_COLLECTION.values():
            cursor.execute(f"SELECT %s || '/' || rkey, cid FROM {spec.table} WHERE did = %s",
                           [spec.collection, did])
            rows += cursor.fetchall()
        cursor.execute("SELECT collection || '/' || rkey, cid FROM appview_genericrecord WHERE did = %s", [did])
        rows += cursor.fetchall()
    return sorted(rows)
