"""manage.py run_firehose as a process, against a real run_relay_sim: firehose:status over its life,
SIGTERM, kill -9, Redis losing its data, and backpressure."""

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from harness.processes import Pipeline, log_tail, wait_until
from harness.servers import throwaway_redis
from pipeline import redis_store
from pipeline.cursor import relay_host
from pipeline.models import IndexCursor
from protocol.frames import decode_frame
from relaysim.simulation import SyntheticFirehose
from tests.firehose_helpers import cursor, read_status, stream_frames, stream_length, stream_seqs, wait_listening

START = 2**32 + 1000  # seqs beyond 32 bits

# run_firehose claims a stream generation for its relay in the test database.
pytestmark = pytest.mark.django_db(transaction=True)


def database_url() -> str:
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    with Pipeline(database_url=database_url(), redis_url=settings.REDIS_URL, output_dir=tmp_path) as running:
        yield running


def relay(pipeline: Pipeline, *args: str) -> None:
    wait_listening(pipeline.relay("--seed", "5", "--start-seq", str(START), *args))


def firehose(pipeline: Pipeline, *args: str) -> None:
    pipeline.firehose("--backoff", "0.05", *args)


def status_of(pipeline: Pipeline) -> dict[str, object]:
    return read_status(pipeline.redis())


def logs(pipeline: Pipeline) -> str:
    return "\n".join(f"--- {service.name}:\n{log_tail(service.log_path)}" for service in pipeline.services)


def wait_cursor(pipeline: Pipeline, seq: int, timeout: float = 30) -> None:
    wait_until(lambda: cursor(pipeline.redis()) == seq, timeout=timeout, interval=0.05,
               message=lambda: f"firehose:cursor {seq} (it is {cursor(pipeline.redis())})\n{logs(pipeline)}")


@pytest.mark.timeout(60)
def test_it_keeps_its_status_fresh_and_it_expires_when_the_process_is_killed(pipeline: Pipeline) -> None:
    relay(pipeline, "--rate", "0", "--events", "50")
    firehose(pipeline, "--cursor", "0")
    wait_cursor(pipeline, START + 49)
    client = pipeline.redis()
    # Written at connect, then every 5 s: within 5 s it shows the cursor.
    first = wait_until(lambda: (s := status_of(pipeline)).get("currentCursor") == str(START + 49) and s,
                       timeout=6, interval=0.1, message=lambda: f"the cursor in {status_of(pipeline)}")
    assert first["connected"] is True
    assert first["url"] == pipeline.relay_url
    assert (first["relay"], first["generation"]) == (f"127.0.0.1:{pipeline.relay_port}", 1)
    assert first["eventsReceived"] == 50 and first["errors"] == 0 and first["paused"] is False
    last_frame = list(SyntheticFirehose(seed=5, start_seq=START).frames(50))[-1][1]
    assert first["lastEventTime"] == decode_frame(last_frame).body["time"]  # the relay's time of the last event
    assert 0 < client.ttl(redis_store.firehose_status()) <= 10

    # Idle: no event arrives, yet the status is written again within 5 s.
    refreshed = wait_until(lambda: (s := status_of(pipeline))["updatedAt"] != first["updatedAt"] and s,
                           timeout=7, interval=0.1, message="a refresh of firehose:status")
    assert datetime.fromisoformat(str(refreshed["updatedAt"])) > datetime.fromisoformat(str(first["updatedAt"]))
    assert refreshed["connected"] is True and refreshed["eventsReceived"] == 50

    # The relay goes away: the status says so at once, not at the next refresh.
    relay_service = pipeline.services[0]
    relay_service.kill()
    gone = time.monotonic()
    wait_until(lambda: status_of(pipeline).get("connected") is False, timeout=2, interval=0.05,
               message="connected: false after the relay died")
    assert time.monotonic() - gone < 2

    pipeline.services[1].kill()
    killed = time.monotonic()
    wait_until(lambda: not client.exists(redis_store.firehose_status()), timeout=12, interval=0.1,
               message="firehose:status to expire after SIGKILL")
    assert time.monotonic() - killed <= 10.5


@pytest.mark.timeout(90)
def test_it_stops_on_sigterm_saving_its_cursor_and_resumes_there(pipeline: Pipeline) -> None:
    relay(pipeline, "--rate", "1500", "--events", "6000")
    firehose(pipeline, "--cursor", "0")
    client = pipeline.redis()
    wait_until(lambda: stream_length(client) >= 1000, timeout=30, message=lambda: logs(pipeline))

    assert pipeline.services[1].terminate(timeout=15) == 0
    stopped = status_of(pipeline)
    saved = cursor(client)
    seqs = stream_seqs(client)
    assert saved == seqs[-1]
    assert seqs == list(range(START, saved + 1))
    assert stopped["connected"] is False
    assert stopped["currentCursor"] == str(saved)
    assert "stopped at cursor" in pipeline.services[1].log()

    firehose(pipeline)  # no --cursor: firehose:cursor says where to go on
    wait_cursor(pipeline, START + 5999)
    assert stream_seqs(client) == list(range(START, START + 6000))
    assert f"resuming from cursor {saved} (firehose:cursor in Redis)" in pipeline.services[2].log()


@pytest.mark.timeout(90)
def test_it_pushes_nothing_twice_after_kill_9(pipeline: Pipeline) -> None:
    relay(pipeline, "--rate", "2000", "--events", "6000")
    firehose(pipeline, "--cursor", "0")
    client = pipeline.redis()
    wait_until(lambda: stream_length(client) >= 1500, timeout=30, message=lambda: logs(pipeline))
    pipeline.services[1].kill()
    assert stream_seqs(client) == list(range(START, START + stream_length(client)))

    firehose(pipeline)
    wait_cursor(pipeline, START + 5999)
    expected = list(SyntheticFirehose(seed=5, start_seq=START).frames(6000))
    assert stream_frames(client) == expected


@pytest.mark.timeout(90)
def test_it_resumes_from_the_postgresql_cursor_when_redis_lost_its_data(pipeline: Pipeline) -> None:
    relay(pipeline, "--rate", "0", "--events", "1000")
    firehose(pipeline, "--cursor", "0")
    wait_cursor(pipeline, START + 999)
    assert pipeline.services[1].terminate(timeout=15) == 0
    # What the workers committed.
    IndexCursor.objects.filter(name=relay_host(pipeline.relay_url)).update(seq=START + 599)
    connection.close()
    client = pipeline.redis()
    client.delete(*client.scan_iter(match=settings.REDIS_KEY_PREFIX + "*"))

    firehose(pipeline)
    wait_cursor(pipeline, START + 999)
    assert stream_seqs(client) == list(range(START + 600, START + 1000))
    assert "(durable cursor in PostgreSQL)" in pipeline.services[2].log()


@pytest.mark.timeout(90)
def test_it_notices_that_redis_lost_its_data_while_it_runs(pipeline: Pipeline) -> None:
    relay(pipeline, "--rate", "1000", "--events", "3000")
    firehose(pipeline, "--cursor", "0")
    client = pipeline.redis()
    wait_until(lambda: stream_length(client) >= 800, timeout=30, message=lambda: logs(pipeline))
    IndexCursor.objects.filter(name=relay_host(pipeline.relay_url)).update(seq=START + 299)
    connection.close()
    client.delete(*client.scan_iter(match=settings.REDIS_KEY_PREFIX + "*"))

    wait_cursor(pipeline, START + 2999)
    assert stream_seqs(client) == list(range(START + 300, START + 3000))
    assert "Redis lost its data" in pipeline.services[1].log()


@pytest.mark.timeout(90)
def test_it_holds_what_it_read_while_redis_is_down_and_pushes_it_after(tmp_path: Path) -> None:
    with throwaway_redis() as server, Pipeline(database_url=database_url(), redis_url=server.url,
                                                output_dir=tmp_path) as pipeline:
        relay(pipeline, "--rate", "1000", "--events", "3000")
        firehose(pipeline, "--cursor", "0")
        client = pipeline.redis()
        wait_until(lambda: stream_length(client) >= 500, timeout=30, message=lambda: logs(pipeline))
        server.stop(keep_data=True)
        time.sleep(2)
        server.start()
        wait_cursor(pipeline, START + 2999)
        assert stream_seqs(client) == list(range(START, START + 3000))
        assert "retrying in" in pipeline.services[1].log()


@pytest.mark.timeout(90)
def test_it_pauses_at_the_high_water_mark_instead_of_trimming(tmp_path: Path) -> None:
    events = 3000
    with Pipeline(database_url=database_url(), redis_url=settings.REDIS_URL, output_dir=tmp_path,
                  env={"STREAM_HIGH_WATER": "200", "STREAM_LOW_WATER": "100"}) as pipeline:
        relay(pipeline, "--rate", "0", "--events", str(events))
        firehose(pipeline, "--cursor", "0")
        client = pipeline.redis()
        wait_until(lambda: status_of(pipeline).get("paused") is True, timeout=30, interval=0.05,
                   message=lambda: logs(pipeline))
        length = stream_length(client)
        assert 200 <= length <= 400  # the mark plus what was already read (a small batch)
        time.sleep(1.5)
        assert stream_seqs(client) == list(range(START, START + length))  # nothing trimmed, nothing more read

        # A worker catches up: acknowledged entries are trimmed and reading resumes, until all arrived.
        delivered: list[int] = []
        group, stream = redis_store.CONSUMER_GROUP, redis_store.events_stream()

        def consume() -> bool:
            for _, entries in client.xreadgroup(group, "w", {stream: ">"}, count=100) or []:
                delivered.extend(int(fields[b"seq"]) for _, fields in entries)
                client.xack(stream, group, *(entry_id for entry_id, _ in entries))
            return len(delivered) == events

        wait_until(consume, timeout=40, interval=0.02, message=lambda: f"{len(delivered)} delivered\n{logs(pipeline)}")
        assert delivered == list(range(START, START + events))
        wait_until(lambda: stream_length(client) == 0, timeout=5, message="the acknowledged entries trimmed")
        assert json.loads(client.get(redis_store.firehose_status()))["paused"] is False
        assert "paused reading from the relay" in pipeline.services[1].log()
