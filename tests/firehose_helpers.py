"""Helpers of the firehose tests: a run_firehose loop in this process, and what the stream holds."""

import asyncio
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from django.conf import settings

from firehose.client import Firehose, FirehoseConfig
from harness.processes import PipelineError, Service, log_tail, wait_until
from pipeline import redis_store, status, stream
from protocol.frames import FrameError, decode_frame, event_of
from tests.conftest import SCENARIOS, fixture_files

LISTENING = re.compile(r"listening on (ws://\S+?)/xrpc/")


def config(relay_url: str, **overrides: object) -> FirehoseConfig:
    values: dict[str, object] = {
        "relay_url": relay_url,
        "high_water": 1_000_000,
        "low_water": 500_000,
        "stall_seconds": 10.0,
        "max_frame_bytes": settings.FIREHOSE_MAX_FRAME_BYTES,
        "cursor": 0,
        "backoff_base": 0.05,
        **overrides,
    }
    return FirehoseConfig(**values)  # type: ignore[arg-type]


def run_in_process(firehose_config: FirehoseConfig, done: Callable[[], bool], *, timeout: float) -> Firehose:
    """Runs the firehose loop in this process until ``done()`` (then stops it as SIGTERM would)."""

    async def main() -> Firehose:
        async_client = redis_store.connect_async()
        firehose = Firehose(firehose_config, redis_store.connect(), async_client)
        task = asyncio.create_task(firehose.run())
        try:
            deadline = time.monotonic() + timeout
            while not done():
                if task.done():
                    task.result()
                    raise AssertionError("the firehose loop returned on its own")
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out after {timeout} s; counters {firehose.counters}")
                await asyncio.sleep(0.05)
        finally:
            firehose.stop()
            await asyncio.wait_for(task, 20)
            await async_client.aclose()
        return firehose

    return asyncio.run(main())


def wait_listening(relay: Service, timeout: float = 60.0) -> str:
    """The ws:// URL the relay simulator listens on, once it does."""

    def url() -> str | None:
        if relay.process is not None and relay.process.poll() is not None:
            raise PipelineError(f"run_relay_sim exited:\n{log_tail(relay.log_path)}")
        match = LISTENING.search(relay.log())
        return match.group(1) if match else None

    return wait_until(url, timeout=timeout, interval=0.1, message="run_relay_sim to listen")


@contextmanager
def serving(relays: dict[str, Service]) -> Iterator[dict[str, str]]:
    """Yields name -> URL of started run_relay_sim services once each listens; stops them all afterwards."""
    try:
        yield {name: wait_listening(service) for name, service in relays.items()}
    finally:
        for service in relays.values():
            service.signal(signal.SIGTERM)
        for service in relays.values():
            service.terminate(timeout=10)


def stream_frames(client: redis.Redis) -> list[tuple[int, bytes]]:
    """(seq, frame) of every entry of firehose:events, checking that the ID and fields agree."""
    result = []
    for entry_id, fields in client.xrange(redis_store.events_stream()):
        seq = int(fields[b"seq"])
        assert stream.entry_position(entry_id).seq == seq
        result.append((seq, fields[b"frame"]))
    return result


def stream_positions(client: redis.Redis) -> list[stream.Position]:
    return [stream.entry_position(entry_id) for entry_id, _ in client.xrange(redis_store.events_stream())]


def stream_seqs(client: redis.Redis) -> list[int]:
    return [seq for seq, _ in stream_frames(client)]


def stream_length(client: redis.Redis) -> int:
    return int(client.xlen(redis_store.events_stream()))


def cursor(client: redis.Redis) -> int | None:
    """The seq of firehose:cursor (the last entry pushed)."""
    position = stream.read_cursor(client)
    return position.seq if position is not None else None


def read_status(client: redis.Redis) -> dict[str, object]:
    return status.read_status(client) or {}


def accepted_events(frames: list[bytes]) -> list[tuple[int, bytes]]:
    """What a correct consumer pushes of ``frames``: the valid repo events, each seq once, ascending."""
    result: list[tuple[int, bytes]] = []
    top = 0
    for frame in frames:
        try:
            event = event_of(decode_frame(frame))
        except FrameError:
            continue
        if event.seq > top:
            result.append((event.seq, frame))
            top = event.seq
    return result


def scenario_paths() -> list[Path]:
    return fixture_files(SCENARIOS, "*.json")
