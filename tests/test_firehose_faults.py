"""A real run_relay_sim that misbehaves (drops, stalls, error frames, rewinds, bad and oversize frames,
a cursor in the future or too old): the firehose loop, in this process, survives each with no gap and
no duplicate in firehose:events. The relays start together, once; seqs are beyond 32 bits."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from harness.processes import Service
from harness.servers import free_port
from pipeline import redis_store
from pipeline.models import IndexCursor
from relaysim.simulation import SyntheticFirehose
from tests.firehose_helpers import (
    config,
    cursor,
    run_in_process,
    serving,
    stream_frames,
    stream_positions,
    wait_listening,
)

pytestmark = pytest.mark.django_db(transaction=True)  # the firehose claims a stream generation for each relay

SEED = 11
START = 5_000_000_000  # above 2^32
EVENTS = 2000
LAST = START + EVENTS - 1

RELAYS = {
    "drop": ["--drop-every", "300"],
    "stall": ["--stall-after", "800", "--stall-seconds", "60"],
    "error": ["--error-after", "700"],
    "rewind": ["--rewind-every", "100"],
    "malformed": ["--malformed-every", "50"],
    "everything": ["--drop-every", "450", "--rewind-every", "70", "--malformed-every", "30", "--error-after", "900"],
    # Events emitted at once to a backlog of about 50 kB: a cursor at the start is outdated.
    "outdated": ["--start-immediately", "--backlog-mb", "0.05"],
}


@pytest.fixture(scope="module")
def relays(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    logs = tmp_path_factory.mktemp("relays")
    env = {**os.environ, "REDIS_KEY_PREFIX": settings.REDIS_KEY_PREFIX, "PYTHONUNBUFFERED": "1"}
    common = ["--seed", str(SEED), "--start-seq", str(START)]
    commands = {name: [*common, "--rate", "0", "--events", str(EVENTS), *args] for name, args in RELAYS.items()}
    services = {
        name: Service(name, ["run_relay_sim", "--port", str(free_port()), *args], env, logs / f"{name}.log").start()
        for name, args in commands.items()
    }
    with serving(services) as urls:
        yield urls


@pytest.fixture(scope="module")
def expected() -> list[tuple[int, bytes]]:
    return list(SyntheticFirehose(seed=SEED, start_seq=START).frames(EVENTS))


def reached(seq: int) -> bool:
    return cursor(redis_store.connect()) == seq


@pytest.mark.timeout(60)
def test_it_survives_dropped_connections_without_gap_or_duplicate(relays: dict[str, str],
                                                                  expected: list[tuple[int, bytes]]) -> None:
    firehose = run_in_process(config(relays["drop"]), lambda: reached(LAST), timeout=40)
    assert stream_frames(redis_store.connect()) == expected
    assert firehose.counters.reconnects >= EVENTS // 300


@pytest.mark.timeout(60)
def test_it_reconnects_after_a_stall(relays: dict[str, str], expected: list[tuple[int, bytes]]) -> None:
    firehose = run_in_process(config(relays["stall"], stall_seconds=1.0), lambda: reached(LAST), timeout=30)
    assert stream_frames(redis_store.connect()) == expected
    assert firehose.counters.reconnects == 2  # the relay stalls after 800 events on each connection


@pytest.mark.timeout(60)
def test_it_reconnects_from_its_cursor_after_an_error_frame(relays: dict[str, str],
                                                            expected: list[tuple[int, bytes]]) -> None:
    firehose = run_in_process(config(relays["error"]), lambda: reached(LAST), timeout=30)
    assert stream_frames(redis_store.connect()) == expected
    # ConsumerTooSlow after 700 events on each connection
    assert (firehose.counters.error_frames, firehose.counters.reconnects) == (2, 2)


@pytest.mark.timeout(60)
def test_it_skips_the_events_a_relay_sends_again(relays: dict[str, str], expected: list[tuple[int, bytes]]) -> None:
    firehose = run_in_process(config(relays["rewind"]), lambda: reached(LAST), timeout=30)
    assert stream_frames(redis_store.connect()) == expected
    assert firehose.counters.duplicates >= 3 * (EVENTS // 100 - 1)
    assert firehose.counters.pushed == EVENTS


@pytest.mark.timeout(60)
def test_it_counts_and_skips_bad_and_oversize_frames(relays: dict[str, str],
                                                     expected: list[tuple[int, bytes]]) -> None:
    firehose = run_in_process(config(relays["malformed"]), lambda: reached(LAST), timeout=30)
    assert stream_frames(redis_store.connect()) == expected
    # One bad frame (truncated, garbage, wrong header, wrong field types, over 5 MB) before every 50th event.
    assert firehose.counters.errors == EVENTS // 50
    assert firehose.counters.reconnects == 0


@pytest.mark.timeout(60)
def test_it_skips_frames_over_its_limit_unread_and_keeps_the_connection(
        relays: dict[str, str], expected: list[tuple[int, bytes]]) -> None:
    # With a 1 MiB limit, the 5 MB bad frames are dropped as they arrive, not read into memory.
    firehose = run_in_process(config(relays["malformed"], max_frame_bytes=1024 * 1024), lambda: reached(LAST),
                              timeout=30)
    assert stream_frames(redis_store.connect()) == expected
    assert firehose.counters.errors == EVENTS // 50
    assert firehose.counters.reconnects == 0


@pytest.mark.timeout(60)
def test_it_survives_every_fault_at_once(relays: dict[str, str], expected: list[tuple[int, bytes]]) -> None:
    firehose = run_in_process(config(relays["everything"], stall_seconds=2.0), lambda: reached(LAST), timeout=40)
    assert stream_frames(redis_store.connect()) == expected
    assert firehose.counters.reconnects >= 3


@pytest.mark.timeout(60)
def test_it_takes_a_cursor_in_the_future_for_a_restarted_numbering_and_reads_on_live(
        tmp_path: Path, expected: list[tuple[int, bytes]]) -> None:
    # A relay numbered far below the cursor, as a rebuilt relay is: waiting for it would stall for ever.
    relay = Service("future", ["run_relay_sim", "--port", str(free_port()), "--seed", str(SEED), "--start-seq",
                               str(START), "--start-immediately", "--rate", "400", "--events", "1000"],
                    {**os.environ, "PYTHONUNBUFFERED": "1"}, tmp_path / "relay.log").start()
    try:
        url = wait_listening(relay)
        firehose = run_in_process(config(url, cursor=START + 10**9), lambda: reached(START + 999), timeout=30)
    finally:
        relay.terminate(timeout=10)
    frames = stream_frames(redis_store.connect())
    assert frames and frames == expected[1000 - len(frames):1000]  # live from where the relay was, no gap
    # Generation 1 was claimed at the start for the cursor given; the restart claimed 2 for what followed.
    assert {generation for generation, _ in stream_positions(redis_store.connect())} == {2}
    assert IndexCursor.objects.get(name=firehose.relay_host).generation == 2
    assert firehose.counters.error_frames == 1


@pytest.mark.timeout(60)
def test_it_goes_on_from_the_oldest_event_kept_when_its_cursor_is_outdated(
        relays: dict[str, str], expected: list[tuple[int, bytes]]) -> None:
    firehose = run_in_process(config(relays["outdated"], cursor=START), lambda: reached(LAST), timeout=30)
    frames = stream_frames(redis_store.connect())
    assert firehose.counters.infos == 1
    assert 0 < len(frames) < EVENTS - 1  # the relay kept only the newest events
    assert frames == expected[-len(frames):]
