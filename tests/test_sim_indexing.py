"""The indexer against the signed simulation, in this process: the simulator's frames in firehose:events, a worker
verifying commits with keys from the local PLC directory, and the resync fetching repositories from the local PDS.
Verified or not, the same records are stored; a relay switch changes nothing; a commit a fault spoiled marks its
repo, and the resync makes the stored records of that repo equal to its repository, whenever live commits arrive;
a resync that fails is tried again later, from a minute to an hour."""

import contextlib
import gc
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import libipld
import pytest
from django.conf import settings as django_settings
from django.utils import timezone
from pytest_django.fixtures import Settings

from appview.indexing import services
from appview.models import MODEL_BY_COLLECTION, Actor, GenericRecord
from appview.sync.resync import ResyncError, resync, store_repository
from appview.sync.resyncer import Resyncer
from harness.events import push
from identity import services as identity
from identity.outbound import Outbound
from pipeline import redis_store
from protocol.frames import decode_frame
from protocol.repo import verify_repository
from relaysim.pds import LocalPds
from relaysim.signed import CommitFault, SignedFirehose
from relaysim.simulation import renumbered
from tests.identity_helpers import identity_network
from tests.worker_helpers import (
    ROOT,
    assert_aggregates_match_rows,
    diff,
    drain,
    metrics,
    snapshot,
    stop,
    subprocess_env,
    truncate_index,
    wait_for,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

ACTORS = 150
EVENTS = 1500
FAULTY_EVENTS = 400  # enough for a fault at commit 300
# The sync_reason of a repo whose commit each fault spoiled.
MARKED_AS = {"bad-signature": "bad-signature", "missing-block": "missing-block", "cid-mismatch": "cid-mismatch",
             "too-big": "too-big", "gap": "commits-missed"}
Record = tuple[str, str, str, str]  # did, collection, rkey, cid
RELAY_COLUMNS = ("seq", "status_position", "handle")


@dataclass
class Simulation:
    firehose: SignedFirehose
    pds: LocalPds


@pytest.fixture
def simulate(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Simulation]]:
    """Makes the signed simulation (with the given commit faults), its DID documents in a local PLC directory,
    its handles in a local DNS server and its repositories in a local PDS, all in the settings; commits verified."""
    with contextlib.ExitStack() as stack:

        def make(*faults: CommitFault) -> Simulation:
            firehose = SignedFirehose(seed=31, actors=ACTORS, faults=faults)
            network = stack.enter_context(identity_network(settings, monkeypatch))
            pds = stack.enter_context(LocalPds(firehose.accounts))
            network.plc.documents = firehose.accounts.documents
            network.plc.tombstoned = firehose.accounts.tombstoned
            network.dns.handles = firehose.accounts.handles
            settings.IDENTITY_HOST_OVERRIDES = {"pds.sim.test": pds.address}
            settings.VERIFY_COMMITS = True
            # The first batches need the keys of every account at once: on a busy machine two seconds may not
            # be enough, and a commit whose key comes late is refused (then resynced), which is not under test.
            settings.SIGNING_KEY_WAIT = 30.0
            return Simulation(firehose, pds)

        yield make


def stored_records(did: str | None = None) -> set[Record]:
    records: set[Record] = set()
    for model in (*MODEL_BY_COLLECTION.values(), GenericRecord):
        rows = model.objects.all() if did is None else model.objects.filter(did=did)
        for uri, cid in rows.values_list("uri", "cid"):
            owner, collection, rkey = uri.removeprefix("at://").split("/")
            records.add((owner, collection, rkey, cid))
    return records


def repo_records(firehose: SignedFirehose, did: str) -> set[Record]:
    repo = firehose.accounts.repos[did]
    return {(did, *path.split("/"), libipld.encode_cid(cid)) for path, cid in repo.records.items()}


def body_of(entry: tuple[int, bytes]) -> dict[str, Any]:
    return decode_frame(entry[1]).body


def index(frames: list[tuple[int, bytes]], *, generation: int = 1) -> None:
    push(redis_store.connect(), frames, generation=generation)
    drain(batch_size=200)
    # The worker's reader thread (appview/indexing/worker.py) checks signatures, so it reads DID documents from
    # PostgreSQL, and ends without closing that connection: collected now, it cannot hold the test database open.
    gc.collect()


def start_over() -> None:
    """An empty index and stream, as before the first event."""
    truncate_index()
    client = redis_store.connect()
    keys = list(client.scan_iter(match=django_settings.REDIS_KEY_PREFIX + "*", count=1000))
    if keys:
        client.delete(*keys)


def without_relay_numbering(tables: dict[str, Any]) -> dict[str, Any]:
    """Every row of the index but the numbers a relay gave the events (the seq each record row keeps, the seq that
    breaks ties of account event times in ``status_position``) and actors' handles (confirmed in the background,
    whenever a DID document comes)."""
    return {table: [{column: value for column, value in row.items() if column not in RELAY_COLUMNS}
                    if isinstance(row, dict) else row for row in rows] for table, rows in tables.items()}


def resync_everything_due() -> Resyncer:
    resyncer = Resyncer(concurrency=2)
    while resyncer.step():
        resyncer.wait()
    return resyncer


def test_it_stores_the_same_records_with_verification_on_as_off(simulate: Callable[..., Simulation],
                                                                settings: Settings) -> None:
    simulation = simulate()
    frames = list(simulation.firehose.frames(EVENTS))
    index(frames)
    verified = stored_records()
    marked = dict(Actor.objects.exclude(sync_status="active").values_list("did", "sync_reason"))
    start_over()
    settings.VERIFY_COMMITS = False
    index(frames)
    assert len(verified) > EVENTS / 2
    assert stored_records() == verified
    # Verification refused nothing but what no key could check: commits of accounts deleted later in the stream
    # (their DID is tombstoned by now), and the repos a #sync event asks to resync.
    assert set(marked.values()) <= {"no-signing-key", "sync-event"}
    tombstoned = simulation.firehose.accounts.tombstoned
    assert {did for did, reason in marked.items() if reason == "no-signing-key"} <= tombstoned


@pytest.mark.parametrize("kind", sorted(MARKED_AS))
def test_it_marks_the_repo_of_a_spoiled_commit_and_resyncs_it_from_the_pds(
        kind: str, simulate: Callable[..., Simulation]) -> None:
    simulation = simulate(CommitFault(kind, at=300))
    firehose = simulation.firehose
    frames = list(firehose.frames(EVENTS))
    [fault] = firehose.injected
    index(frames)
    if kind == "gap":
        revs = [body["rev"] for body in map(body_of, frames) if body.get("repo") == fault.did]
        assert min(revs) < fault.rev < max(revs)  # the index knows the repo, then sees a commit that follows none
        # The repo's next commit names the missed one as its since: after a grace period, no worker holds it.
        services.queue_repos_missing_commits(grace=timedelta(0))
    actor = Actor.objects.get(did=fault.did)
    assert (actor.sync_status, actor.sync_reason) == ("desynchronized", MARKED_AS[kind])
    before = stored_records(fault.did)
    expected = repo_records(firehose, fault.did)
    assert before != expected  # the spoiled commit's records (at least) are missing
    if fault.seq is not None:  # a commit that came, refused whole and counted by reason
        [spoiled] = [body_of(entry) for entry in frames if entry[0] == fault.seq]
        written = {(fault.did, *op["path"].split("/"), libipld.encode_cid(op["cid"])) for op in spoiled["ops"]
                   if op["action"] != "delete" and isinstance(op.get("cid"), bytes)}
        assert (written or kind == "too-big") and not written & before  # a tooBig commit carries no ops
        assert metrics(redis_store.connect())[f"errors:{MARKED_AS[kind]}"] == 1
    resyncer = resync_everything_due()
    assert resyncer.stats.done >= 1
    actor.refresh_from_db()
    assert (actor.sync_status, actor.rev) == ("active", firehose.accounts.repos[fault.did].rev)
    assert stored_records(fault.did) == expected
    assert_aggregates_match_rows()
    assert any(request.path.endswith("getRepo") and fault.did.replace(":", "%3A") in request.query
               for request in simulation.pds.requests)


def test_it_gives_the_same_database_when_the_firehose_switches_to_a_relay_that_numbers_events_otherwise(
        simulate: Callable[..., Simulation]) -> None:
    simulation = simulate()
    frames = list(simulation.firehose.frames(EVENTS))
    index(frames)
    from_one_relay = without_relay_numbering(snapshot())
    start_over()
    # Relay A up to 60% of the events; relay B, numbering from 100000, from 40%: a fifth of the events twice.
    index(frames[: EVENTS * 6 // 10])
    index([(seq + 100_000, renumbered(frame, seq + 100_000)) for seq, frame in frames[EVENTS * 4 // 10:]],
          generation=2)
    assert diff(from_one_relay, without_relay_numbering(snapshot())) == []


@pytest.mark.parametrize("order", ["live-newer-first", "resync-first"])
def test_it_ends_at_the_repository_s_newest_rev_whether_live_commits_reach_the_index_before_or_after_a_resync(
        order: str, simulate: Callable[..., Simulation]) -> None:
    """Live commits are not held back during a resync: each write carries its rev, and the resync's store refuses
    what is at or below the fetched rev. A commit newer than the fetched repository survives it, one older than it
    (a late redelivery) is refused, in either order."""
    simulation = simulate(CommitFault("bad-signature", at=300))
    firehose = simulation.firehose
    first = list(firehose.frames(FAULTY_EVENTS))
    [fault] = firehose.injected
    index(first[:FAULTY_EVENTS // 2])
    fetched = firehose.accounts.repos[fault.did].export_car()  # the repository as the resync fetches it
    late = first[FAULTY_EVENTS // 2:]  # live commits at or below the fetched rev, delivered late
    newer: list[tuple[int, bytes]] = []
    while not any(body_of(entry).get("repo") == fault.did for entry in newer):  # a newer commit of the repo
        newer += firehose.frames(100)
    key = identity.resolve(fault.did).signing_key
    if order == "live-newer-first":
        index(newer, generation=2)
        store_repository(fault.did, verify_repository(fetched, fault.did, key))
        index(late, generation=3)
    else:
        index(late)
        store_repository(fault.did, verify_repository(fetched, fault.did, key))
        index(newer, generation=2)
    assert stored_records(fault.did) == repo_records(firehose, fault.did)
    assert Actor.objects.get(did=fault.did).rev == firehose.accounts.repos[fault.did].rev
    assert not Actor.objects.filter(sync_reason="since-mismatch").exists()  # late commits broke no chain
    assert_aggregates_match_rows()


def test_it_marks_a_failing_resync_error_and_tries_again_later_doubling_from_a_minute_to_an_hour(
        simulate: Callable[..., Simulation], settings: Settings) -> None:
    simulation = simulate(CommitFault("bad-signature", at=300))
    index(list(simulation.firehose.frames(FAULTY_EVENTS)))
    [fault] = simulation.firehose.injected
    simulation.pds.answer_500(3)  # then the client leaves the failing host alone for a while: fails at once
    client = Outbound(timeout=2.0, concurrency=1, host_overrides=settings.IDENTITY_HOST_OVERRIDES)
    for tries in range(1, 9):
        started = timezone.now()
        with pytest.raises(ResyncError):
            resync(fault.did, client=client)
        actor = Actor.objects.get(did=fault.did)
        assert (actor.sync_status, actor.sync_tries, actor.sync_reason[:6]) == ("error", tries, "fetch-")
        wait = min(60 * 2 ** (tries - 1), 3600)
        assert 0.8 * wait - 1 <= (actor.resync_after - started).total_seconds() <= 1.2 * wait + 1
    Actor.objects.filter(did=fault.did).update(resync_after=timezone.now())
    assert resync_everything_due().stats.done >= 1
    actor = Actor.objects.get(did=fault.did)
    assert (actor.sync_status, actor.sync_tries, actor.resync_after) == ("active", 0, None)
    assert stored_records(fault.did) == repo_records(simulation.firehose, fault.did)


def test_it_resyncs_the_queued_repositories_in_a_run_resync_process_that_sigterm_stops(
        simulate: Callable[..., Simulation], settings: Settings) -> None:
    simulation = simulate(CommitFault("missing-block", at=300))
    index(list(simulation.firehose.frames(FAULTY_EVENTS)))
    [fault] = simulation.firehose.injected
    environment = subprocess_env(
        PLC_URL=settings.PLC_URL, VERIFY_COMMITS="1",
        DNS_NAMESERVERS=",".join(f"{host}:{port}" for host, port in settings.DNS_NAMESERVERS),
        IDENTITY_HOST_OVERRIDES=",".join(f"{name}={host}:{port}"
                                         for name, (host, port) in settings.IDENTITY_HOST_OVERRIDES.items()))
    running = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "run_resync", "--concurrency", "2"],
                               cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(running.stdout or ()), daemon=True)
    reader.start()
    try:
        wait_for(lambda: Actor.objects.get(did=fault.did).sync_status == "active", timeout=60)
        running.send_signal(signal.SIGTERM)
        assert running.wait(timeout=60) == 0
        reader.join(timeout=10)
    finally:
        stop(running)
    assert any("resync stopped:" in line for line in lines), lines[-5:]
    actor = Actor.objects.get(did=fault.did)
    assert (actor.sync_status, actor.rev) == ("active", simulation.firehose.accounts.repos[fault.did].rev)
    assert stored_records(fault.did) == repo_records(simulation.firehose, fault.did)
