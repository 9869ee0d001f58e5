"""Fault injection on the real pipeline (SPEC sections 6 and 7): run_relay_sim, run_firehose and two
run_workers as subprocesses on loopback, a fault while events flow, then the whole database and the
cluster:metrics totals compared with a fault-free run of the same events.

Each test has a Redis server of its own (tests/harness/servers.py) and a database of its own, copied from
a migrated template; the PostgreSQL fault has a PostgreSQL server of its own. Logs of every process are
in test-output/faults/<test>/.
"""

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libipld
import pytest
import redis

from harness import compare
from harness.processes import Pipeline, Service, wait_until
from harness.servers import (
    BASE_DIR,
    RedisServer,
    connect,
    database_name,
    scratch_database,
    throwaway_postgres,
    throwaway_redis,
)
from pipeline import redis_store, stream
from protocol import syntax
from protocol.cid import cid_for_block
from protocol.testing import encode_car, encode_frame
from relaysim.simulation import EPOCH_US, tid, write_recording
from tests.conftest import SYNTAX, fixture_files

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

EVENTS = 3000
SEED = 7
# Above 2^32, as relay seqs are today.
START_SEQ = 31_000_000_000
LAST_SEQ = START_SEQ + EVENTS - 1
RATE = 200  # events/s: 15 s of events, so that faults land while they flow
DRAIN_TIMEOUT = 180.0
ENV = {
    # A dead worker's entries are claimed by the others after 1 s instead of a minute.
    "WORKER_CLAIM_IDLE_MS": "1000",
    "FIREHOSE_STALL_SECONDS": "3",
    "LOG_LEVEL": "INFO",
}


def relay_args(*extra: str, rate: float = RATE) -> list[str]:
    return ["--events", str(EVENTS), "--seed", str(SEED), "--start-seq", str(START_SEQ), "--rate", str(rate),
            *extra]


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A migrated database that each test copies (CREATE DATABASE ... TEMPLATE) instead of migrating."""
    with scratch_database() as url:
        yield database_name(url)


@pytest.fixture
def database(template_database: str) -> Iterator[str]:
    with scratch_database(template=template_database) as url:
        yield url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with throwaway_redis() as server:
        yield server


def output_dir_for(name: str) -> Path:
    path = BASE_DIR / "test-output" / "faults" / re.sub(r"[^\w.-]+", "_", name)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Path:
    return output_dir_for(request.node.name)


def start(pipeline: Pipeline, *relay_extra: str, rate: float = RATE, workers: int = 2) -> list[Service]:
    pipeline.relay(*relay_args(*relay_extra, rate=rate))
    pipeline.firehose("--cursor", "0")
    return [pipeline.worker(f"w{index}") for index in range(1, workers + 1)]


def finish(pipeline: Pipeline, *, last_seq: int = LAST_SEQ) -> dict[str, Any] | None:
    """Waits until everything is indexed, stops every process with SIGTERM (each must exit 0), and
    returns the last firehose:status the firehose wrote as it stopped."""
    pipeline.wait_indexed(last_seq, timeout=DRAIN_TIMEOUT)
    codes = pipeline.stop()
    assert all(code == 0 for code in codes.values()), f"exit codes after SIGTERM: {codes}"
    with pipeline.redis() as client:
        raw = client.get(redis_store.firehose_status())
    return json.loads(raw) if raw else None


def snapshot(database_url: str, server: RedisServer) -> compare.Snapshot:
    with server.client() as client:
        return compare.take_snapshot(database_url, client)


def assert_same(expected: compare.Snapshot, actual: compare.Snapshot, **options: Any) -> None:
    difference = compare.diff(expected, actual, **options)
    assert not difference, "the database differs from the fault-free run:\n" + difference


def metric(client: redis.Redis, name: str) -> int:
    return int(client.hget(redis_store.cluster_metrics(), name) or 0)


def firehose_cursor(pipeline: Pipeline) -> int:
    """The seq of the last entry pushed (0 before any, or while Redis is unavailable)."""
    try:
        with pipeline.redis() as client:
            position = stream.read_cursor(client)
    except redis.RedisError:
        return 0
    return position.seq if position else 0


def wait_pushed(pipeline: Pipeline, seq: int) -> None:
    wait_until(lambda: firehose_cursor(pipeline) >= seq, timeout=60, interval=0.05,
               message=f"the firehose to push seq {seq}")


@pytest.fixture(scope="session")
def baseline(template_database: str) -> Iterator[compare.Snapshot]:
    """The fault-free run: everything the fault tests must end with."""
    with throwaway_redis() as server, scratch_database(template=template_database) as url:
        with Pipeline(database_url=url, redis_url=server.url, output_dir=output_dir_for("baseline"),
                      env=ENV) as pipeline:
            start(pipeline, rate=0)
            finish(pipeline)
        expected = snapshot(url, server)
    assert expected.metrics["totalEvents"] == EVENTS and expected.metrics.get("errors", 0) == 0, expected.metrics
    assert expected.tables["appview_like"].rows and expected.tables["appview_recordtombstone"].rows
    yield expected


def test_it_builds_the_same_database_when_workers_are_killed_mid_batch(
        baseline: compare.Snapshot, database: str, redis_server: RedisServer, output_dir: Path) -> None:
    with Pipeline(database_url=database, redis_url=redis_server.url, output_dir=output_dir, env=ENV) as pipeline:
        workers = start(pipeline)
        client = redis_server.client()
        for kill in range(4):
            victim = workers[kill % 2]

            def holds_entries(name: str = victim.name) -> bool:
                # Entries read and not yet acknowledged: the worker is inside a batch.
                try:
                    pending = client.xpending(redis_store.events_stream(), redis_store.CONSUMER_GROUP)
                except redis.ResponseError:  # no group yet
                    return False
                return any(c["name"].decode() == name and c["pending"] > 0 for c in pending["consumers"])

            wait_until(holds_entries, timeout=60, interval=0.01, message=f"{victim.name} to be mid-batch")
            victim.kill()
            # A new consumer name: the dead one's pending entries can only come back through XAUTOCLAIM.
            workers[kill % 2] = pipeline.worker(f"w{kill % 2 + 1}-restart{kill + 1}")
            time.sleep(1.5)
        finish(pipeline)
        claims = sum(service.log().count(" claimed ") for service in pipeline.services)
    assert claims >= 2, "each dead worker's entries should have been claimed by a live one (XAUTOCLAIM)"
    assert_same(baseline, snapshot(database, redis_server))


def test_it_pushes_nothing_twice_when_the_firehose_is_killed_and_restarted(
        baseline: compare.Snapshot, database: str, redis_server: RedisServer, output_dir: Path) -> None:
    with Pipeline(database_url=database, redis_url=redis_server.url, output_dir=output_dir, env=ENV) as pipeline:
        start(pipeline)
        firehose = pipeline.services[1]
        for fraction in (0.3, 0.6):
            wait_pushed(pipeline, START_SEQ + int(EVENTS * fraction))
            firehose.kill()
            time.sleep(1.0)
            # Without --cursor, as an operator or a supervisor restarts it: it resumes from firehose:cursor.
            firehose.start(args=[arg for arg in firehose.args if arg not in ("--cursor", "0")])
        status = finish(pipeline)
    assert status is not None and status["duplicates"] == 0, status
    assert firehose.log().count("(firehose:cursor in Redis)") == 2
    assert_same(baseline, snapshot(database, redis_server))


def test_it_loses_no_event_when_redis_restarts_empty_but_metrics_restart_from_zero(
        baseline: compare.Snapshot, database: str, redis_server: RedisServer, output_dir: Path) -> None:
    with Pipeline(database_url=database, redis_url=redis_server.url, output_dir=output_dir, env=ENV) as pipeline:
        start(pipeline)
        wait_until(lambda: pipeline.durable_cursor() >= START_SEQ + EVENTS // 3, timeout=60,
                   message="a third of the events to be indexed")
        redis_server.restart_empty()
        finish(pipeline)
        resumed = re.findall(r"resuming from cursor (\d+) \(([^)]*)\)", pipeline.services[1].log())
    # The first line is the start (--cursor 0); the second, where it went on after Redis lost its data.
    assert len(resumed) == 2 and resumed[1][1] == "durable cursor in PostgreSQL", resumed
    actual = snapshot(database, redis_server)
    # What is kept: every event, in PostgreSQL.
    assert_same(baseline, actual, metric_fields=None)
    # What is lost: the counters of cluster:metrics. They start again from zero with the events read
    # again from the durable cursor, each counted once.
    assert actual.metrics["totalEvents"] == LAST_SEQ - int(resumed[1][0]), (actual.metrics, resumed)
    assert 0 < actual.metrics["totalEvents"] < EVENTS


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
def test_it_builds_the_same_database_when_redis_is_unavailable_for_20_seconds(
        outage: str, baseline: compare.Snapshot, database: str, redis_server: RedisServer, output_dir: Path) -> None:
    with Pipeline(database_url=database, redis_url=redis_server.url, output_dir=output_dir, env=ENV) as pipeline:
        start(pipeline)
        wait_pushed(pipeline, START_SEQ + EVENTS // 3)
        # Stopped: connections refused (a restart, data kept). Frozen: connections open, nothing answers
        # (a hung server or a network partition), so every call waits for its timeout.
        if outage == "stopped":
            redis_server.stop(keep_data=True)
        else:
            redis_server.freeze()
        time.sleep(20)
        pipeline.check_alive()
        if outage == "stopped":
            redis_server.start()
        else:
            redis_server.thaw()
        finish(pipeline)
    assert_same(baseline, snapshot(database, redis_server))


def test_it_acknowledges_nothing_while_postgresql_is_down_for_20_seconds(
        baseline: compare.Snapshot, redis_server: RedisServer, output_dir: Path) -> None:
    with throwaway_postgres() as postgres:
        url = postgres.create_database("appview")
        with Pipeline(database_url=url, redis_url=redis_server.url, output_dir=output_dir, env=ENV) as pipeline:
            start(pipeline)
            wait_until(lambda: pipeline.durable_cursor() >= START_SEQ + EVENTS // 3, timeout=60,
                       message="a third of the events to be indexed")
            postgres.stop()
            client = redis_server.client()
            time.sleep(2)  # a batch that was committing as the server went down
            acknowledged = metric(client, "totalEvents")
            time.sleep(18)
            assert metric(client, "totalEvents") == acknowledged, "events acknowledged while PostgreSQL was down"
            assert pipeline.stream_state()["length"] > 0
            pipeline.check_alive()
            postgres.start()
            finish(pipeline)
        assert_same(baseline, snapshot(url, redis_server))


RELAY_FAULTS = {
    "drop-every-400": (["--drop-every", "400"], lambda s: s["reconnects"] >= EVENTS // 400 - 1),
    # Each connection stalls after 1000 events; the firehose gives up on it after FIREHOSE_STALL_SECONDS.
    "stall": (["--stall-after", "1000", "--stall-seconds", "60"], lambda s: s["reconnects"] >= 2),
    "consumer-too-slow": (["--error-after", "1000"], lambda s: s["errorFrames"] >= 2 and s["reconnects"] >= 2),
    # Truncated, garbage, bad header, seq not an integer, ops not a list and oversize (5 MB) frames, in turn.
    "malformed-every-100": (["--malformed-every", "100"], lambda s: s["errors"] == EVENTS // 100),
    "rewind-every-500": (["--rewind-every", "500"], lambda s: s["duplicates"] >= 3 * (EVENTS // 500 - 1)),
}


@pytest.mark.parametrize("fault", sorted(RELAY_FAULTS))
def test_it_builds_the_same_database_whatever_the_relay_does(
        fault: str, baseline: compare.Snapshot, database: str, redis_server: RedisServer, output_dir: Path) -> None:
    relay_extra, status_check = RELAY_FAULTS[fault]
    with Pipeline(database_url=database, redis_url=redis_server.url, output_dir=output_dir, env=ENV) as pipeline:
        start(pipeline, *relay_extra, rate=1000)
        status = finish(pipeline)
    assert status is not None and status_check(status), status
    assert_same(baseline, snapshot(database, redis_server))


def test_it_pauses_at_the_high_water_mark_instead_of_trimming(
        baseline: compare.Snapshot, database: str, redis_server: RedisServer, output_dir: Path) -> None:
    high_water = 500
    env = {**ENV, "STREAM_HIGH_WATER": str(high_water), "STREAM_LOW_WATER": "250"}
    with Pipeline(database_url=database, redis_url=redis_server.url, output_dir=output_dir, env=env) as pipeline:
        pipeline.relay(*relay_args(rate=1000))
        pipeline.firehose("--cursor", "0")
        client = redis_server.client()

        def paused() -> bool:
            raw = client.get(redis_store.firehose_status())
            return bool(raw) and json.loads(raw).get("paused") is True

        wait_until(paused, timeout=60, message="the firehose to report that it paused")
        cursor = firehose_cursor(pipeline)
        time.sleep(3)
        assert firehose_cursor(pipeline) == cursor, "the firehose kept pushing while paused"
        length = pipeline.stream_state()["length"]
        # The batch that crossed the mark, and what was read before the pause took effect, may go in.
        assert high_water <= length <= 2 * high_water, length
        assert length == cursor - START_SEQ + 1, "entries nobody indexed were trimmed"
        first_id = client.xrange(redis_store.events_stream(), count=1)[0][0].decode()
        assert first_id == f"1-{START_SEQ}"  # the first generation, the relay's first seq
        pipeline.worker("w1")
        pipeline.worker("w2")
        finish(pipeline)
    assert_same(baseline, snapshot(database, redis_server))


# -- every invalid value of the interop fixtures, through the whole pipeline --------------------------

BAD_DID = "did:plc:badrecordsbadrecordsbadr"
CONTROL_DID = "did:plc:controlcontrolcontrolcont"
VALID_CID = libipld.encode_cid(cid_for_block(b"subject"))
VALID_POST_URI = "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/app.bsky.feed.post/3k2akm6ojoq2t"
TIME = "2025-01-01T00:00:00.000Z"


def invalid_values(kind: str) -> list[str]:
    values = []
    for path in fixture_files(SYNTAX, f"{kind}_*_invalid.txt"):
        values += [line for line in path.read_text(encoding="utf-8").split("\n") if line and not line.startswith("#")]
    assert values, f"no invalid {kind} values in {SYNTAX}"
    return values


class Recording:
    """Frames of #commit and #identity events with consecutive seqs, in the relay's wire format."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.clock = 0
        self.seq = START_SEQ - 1

    def rkey(self) -> str:
        self.clock += 1
        return tid(EPOCH_US + self.clock, 0)

    def commit(self, did: str, ops: list[tuple[str, str, dict[str, Any] | None]], *, rev: str | None = None) -> None:
        """ops: (action, collection/rkey, record or None)."""
        self.seq += 1
        rev = rev if rev is not None else self.rkey()
        blocks = [libipld.encode_dag_cbor({"did": did, "version": 3, "data": cid_for_block(b"mst"), "rev": rev,
                                           "prev": None, "sig": b"\x00" * 64})]
        op_list = []
        for action, path, record in ops:
            cid = None
            if record is not None:
                block = libipld.encode_dag_cbor(record)
                blocks.append(block)
                cid = cid_for_block(block)
            op_list.append({"action": action, "path": path, "cid": cid})
        root = cid_for_block(blocks[0])
        self.frames.append(encode_frame({"op": 1, "t": "#commit"}, {
            "seq": self.seq, "rebase": False, "tooBig": False, "repo": did, "commit": root, "rev": rev,
            "since": None, "blocks": encode_car([root], blocks), "ops": op_list, "blobs": [], "time": TIME,
        }))

    def create(self, collection: str, record: dict[str, Any], *, rkey: str | None = None,
               rev: str | None = None) -> None:
        record = {"$type": collection, **record}
        self.commit(BAD_DID, [("create", f"{collection}/{rkey or self.rkey()}", record)], rev=rev)

    def identity(self, handle: str) -> None:
        self.seq += 1
        self.frames.append(encode_frame({"op": 1, "t": "#identity"},
                                        {"seq": self.seq, "did": BAD_DID, "time": TIME, "handle": handle}))

    def control(self) -> None:
        """A valid like by another repo: it must be indexed whatever came before it."""
        record = {"$type": "app.bsky.feed.like", "subject": {"uri": VALID_POST_URI, "cid": VALID_CID},
                  "createdAt": TIME}
        self.commit(CONTROL_DID, [("create", f"app.bsky.feed.like/{self.rkey()}", record)])


def like(uri: str = VALID_POST_URI, cid: Any = VALID_CID, created_at: Any = TIME) -> dict[str, Any]:
    return {"subject": {"uri": uri, "cid": cid}, "createdAt": created_at}


def bad_input_recording() -> tuple[Recording, int]:
    """Every invalid value in a record (or event) of its own, each followed by a valid control like;
    returns the recording and the number of errors the workers must count."""
    recording = Recording()
    errors = 0

    def add(expected_errors: int, write: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal errors
        write(*args, **kwargs)
        recording.control()
        errors += expected_errors

    for value in invalid_values("did"):
        add(1, recording.create, "app.bsky.graph.follow", {"subject": value, "createdAt": TIME})
    for value in invalid_values("handle"):
        add(0, recording.identity, value)  # an #identity event's handle is only a hint: not an error
    for value in invalid_values("aturi"):
        add(1, recording.create, "app.bsky.feed.like", like(uri=value))
    for value in invalid_values("atidentifier"):
        uri = f"at://{value}/app.bsky.feed.post/3k2akm6ojoq2t"
        add(0 if syntax.is_at_uri(uri) else 1, recording.create, "app.bsky.feed.repost", like(uri=uri))
    for value in invalid_values("cid"):
        add(1, recording.create, "app.bsky.feed.like", like(cid=value))
    for value in invalid_values("datetime"):
        add(1, recording.create, "app.bsky.feed.like", like(created_at=value))
    for value in invalid_values("language"):
        add(1, recording.create, "app.bsky.feed.post", {"text": "hello", "langs": [value], "createdAt": TIME})
    for value in invalid_values("nsid"):
        # The commit itself is unusable: its op path is not collection/rkey.
        add(1, recording.commit, BAD_DID, [("create", f"{value}/{recording.rkey()}", {"$type": "x"})])
    for value in invalid_values("recordkey"):
        add(1, recording.commit, BAD_DID, [("create", f"app.bsky.feed.like/{value}", like())])
    for value in invalid_values("tid"):
        add(1, recording.create, "app.bsky.feed.like", like(), rev=value)
    for value in invalid_values("uri"):
        # No column holds an external link: the post is stored as it is.
        embed = {"$type": "app.bsky.embed.external", "external": {"uri": value, "title": "t", "description": "d"}}
        add(0, recording.create, "app.bsky.feed.post", {"text": "link", "embed": embed, "createdAt": TIME})
    # Wrong types, NUL characters and oversize text.
    add(1, recording.create, "app.bsky.feed.like", {"subject": "at://not-a-strong-ref", "createdAt": TIME})
    add(1, recording.create, "app.bsky.feed.post", {"text": 42, "createdAt": TIME})
    add(1, recording.create, "app.bsky.feed.post", {"text": "nul\x00inside", "createdAt": TIME})
    add(1, recording.create, "app.bsky.feed.post", {"text": "x" * 1_000_000, "createdAt": TIME})
    add(1, recording.create, "app.bsky.actor.profile", {"displayName": "\x00" * 10, "description": ["list"]},
        rkey="self")
    add(1, recording.create, "app.bsky.feed.like", {**like(), "$type": "app.bsky.feed.post"})
    return recording, errors


def test_it_counts_every_invalid_value_of_the_interop_fixtures_without_stopping(
        database: str, redis_server: RedisServer, output_dir: Path) -> None:
    recording, expected_errors = bad_input_recording()
    path = output_dir / "bad-records.bin"
    write_recording(path, recording.frames)
    with Pipeline(database_url=database, redis_url=redis_server.url, output_dir=output_dir, env=ENV) as pipeline:
        pipeline.relay("--replay", str(path), "--rate", "0")
        pipeline.firehose("--cursor", "0")
        pipeline.worker("w1")
        pipeline.worker("w2")
        finish(pipeline, last_seq=recording.seq)
    with redis_server.client() as client:
        metrics = compare.read_metrics(client)
    assert metrics["totalEvents"] == len(recording.frames)
    assert metrics.get("errors", 0) == expected_errors, metrics
    controls = len(recording.frames) // 2
    with connect(database) as conn:
        def count(sql: str, *params: Any) -> int:
            return conn.execute(sql, params).fetchone()[0]

        assert count("SELECT count(*) FROM appview_like WHERE did = %s", CONTROL_DID) == controls
        assert count("SELECT count(*) FROM appview_follow") == 0
        assert count("SELECT count(*) FROM appview_like WHERE did = %s AND subject_uri = ANY(%s)", BAD_DID,
                     invalid_values("aturi")) == 0
        assert count("SELECT count(*) FROM appview_like WHERE did = %s AND subject_cid = ANY(%s)", BAD_DID,
                     invalid_values("cid")) == 0
        assert count("SELECT count(*) FROM appview_actor WHERE handle = ANY(%s)", invalid_values("handle")) == 0
        assert count("SELECT count(*) FROM appview_post WHERE langs ?| %s", invalid_values("language")) == 0
        assert count("SELECT count(*) FROM appview_post WHERE text = 'nulinside'") == 1
        assert count("SELECT max(length(text)) FROM appview_post") <= 3000
