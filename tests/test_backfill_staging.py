"""The staging processes of backfill (appview.sync.backfill_stage): a repository staged in a process of the pool
reaches the writer as the loader thread would have staged it; its faults come back as the same SyncErrors; a
staging process that dies fails what the pool held, and the pool goes on."""

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from pytest_django.fixtures import Settings

from appview.sync.backfill_car import open_repository
from appview.sync.backfill_stage import StagingPool, StagingProcessError, stage_repository
from appview.sync.backfill_store import StagedRepo
from protocol.car import block_spans
from protocol.repo import SyncError
from protocol.testing import car_of_cids
from relaysim.bulk_repos import GeneratedNetwork, generate_network


@pytest.fixture
def network(tmp_path: Path) -> GeneratedNetwork:
    return generate_network(tmp_path, accounts=3, records=lambda index: 40 + 30 * index, seed=7)


@pytest.fixture
def pool(settings: Settings) -> Iterator[StagingPool]:
    settings.BACKFILL_BATCH_RECORDS = 25  # the larger repositories come back in parts
    pool = StagingPool(1)
    yield pool
    pool.close()


def in_thread(car: bytes, did: str, network: GeneratedNetwork) -> list[StagedRepo]:
    parts: list[StagedRepo] = []
    final = stage_repository(open_repository(car, did, network.keys[did].public_key), hand_over=parts.append,
                             should_stop=lambda: False, check_tree_first=True)
    return [*parts, final]


def staging_processes() -> list[psutil.Process]:
    """This process's staging processes (not multiprocessing's resource tracker)."""
    return [child for child in psutil.Process().children() if "spawn_main" in " ".join(child.cmdline())]


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def contents(parts: list[StagedRepo]) -> list[tuple[object, ...]]:
    return [(part.did, part.rev, part.final, part.records, part.records_before, part.refused, part.generic,
             part.dids, dict(part.deltas), {key: b"".join(spool.chunks()) for key, spool in part.spools.items()})
            for part in parts]


def test_it_stages_in_a_process_what_the_loader_thread_stages(network: GeneratedNetwork, pool: StagingPool) -> None:
    for did, repo in network.repos.items():
        car = repo.export_car()
        staged = pool.stage(car, did, network.keys[did].public_key, should_stop=lambda: False)
        expected = in_thread(car, did, network)
        assert contents(staged) == contents(expected)
        records = sum(repo.counts.values())
        assert sum(part.records for part in staged) == records
        assert [part.final for part in staged] == [False] * (records // 25) + [True]


def test_it_sends_a_fault_back_as_the_sync_error_the_loader_thread_would_raise(
        network: GeneratedNetwork, pool: StagingPool) -> None:
    did, repo = next(iter(network.repos.items()))
    car = repo.export_car()
    other = list(network.repos)[1]
    for spoiled, key, reason in [(car[:-7], network.keys[did].public_key, "car-invalid"),
                                 (car, network.keys[other].public_key, "bad-signature")]:
        with pytest.raises(SyncError) as failure:
            pool.stage(spoiled, did, key, should_stop=lambda: False)
        assert failure.value.reason == reason


def without_last_record_block(car: bytes, did: str, network: GeneratedNetwork) -> bytes:
    key = network.keys[did].public_key
    *_, (_, last_record) = open_repository(car, did, key).records()
    return car_of_cids(open_repository(car, did, key).index.roots,
                       ((cid, car[start:end]) for cid, (start, end) in block_spans(car).items() if cid != last_record))


@pytest.mark.parametrize("filters", [(), ("com.example.nothing",)])
def test_it_hands_over_no_part_of_a_repository_whose_last_record_block_is_missing(
        filters: tuple[str, ...], network: GeneratedNetwork, settings: Settings) -> None:
    """Whether the record is stored or not (COLLECTION_FILTERS leaves out every collection): the repository is
    incomplete, in the thread and in the pool alike."""
    settings.COLLECTION_FILTERS = filters
    settings.BACKFILL_BATCH_RECORDS = 25
    did, repo = list(network.repos.items())[-1]  # 100 records: parts of 25
    key = network.keys[did].public_key
    spoiled = without_last_record_block(repo.export_car(), did, network)
    handed_over: list[StagedRepo] = []
    with pytest.raises(SyncError) as in_the_thread:
        stage_repository(open_repository(spoiled, did, key), hand_over=handed_over.append,
                         should_stop=lambda: False, check_tree_first=True)
    pool = StagingPool(1)
    try:
        with pytest.raises(SyncError) as in_the_pool:
            pool.stage(spoiled, did, key, should_stop=lambda: False)
    finally:
        pool.close()
    assert (in_the_thread.value.reason, in_the_pool.value.reason, handed_over) == ("missing-block", "missing-block", [])


def test_it_fails_what_it_held_when_a_staging_process_dies_and_then_goes_on(
        pool: StagingPool, tmp_path: Path) -> None:
    (tmp_path / "big").mkdir()
    (tmp_path / "small").mkdir()
    network = generate_network(tmp_path / "big", accounts=1, records=lambda index: 20_000, seed=8)
    did, repo = next(iter(network.repos.items()))
    car, key = repo.export_car(), network.keys[did].public_key
    failure: list[BaseException] = []

    def stage() -> None:
        try:
            pool.stage(car, did, key, should_stop=lambda: False)
        except BaseException as exc:
            failure.append(exc)

    (process,) = staging_processes()
    started = cpu_seconds(process)
    staging = threading.Thread(target=stage)
    staging.start()
    deadline = time.monotonic() + 60
    while cpu_seconds(process) < started + 0.2 and time.monotonic() < deadline:  # at work on the export (~1 s)
        time.sleep(0.02)
    process.kill()
    staging.join(timeout=60)
    assert len(failure) == 1 and isinstance(failure[0], StagingProcessError)
    small, *_ = generate_network(tmp_path / "small", accounts=1, records=lambda index: 30, seed=9).repos.items()
    parts = pool.stage(small[1].export_car(), small[0], None, should_stop=lambda: False)
    assert sum(part.records for part in parts) == 30


def test_it_stops_the_run_at_once_when_its_staging_processes_cannot_start(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "no_such_settings_module")
    with pytest.raises(StagingProcessError):
        StagingPool(1)
