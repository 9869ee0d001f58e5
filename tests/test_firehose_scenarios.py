"""Every relay scenario of the fixtures, served by a real run_relay_sim, reaches firehose:events exactly
once and in order (the firehose loop runs in this process; the relays start together, once)."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from harness.processes import Service
from harness.servers import free_port
from pipeline import redis_store
from relaysim.simulation import load_replay
from tests.firehose_helpers import (
    accepted_events,
    config,
    cursor,
    run_in_process,
    scenario_paths,
    serving,
    stream_frames,
)

SCENARIOS = scenario_paths()


@pytest.fixture(scope="module")
def relays(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One run_relay_sim per scenario, started together: name -> URL."""
    logs = tmp_path_factory.mktemp("relays")
    env = {**os.environ, "REDIS_KEY_PREFIX": settings.REDIS_KEY_PREFIX, "PYTHONUNBUFFERED": "1"}
    services = {
        path.stem: Service(
            path.stem, ["run_relay_sim", "--port", str(free_port()), "--rate", "0", "--replay", str(path)],
            env, logs / f"{path.stem}.log",
        ).start()
        for path in SCENARIOS
    }
    with serving(services) as urls:
        yield urls


def test_the_fixture_scenarios_are_there() -> None:
    names = {path.stem for path in SCENARIOS}
    assert {"account_lifecycle", "post_lifecycle", "rev_ordering", "seq_ordering", "legacy"} <= names, names


@pytest.mark.timeout(60)
@pytest.mark.django_db(transaction=True)  # the firehose claims a stream generation for the relay
@pytest.mark.parametrize("path", SCENARIOS, ids=[path.stem for path in SCENARIOS])
def test_it_puts_each_scenario_event_in_the_stream_once_and_in_order(path: Path, relays: dict[str, str]) -> None:
    expected = accepted_events([frame.frame for frame in load_replay(path)])
    assert expected, f"{path.name} has no valid repo event"
    client = redis_store.connect()

    firehose = run_in_process(config(relays[path.stem]),
                              lambda: cursor(client) == expected[-1][0],
                              timeout=30)

    assert stream_frames(client) == expected
    assert firehose.counters.pushed == len(expected)
    assert firehose.counters.reconnects == 0
