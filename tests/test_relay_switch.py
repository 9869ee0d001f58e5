"""Relay independence (issue #15): a durable cursor per relay host, and stream generations that let every
event of another relay, or of a relay whose numbering started over, into firehose:events. Real
run_relay_sim, run_firehose and run_worker processes on loopback, each test with a Redis server of its own
(so that it may FLUSHALL)."""

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from harness.processes import Pipeline, Service, log_tail, wait_until
from harness.servers import RedisServer, free_port, throwaway_redis
from pipeline import cursor, redis_store, stream
from pipeline.models import IndexCursor
from tests.firehose_helpers import stream_positions

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

A_START = 1000  # relay A numbers its events from here, relay B from 1


def database_url() -> str:
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with throwaway_redis() as server:
        yield server


@pytest.fixture
def pipeline(tmp_path: Path, redis_server: RedisServer) -> Iterator[Pipeline]:
    with Pipeline(database_url=database_url(), redis_url=redis_server.url, output_dir=tmp_path,
                  env={"LOG_LEVEL": "INFO"}) as running:
        yield running


def logs(pipeline: Pipeline) -> str:
    return "\n".join(f"--- {service.name}:\n{log_tail(service.log_path)}" for service in pipeline.services)


def pushed(pipeline: Pipeline) -> stream.Position | None:
    with pipeline.redis() as client:
        return stream.read_cursor(client)


def wait_pushed(pipeline: Pipeline, position: tuple[int, int], timeout: float = 60) -> None:
    wait_until(lambda: pushed(pipeline) == position, timeout=timeout, interval=0.05,
               message=lambda: f"firehose:cursor {position} (it is {pushed(pipeline)})\n{logs(pipeline)}")


def wait_durable(pipeline: Pipeline, relay_url: str, seq: int, timeout: float = 60) -> None:
    wait_until(lambda: pipeline.durable_cursor(relay_url) == seq, timeout=timeout, interval=0.1,
               message=lambda: f"the durable cursor of {relay_url} at {seq} (it is "
                               f"{pipeline.durable_cursor(relay_url)})\n{logs(pipeline)}")


def generation_of(relay_url: str) -> int | None:
    return IndexCursor.objects.get(name=cursor.relay_host(relay_url)).generation


def seqs_of(pipeline: Pipeline, generation: int) -> list[int]:
    with pipeline.redis() as client:
        return [seq for entry_generation, seq in stream_positions(client) if entry_generation == generation]


def total_events(pipeline: Pipeline) -> int:
    with pipeline.redis() as client:
        return int(client.hget(redis_store.cluster_metrics(), "totalEvents") or 0)


def resumed_from(service: Service) -> list[tuple[int | None, str]]:
    """(cursor, where it came from) of each "resuming from" line run_firehose logged."""
    return [(None if number == "None" else int(number), origin)
            for number, origin in re.findall(r"resuming from cursor (\w+) \(([^)]*)\)", service.log())]


def test_it_takes_every_event_of_another_relay_and_keeps_the_cursor_of_each(pipeline: Pipeline) -> None:
    url_a, port_b = pipeline.relay_url, free_port()
    url_b = f"ws://127.0.0.1:{port_b}"
    # Relay A goes on producing after the firehose leaves it.
    pipeline.relay("--seed", "5", "--start-seq", str(A_START), "--rate", "100", "--events", "1000")
    worker = pipeline.worker("w1")
    on_a = pipeline.firehose("--backoff", "0.05", name="firehose-a")
    wait_until(lambda: (position := pushed(pipeline)) is not None and position.seq >= A_START + 299, timeout=60,
               message=lambda: logs(pipeline))
    assert on_a.terminate() == 0
    left_a = pushed(pipeline)
    assert left_a is not None and left_a.generation == 1
    wait_durable(pipeline, url_a, left_a.seq)
    assert worker.terminate() == 0

    # Relay B numbers its events from 1, far below what A's took: none of them is refused.
    pipeline.relay("--seed", "6", "--start-seq", "1", "--rate", "0", "--events", "500", name="relay-b", port=port_b)
    on_b = pipeline.firehose("--backoff", "0.05", name="firehose-b", relay_url=url_b)
    wait_pushed(pipeline, (2, 500))
    assert seqs_of(pipeline, 2) == list(range(1, 501))
    assert resumed_from(on_b) == [(None, "nothing stored: live events only")]
    worker.start()
    wait_durable(pipeline, url_b, 500)
    assert pipeline.durable_cursor(url_a) == left_a.seq  # A's cursor is kept while B is read
    assert (generation_of(url_a), generation_of(url_b)) == (1, 2)
    assert on_b.terminate() == 0
    assert worker.terminate() == 0

    # Back to A: from A's durable cursor, in a new generation, up to A's last event, none missing.
    back_to_a = pipeline.firehose("--backoff", "0.05", name="firehose-a-again")
    wait_pushed(pipeline, (3, A_START + 999))
    assert resumed_from(back_to_a) == [(left_a.seq, "durable cursor in PostgreSQL")]
    assert seqs_of(pipeline, 3) == list(range(left_a.seq + 1, A_START + 1000))
    assert (generation_of(url_a), generation_of(url_b)) == (3, 2)
    assert pipeline.durable_cursor(url_b) == 500


def test_it_follows_a_relay_whose_numbering_restarts_without_an_operator(pipeline: Pipeline) -> None:
    old = pipeline.relay("--seed", "5", "--start-seq", "5000", "--rate", "0", "--events", "300")
    firehose = pipeline.firehose("--backoff", "0.05")
    wait_pushed(pipeline, (1, 5299))
    assert old.terminate() == 0
    # A rebuilt relay on the same host and port, numbering from 1: the firehose's cursor 5299 is in its future.
    pipeline.relay("--seed", "6", "--start-seq", "1", "--rate", "0", "--events", "300", name="relay-rebuilt")
    wait_pushed(pipeline, (2, 300))
    assert seqs_of(pipeline, 1) == list(range(5000, 5300))
    assert seqs_of(pipeline, 2) == list(range(1, 301))
    assert "restarted its numbering (FutureCursor for cursor 5299" in firehose.log()
    assert generation_of(pipeline.relay_url) == 2
    assert pipeline.durable_cursor() == 0  # the old numbering's position means nothing any more
    pipeline.worker("w1")
    pipeline.wait_indexed(300, timeout=60)
    assert total_events(pipeline) == 600


def test_it_resumes_each_relay_from_its_durable_cursor_when_redis_is_wiped(
        pipeline: Pipeline, redis_server: RedisServer) -> None:
    url_a, port_b = pipeline.relay_url, free_port()
    url_b = f"ws://127.0.0.1:{port_b}"
    pipeline.relay("--seed", "5", "--start-seq", str(A_START), "--rate", "100", "--events", "600")
    pipeline.worker("w1")
    on_a = pipeline.firehose("--backoff", "0.05", name="firehose-a")
    wait_until(lambda: pipeline.durable_cursor(url_a) >= A_START + 199, timeout=60, message=lambda: logs(pipeline))
    assert on_a.terminate() == 0

    pipeline.relay("--seed", "6", "--start-seq", "1", "--rate", "200", "--events", "1000", name="relay-b",
                   port=port_b)
    on_b = pipeline.firehose("--backoff", "0.05", name="firehose-b", relay_url=url_b)
    wait_until(lambda: pipeline.durable_cursor(url_b) >= 300, timeout=60, message=lambda: logs(pipeline))
    redis_server.client().flushall()  # while events flow: the next push finds firehose:cursor gone
    wait_durable(pipeline, url_b, 1000)
    [_, (durable_b, origin)] = resumed_from(on_b)
    assert origin == "durable cursor in PostgreSQL" and durable_b is not None and durable_b >= 300
    # Counted from zero again after the wipe: each event after B's durable cursor once, none missing.
    assert total_events(pipeline) == 1000 - durable_b
    assert on_b.terminate() == 0

    redis_server.client().flushall()
    back_to_a = pipeline.firehose("--backoff", "0.05", name="firehose-a-again")
    wait_durable(pipeline, url_a, A_START + 599)
    [(durable_a, origin)] = resumed_from(back_to_a)
    assert origin == "durable cursor in PostgreSQL" and durable_a is not None and durable_a >= A_START + 199
    assert total_events(pipeline) == A_START + 599 - durable_a
    assert pipeline.durable_cursor(url_b) == 1000


def test_it_names_a_relay_by_its_host_and_port_whatever_the_spelling() -> None:
    assert cursor.relay_host("wss://bsky.network") == "bsky.network"
    assert cursor.relay_host("bsky.network") == "bsky.network"
    assert cursor.relay_host("WSS://BSKY.Network:443/") == "bsky.network"
    assert cursor.relay_host("https://relay.example.com:8443") == "relay.example.com:8443"
    assert cursor.relay_host("ws://127.0.0.1:5010") == "127.0.0.1:5010"
    assert cursor.relay_host("127.0.0.1:5010") == "127.0.0.1:5010"
    assert cursor.relay_host("ws://[::1]:5010") == "[::1]:5010"
    assert cursor.relay_host("ws://relay.example:80") == "relay.example"


def test_it_keeps_one_cursor_per_relay_and_moves_it_only_through_the_generation_it_holds() -> None:
    assert cursor.max_generation() is None
    assert cursor.read_durable_cursor("a.test") == (None, None)
    cursor.claim_generation("a.test", 4)
    assert cursor.read_durable_cursor("a.test") == (None, 4)  # a claimed row persists (feed-generator #49)
    assert cursor.advance_durable_cursor(generation=4, seq=70) == 70
    assert cursor.advance_durable_cursor(generation=4, seq=60) == 70  # never down
    cursor.claim_generation("b.test", 5)
    assert cursor.advance_durable_cursor(generation=5, seq=3) == 3
    assert cursor.current_durable_cursor() == 3  # the relay read last: the highest generation
    assert cursor.max_generation() == 5
    cursor.claim_generation("a.test", 6)  # read again, under a new generation: the cursor stays
    assert cursor.advance_durable_cursor(generation=4, seq=90) is None  # nobody holds 4 now
    assert cursor.read_durable_cursor("a.test") == (70, 6)
    cursor.reset_durable_cursor("a.test")  # its numbering started over
    assert cursor.read_durable_cursor("a.test") == (None, 6)
    assert cursor.read_durable_cursor("b.test") == (3, 5)


def test_the_migration_gives_the_single_cursor_of_before_to_the_configured_relay() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate([("pipeline", "0001_initial")])
    with connection.cursor() as cur:
        cur.execute(f"INSERT INTO {cursor.TABLE} (name, seq) VALUES ('firehose', 31000000123)")
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes("pipeline"))
    rows = list(IndexCursor.objects.values_list("name", "seq", "generation"))
    assert rows == [(cursor.relay_host(settings.RELAY_URL), 31_000_000_123, None)]
    assert cursor.current_durable_cursor() == 31_000_000_123
