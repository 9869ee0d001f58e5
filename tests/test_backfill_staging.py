"""The staging processes of backfill (appview.sync.backfill_stage): a repository staged in a process of the pool
reaches the writer as the loader thread would have staged it; its faults come back as the same SyncErrors; a
staging process that dies fails one repository, and the pool goes on."""

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from pytest_django.fixtures import Settings

from appview.sync.backfill_car import open_repository
from appview.sync.backfill_stage import StagingPool, StagingProcessError, stage_repository
from appview.sync.backfill_store import StagedRepo
from protocol.repo import SyncError
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
                             should_stop=lambda: False)
    return [*parts, final]


def contents(parts: list[StagedRepo]) -> list[tuple[object, ...]]:
    return [(part.did, part.rev, part.final, part.records, part.records_before, part.refused, part.generic,
             part.dids, dict(part.deltas), {key: b"".join(spool.chunks()) for key, spool in part.spools.items()})
            for part in parts]


def test_it_stages_in_a_process_what_the_loader_thread_stages(network: GeneratedNetwork, pool: StagingPool) -> None:
    for did, repo in network.repos.items():
        car = repo.export_car()
        staged = pool.stage(car, did, network.keys[did].public_key)
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
            pool.stage(spoiled, did, key)
        assert failure.value.reason == reason


def test_it_fails_one_repository_when_a_staging_process_dies_and_then_goes_on(
        network: GeneratedNetwork, pool: StagingPool) -> None:
    did, repo = next(iter(network.repos.items()))
    car, key = repo.export_car(), network.keys[did].public_key
    assert pool.stage(car, did, key)
    children = [child for child in psutil.Process().children() if "spawn_main" in " ".join(child.cmdline())]
    assert len(children) == 1
    for child in children:
        child.kill()
    psutil.wait_procs(children, timeout=10)
    with pytest.raises(StagingProcessError):
        pool.stage(car, did, key)
    assert contents(pool.stage(car, did, key)) == contents(in_thread(car, did, network))
