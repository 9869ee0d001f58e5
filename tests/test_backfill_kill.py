"""A backfill killed with SIGKILL and started again ends with the same database as a run that was never
interrupted, and never loads again a repository it had stored."""

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs

import psutil
import pytest
from django.conf import settings as django_settings
from pytest_django.fixtures import Settings

from appview.models import BackfillRepo
from pipeline import redis_store
from tests.backfill_helpers import RELAY_HOST, Network, generated, local_network, stored_records
from tests.test_backfill_live import index_snapshot
from tests.worker_helpers import ROOT, assert_aggregates_match_rows, subprocess_env, truncate_index

pytestmark = pytest.mark.django_db(transaction=True)

ACCOUNTS = 40


def start_backfill(network: Network, did_file: Path, log: Path, *, lease: int = 2) -> subprocess.Popen[bytes]:
    overrides = {**{host: pds.address for host, pds in network.pdses.items()},
                 RELAY_HOST: network.pds().address}
    environment = subprocess_env(
        PLC_URL=network.plc.url, VERIFY_COMMITS="1", BACKFILL_LEASE_SECONDS=str(lease), BACKFILL_BATCH_REPOS="2",
        IDENTITY_HOST_OVERRIDES=",".join(f"{host}={address}:{port}" for host, (address, port) in overrides.items()),
        REDIS_URL=django_settings.REDIS_URL)
    return subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "backfill", "--did-file", str(did_file),
                             "--concurrency", "2", "--processes", "1"],
                            cwd=ROOT, env=environment, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_until_done(process: subprocess.Popen[bytes], log: Path, count: int) -> None:
    deadline = time.monotonic() + 60
    while BackfillRepo.objects.filter(state="done").count() < count:
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)


def fetched(network: Network, *, since: float = 0.0) -> Counter[str]:
    """How many times each repository was fetched (from ``since``, a time.monotonic())."""
    return Counter(parse_qs(request.query)["did"][0] for request in network.pds().requests
                   if request.path.endswith("getRepo") and request.at >= since)


def test_it_continues_after_a_sigkill_without_loading_a_stored_repository_again(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with local_network(settings, monkeypatch) as network:
        repos = generated(network, tmp_path, accounts=ACCOUNTS, records=60, seed=5)
        did_file = tmp_path / "dids.txt"
        did_file.write_text("# the repositories to load\n" + "\n".join(repos) + "\n")
        log = tmp_path / "backfill.log"
        network.pds().delay = 0.05
        first = start_backfill(network, did_file, log)
        try:
            wait_until_done(first, log, 8)
            staging = psutil.Process(first.pid).children(recursive=True)
            first.kill()
            first.wait(timeout=10)
        finally:
            if first.poll() is None:
                first.kill()
        # Its staging processes (and multiprocessing's resource tracker) end with it.
        assert any("spawn_main" in " ".join(process.cmdline()) for process in staging)
        assert not psutil.wait_procs(staging, timeout=15)[1]
        stored_before = set(BackfillRepo.objects.filter(state="done").values_list("did", flat=True))
        assert len(stored_before) < ACCOUNTS
        restarted_at = time.monotonic()
        second = start_backfill(network, did_file, log)
        assert second.wait(timeout=120) == 0, log.read_text()
        assert not set(fetched(network, since=restarted_at)) & stored_before
        assert max(fetched(network).values()) <= 2  # a repository in flight at the kill is fetched once more
        assert set(BackfillRepo.objects.values_list("state", flat=True)) == {"done"}
        for did, records in repos.items():
            assert stored_records(did) == records
        assert_aggregates_match_rows()
        interrupted = index_snapshot()

        truncate_index()
        network.pds().delay = 0.0
        third = start_backfill(network, did_file, log)
        assert third.wait(timeout=120) == 0, log.read_text()
        assert index_snapshot() == interrupted


def test_it_stops_on_sigterm_and_leaves_what_it_had_claimed_to_the_next_run(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with local_network(settings, monkeypatch) as network:
        repos = generated(network, tmp_path, accounts=ACCOUNTS, records=20, seed=6)
        did_file = tmp_path / "dids.txt"
        did_file.write_text("\n".join(repos))
        log = tmp_path / "backfill.log"
        network.pds().delay = 0.05
        lease = 600  # a claim left behind would keep its repository from the next run for ten minutes
        first = start_backfill(network, did_file, log, lease=lease)
        wait_until_done(first, log, 4)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0, log.read_text()
        assert "stopped:" in log.read_text()
        states = set(BackfillRepo.objects.values_list("state", flat=True))
        assert "in_progress" not in states and "pending" in states
        assert redis_store.connect().hget(redis_store.backfill_progress(), "state") == b"stopped"
        network.pds().delay = 0.0
        second = start_backfill(network, did_file, log, lease=lease)
        assert second.wait(timeout=60) == 0, log.read_text()
    assert set(BackfillRepo.objects.values_list("state", flat=True)) == {"done"}
    for did, records in repos.items():
        assert stored_records(did) == records
