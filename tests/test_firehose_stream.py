"""firehose.stream against the real Redis: group, push with the cursor, low-water mark, trimming."""

import asyncio
import time
from collections.abc import Iterator, Sequence

import pytest
import redis
import redis.asyncio

from pipeline import redis_store, stream

pytestmark = pytest.mark.timeout(30)

BIG = 2**40  # seqs beyond 32 bits, as on the real network
GENERATION = 7


@pytest.fixture
def client() -> redis.Redis:
    return redis_store.connect()


def entry(seq: int, kind: str = "#commit", generation: int = GENERATION) -> stream.Entry:
    return stream.Entry(generation=generation, seq=seq, type=kind, did="did:plc:abcdefghijklmnopqrstuvwx",
                        frame=b"\xa2frame" + bytes([seq % 256]), received_at=1_700_000_000_000 + seq % 1000)


def at(seq: int, generation: int = GENERATION) -> stream.Position:
    return stream.Position(generation, seq)


def push(expected: stream.Position | None, entries: Sequence[stream.Entry],
         now: float | None = None) -> stream.PushResult:
    async def run() -> stream.PushResult:
        async_client = redis_store.connect_async()
        try:
            return await stream.Pusher(async_client, expected_cursor=expected).push(entries, now=now or time.time())
        finally:
            await async_client.aclose()

    return asyncio.run(run())


def ids(client: redis.Redis) -> list[int]:
    """The seqs of the stream's entries, all of generation GENERATION."""
    positions = [stream.entry_position(entry_id) for entry_id, _ in client.xrange(redis_store.events_stream())]
    assert {generation for generation, _ in positions} <= {GENERATION}
    return [seq for _, seq in positions]


def deliver(client: redis.Redis, count: int) -> list[bytes]:
    """Reads ``count`` entries through the consumer group, as a worker does; returns their IDs."""
    reply = client.xreadgroup(redis_store.CONSUMER_GROUP, "worker-1", {redis_store.events_stream(): ">"}, count=count)
    return [entry_id for _, entries in reply for entry_id, _ in entries]


@pytest.fixture
def grouped(client: redis.Redis) -> Iterator[redis.Redis]:
    stream.ensure_group(client)
    yield client


def test_it_creates_the_group_once_and_tolerates_an_existing_one(client: redis.Redis) -> None:
    stream.ensure_group(client)
    stream.ensure_group(client)
    groups = client.xinfo_groups(redis_store.events_stream())
    assert [group["name"] for group in groups] == [redis_store.CONSUMER_GROUP.encode()]
    assert stream.stream_length(client) == 0


def test_it_pushes_entries_with_explicit_ids_and_the_fields_of_the_architecture(grouped: redis.Redis) -> None:
    result = push(None, [entry(BIG + 1), entry(BIG + 2, "#identity")])
    assert (result.added, result.refused, result.cursor, result.length) == (2, 0, at(BIG + 2), 2)
    [(first_id, fields), (second_id, _)] = grouped.xrange(redis_store.events_stream())
    assert (first_id, second_id) == (f"{GENERATION}-{BIG + 1}".encode(), f"{GENERATION}-{BIG + 2}".encode())
    assert fields == {b"seq": str(BIG + 1).encode(), b"t": b"#commit", b"did": b"did:plc:abcdefghijklmnopqrstuvwx",
                      b"frame": entry(BIG + 1).frame, b"received_at": str(entry(BIG + 1).received_at).encode()}
    assert grouped.get(redis_store.firehose_cursor()) == f"{GENERATION}-{BIG + 2}".encode()
    assert stream.read_cursor(grouped) == (GENERATION, BIG + 2)
    assert stream.stream_top(grouped) == (GENERATION, BIG + 2)


def test_it_refuses_seqs_not_above_the_stream_top_without_failing_the_batch(grouped: redis.Redis) -> None:
    push(None, [entry(10), entry(20)])
    result = push(at(20), [entry(15), entry(20), entry(21), entry(19), entry(30)])
    assert (result.added, result.refused, result.cursor) == (2, 3, at(30))
    assert ids(grouped) == [10, 20, 21, 30]
    assert stream.read_cursor(grouped) == at(30)


def test_it_takes_lower_seqs_in_a_new_generation_and_refuses_an_older_generation(grouped: redis.Redis) -> None:
    push(None, [entry(5000), entry(5001)])
    result = push(at(5001), [entry(1, generation=GENERATION + 1), entry(2, generation=GENERATION + 1),
                             entry(5002), entry(3, generation=GENERATION + 1)])
    assert (result.added, result.refused, result.cursor) == (3, 1, at(3, GENERATION + 1))
    positions = [stream.entry_position(entry_id) for entry_id, _ in grouped.xrange(redis_store.events_stream())]
    assert positions == [at(5000), at(5001), at(1, GENERATION + 1), at(2, GENERATION + 1), at(3, GENERATION + 1)]
    assert stream.stream_top(grouped) == at(3, GENERATION + 1)


def test_it_keeps_the_cursor_when_the_whole_batch_is_refused(grouped: redis.Redis) -> None:
    push(None, [entry(10), entry(20)])
    result = push(at(20), [entry(5), entry(20)])
    assert (result.added, result.refused, result.cursor) == (0, 2, at(20))
    assert stream.read_cursor(grouped) == at(20)


def test_it_pushes_nothing_when_the_cursor_is_not_what_it_last_wrote(grouped: redis.Redis) -> None:
    push(None, [entry(10)])
    grouped.delete(redis_store.firehose_cursor())  # as if Redis had lost its data
    result = push(at(10), [entry(11)])
    assert result.cursor_mismatch and result.cursor is None
    assert ids(grouped) == [10]
    grouped.set(redis_store.firehose_cursor(), f"{GENERATION}-99")  # another process pushed
    result = push(at(10), [entry(11)])
    assert result.cursor_mismatch and result.cursor == at(99)
    assert ids(grouped) == [10]
    grouped.set(redis_store.firehose_cursor(), f"{GENERATION + 1}-10")  # same seq, another generation
    result = push(at(10), [entry(11)])
    assert result.cursor_mismatch and result.cursor == at(10, GENERATION + 1)
    assert ids(grouped) == [10]


def test_it_reads_a_cursor_written_before_generations_as_the_id_seq_0(grouped: redis.Redis) -> None:
    grouped.xadd(redis_store.events_stream(), {"seq": BIG}, id=f"{BIG}-0")
    grouped.set(redis_store.firehose_cursor(), BIG)
    assert stream.read_cursor(grouped) == (BIG, 0)
    assert stream.stream_top(grouped) == (BIG, 0)
    result = push(stream.read_cursor(grouped), [entry(1, generation=BIG + 1)])
    assert (result.added, result.cursor_mismatch, result.cursor) == (1, False, at(1, BIG + 1))


def test_it_counts_pushed_events_in_expiring_throughput_buckets(grouped: redis.Redis) -> None:
    now = 1_800_000_030.5
    push(None, [entry(1), entry(2), entry(3)], now=now)
    push(at(3), [entry(3), entry(4)], now=now)  # the refused duplicate is not counted
    second = redis_store.throughput_bucket("received", "s", 1_800_000_030)
    minute = redis_store.throughput_bucket("received", "m", 1_800_000_030 // 60)
    assert int(grouped.get(second)) == 4
    assert int(grouped.get(minute)) == 4
    assert 0 < grouped.ttl(second) <= stream.SECOND_BUCKET_TTL
    assert stream.SECOND_BUCKET_TTL < grouped.ttl(minute) <= stream.MINUTE_BUCKET_TTL


def test_it_reloads_its_script_after_redis_forgot_it(grouped: redis.Redis) -> None:
    grouped.script_flush()
    assert push(None, [entry(7)]).added == 1
    assert ids(grouped) == [7]


def test_the_low_water_mark_stays_below_unacknowledged_entries(grouped: redis.Redis) -> None:
    assert stream.low_water_mark(grouped) is None
    push(None, [entry(BIG + 1), entry(BIG + 2)])
    assert stream.low_water_mark(grouped) is None  # nothing delivered yet
    deliver(grouped, 2)
    assert stream.low_water_mark(grouped) == at(BIG)  # just below the oldest pending entry


def test_the_low_water_mark_stops_below_the_oldest_pending_entry(grouped: redis.Redis) -> None:
    push(None, [entry(BIG + seq) for seq in (1, 2, 5, 9, 12)])
    delivered = deliver(grouped, 4)  # BIG+1, 2, 5, 9; BIG+12 stays undelivered
    grouped.xack(redis_store.events_stream(), redis_store.CONSUMER_GROUP, delivered[0], delivered[1], delivered[3])
    assert stream.low_water_mark(grouped) == at(BIG + 4)  # BIG+5 is pending
    grouped.xack(redis_store.events_stream(), redis_store.CONSUMER_GROUP, delivered[2])
    assert stream.low_water_mark(grouped) == at(BIG + 9)  # last delivered; BIG+12 undelivered


def test_the_low_water_mark_crosses_generations_in_stream_order(grouped: redis.Redis) -> None:
    push(None, [entry(BIG + 1), entry(BIG + 2), entry(1, generation=GENERATION + 1),
                entry(2, generation=GENERATION + 1)])
    delivered = deliver(grouped, 4)
    grouped.xack(redis_store.events_stream(), redis_store.CONSUMER_GROUP, delivered[0], delivered[1], delivered[3])
    # The first entry of the new generation is pending: everything of the old one is acknowledged.
    assert stream.low_water_mark(grouped) == at(0, GENERATION + 1)
    assert stream.trim_acknowledged(grouped) == 2
    grouped.xack(redis_store.events_stream(), redis_store.CONSUMER_GROUP, delivered[2])
    assert stream.low_water_mark(grouped) == at(2, GENERATION + 1)


def test_the_low_water_mark_stays_below_a_pending_entry_written_before_generations(grouped: redis.Redis) -> None:
    stream_key = redis_store.events_stream()
    for seq in (BIG + 1, BIG + 2):
        grouped.xadd(stream_key, {"seq": seq}, id=f"{seq}-0")
    push(None, [entry(1, generation=BIG + 3)])
    delivered = deliver(grouped, 3)
    grouped.xack(stream_key, redis_store.CONSUMER_GROUP, delivered[0], delivered[2])
    mark = stream.low_water_mark(grouped)
    assert mark is not None and at(0, BIG + 1) < mark < (BIG + 2, 0)
    assert stream.trim_acknowledged(grouped) == 1
    assert [entry_id for entry_id, _ in grouped.xrange(stream_key)] == [
        f"{BIG + 2}-0".encode(), f"{BIG + 3}-1".encode()]


def test_the_low_water_mark_ignores_the_nil_lag_of_a_trimmed_stream(grouped: redis.Redis) -> None:
    push(None, [entry(seq) for seq in range(1, 6)])
    grouped.xack(redis_store.events_stream(), redis_store.CONSUMER_GROUP, *deliver(grouped, 5))
    assert stream.trim_acknowledged(grouped) == 5
    push(at(5), [entry(6)])
    assert stream.low_water_mark(grouped) == at(5)


def test_the_low_water_mark_is_none_without_stream_or_group(client: redis.Redis) -> None:
    assert stream.low_water_mark(client) is None
    client.xadd(redis_store.events_stream(), {"seq": 1}, id=f"{GENERATION}-1")
    assert stream.low_water_mark(client) is None


def test_it_trims_only_acknowledged_entries(grouped: redis.Redis) -> None:
    push(None, [entry(seq) for seq in range(1, 11)])
    delivered = deliver(grouped, 6)
    assert stream.trim_acknowledged(grouped) == 0
    grouped.xack(redis_store.events_stream(), redis_store.CONSUMER_GROUP, *delivered[:3], delivered[4])
    assert stream.trim_acknowledged(grouped) == 3
    assert ids(grouped) == [4, 5, 6, 7, 8, 9, 10]  # 4 and 6 pending, 7-10 undelivered
    assert stream.stream_top(grouped) == at(10)
    grouped.xack(redis_store.events_stream(), redis_store.CONSUMER_GROUP, delivered[3], delivered[5])
    assert stream.trim_acknowledged(grouped) == 3
    assert ids(grouped) == [7, 8, 9, 10]
    assert stream.stream_top(grouped) == at(10)  # trimming never lowers the top: old seqs stay refused
    assert push(at(10), [entry(3)]).refused == 1
