"""The local relay simulator: synthetic events, replays, cursor semantics and fault injection."""

import asyncio
import collections
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import libipld
import pytest
from django.conf import settings
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from protocol import syntax
from protocol.car import block_spans
from protocol.cid import cid_for_block
from protocol.commit import commit_ops
from protocol.frames import MAX_FRAME_BYTES, Frame, FrameError, decode_frame, event_of
from protocol.testing import car_of_cids, encode_car
from relaysim.relay_server import PATH, Faults, RelayOptions, RelaySimulator
from relaysim.scenarios import load_scenario
from relaysim.simulation import (
    MALFORMED_KINDS,
    SyntheticFirehose,
    load_replay,
    read_recording,
    write_recording,
)
from tests.conftest import SCENARIOS, fixture_files

ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
Entries = list[tuple[int, bytes]]


@cache
def synthetic(seed: int, count: int) -> Entries:
    return list(SyntheticFirehose(seed=seed).frames(count))


def decoded(entries: Entries) -> list[Frame]:
    return [decode_frame(frame) for _, frame in entries]


def kind_of(frame: Frame) -> str:
    if frame.type != "#commit":
        return str(frame.type).lstrip("#")
    ops = commit_ops(frame.body)
    if len(ops) > 1:
        return "multi"
    op = ops[0]
    if op.action == "delete":
        return "delete"
    names = {
        "app.bsky.feed.like": "like",
        "app.bsky.feed.post": "post",
        "app.bsky.feed.repost": "repost",
        "app.bsky.graph.follow": "follow",
        "app.bsky.graph.block": "block",
        "app.bsky.actor.profile": "profile",
    }
    if op.collection in names:
        return names[op.collection]
    return "graph" if op.collection.startswith("app.bsky.") else "other"


# -- the generator ------------------------------------------------------------------------------------


def test_it_generates_frames_that_decode_with_consecutive_64_bit_seqs() -> None:
    start = 30_000_000_000
    entries = list(SyntheticFirehose(seed=1, start_seq=start).frames(3000))
    assert [seq for seq, _ in entries] == list(range(start, start + 3000))
    for seq, frame in entries:
        event = event_of(decode_frame(frame))
        assert event.seq == seq
        assert syntax.is_did(event.did)


def test_it_gives_the_same_bytes_for_the_same_seed_and_others_for_another() -> None:
    first = SyntheticFirehose(seed=11)
    again = SyntheticFirehose(seed=11)
    # Taking the stream in different slices does not change it.
    assert list(first.frames(700)) + list(first.frames(300)) == list(again.frames(1000))
    other = list(SyntheticFirehose(seed=12).frames(1000))
    assert sum(a != b for a, b in zip(synthetic(11, 1000), other, strict=True)) > 900


def test_it_produces_the_documented_mix_of_events() -> None:
    kinds = collections.Counter(kind_of(frame) for frame in decoded(synthetic(5, 12_000)[:5000]))
    share = {kind: count / 5000 for kind, count in kinds.items()}
    assert share["like"] == pytest.approx(0.60, abs=0.03)
    assert share["post"] == pytest.approx(0.14, abs=0.02)
    assert share["repost"] == pytest.approx(0.11, abs=0.02)
    assert share["follow"] == pytest.approx(0.09, abs=0.02)
    rest = 1 - share["like"] - share["post"] - share["repost"] - share["follow"]
    assert rest == pytest.approx(0.06, abs=0.015)
    for kind in ("delete", "block", "profile", "graph", "identity", "other", "multi", "account", "sync"):
        assert kinds[kind] >= 2, kind


def test_it_builds_commits_whose_cids_match_their_blocks() -> None:
    last_rev: dict[str, str] = {}
    commits = 0
    for frame in decoded(synthetic(5, 12_000)[:5000]):
        body = frame.body
        assert ISO_TIME.fullmatch(body["time"])
        if frame.type == "#sync":
            last_rev[body["did"]] = body["rev"]
        if frame.type != "#commit":
            continue
        commits += 1
        assert body["rebase"] is False and body["tooBig"] is False and body["blobs"] == []
        header, blocks = libipld.decode_car(body["blocks"])
        assert header["roots"] == [body["commit"]]
        for cid, block in blocks.items():
            assert cid_for_block(libipld.encode_dag_cbor(block)) == cid
        commit_block = blocks[body["commit"]]
        assert commit_block["did"] == body["repo"] and commit_block["rev"] == body["rev"]
        assert body["since"] == last_rev.get(body["repo"])
        assert body["rev"] > last_rev.get(body["repo"], "")
        last_rev[body["repo"]] = body["rev"]
        ops = commit_ops(body)
        assert len(blocks) == 1 + sum(op.action != "delete" for op in ops)
        for op in ops:
            if op.record is not None:
                assert op.record["$type"] == op.collection
                if op.collection.startswith("app.bsky.") and op.collection != "app.bsky.actor.profile":
                    assert ISO_TIME.fullmatch(op.record["createdAt"])
    assert commits > 4500


def test_it_writes_car_files_that_the_reader_takes_back_block_for_block() -> None:
    blocks = [libipld.encode_dag_cbor({"n": n, "pad": "x" * n}) for n in (1, 200, 20_000)]
    pairs = [(cid_for_block(block), block) for block in blocks]
    car = car_of_cids([pairs[0][0]], pairs)
    assert car == encode_car([pairs[0][0]], blocks)
    assert {cid: car[start:end] for cid, (start, end) in block_spans(car).items()} == dict(pairs)


def test_it_deletes_and_updates_only_records_created_earlier() -> None:
    live: set[tuple[str, str]] = set()
    deletes = updates = 0
    for frame in decoded(synthetic(5, 12_000)):
        if frame.type == "#account" and frame.body.get("status") == "deleted":
            live = {key for key in live if key[0] != frame.body["did"]}
        if frame.type != "#commit":
            continue
        for op in commit_ops(frame.body):
            key = (frame.body["repo"], f"{op.collection}/{op.rkey}")
            if op.action == "create":
                assert key not in live
                live.add(key)
            elif op.action == "update":
                assert key in live
                updates += 1
            else:
                assert key in live
                live.remove(key)
                deletes += 1
    assert deletes > 150
    assert updates > 10


def test_it_writes_posts_with_correct_facets_references_and_scripts() -> None:
    embeds: collections.Counter[str] = collections.Counter()
    texts = []
    replies = 0
    for frame in decoded(synthetic(5, 12_000)):
        if frame.type != "#commit":
            continue
        for op in commit_ops(frame.body):
            if op.collection != "app.bsky.feed.post" or op.record is None:
                continue
            post = op.record
            texts.append(post["text"])
            encoded = post["text"].encode()
            for facet in post.get("facets", []):
                text = encoded[facet["index"]["byteStart"] : facet["index"]["byteEnd"]].decode()
                feature = facet["features"][0]
                if feature["$type"] == "app.bsky.richtext.facet#mention":
                    assert text.startswith("@") and syntax.is_did(feature["did"])
                elif feature["$type"] == "app.bsky.richtext.facet#tag":
                    assert text == "#" + feature["tag"]
                else:
                    assert feature["uri"].split("://", 1)[1].startswith(text.removesuffix("..."))
            if "reply" in post:
                replies += 1
                for ref in (post["reply"]["root"], post["reply"]["parent"]):
                    assert "/app.bsky.feed.post/" in ref["uri"] and ref["cid"].startswith("bafyrei")
            if "embed" in post:
                embeds[post["embed"]["$type"]] += 1
    assert replies > 250
    assert set(embeds) == {
        "app.bsky.embed.images",
        "app.bsky.embed.external",
        "app.bsky.embed.record",
        "app.bsky.embed.recordWithMedia",
    }
    joined = "".join(texts)
    assert re.search("[\u3040-\u30ff\u4e00-\u9fff]", joined)  # Japanese and Chinese
    assert re.search("[\u0590-\u05ff\u0600-\u06ff]", joined)  # Hebrew and Arabic (right to left)
    assert re.search("[\U0001f300-\U0001faff]", joined)  # emoji


def test_it_writes_and_reads_recordings(tmp_path: Path) -> None:
    path = tmp_path / "frames.bin"
    assert write_recording(path, (frame for _, frame in synthetic(5, 100))) == 100
    assert read_recording(path) == [frame for _, frame in synthetic(5, 100)]
    assert [entry.seq for entry in load_replay(path)] == list(range(1, 101))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="cut short"):
        read_recording(path)


# -- the server ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def relay(entries: Any, **options: Any) -> AsyncIterator[tuple[RelaySimulator, str]]:
    simulator = RelaySimulator(iter(entries), options=RelayOptions(**options))
    port = await simulator.start("127.0.0.1", 0)
    try:
        yield simulator, f"ws://127.0.0.1:{port}{PATH}"
    finally:
        await simulator.stop()


def subscribe(url: str, cursor: int | str | None = None) -> Any:
    suffix = "" if cursor is None else f"?cursor={cursor}"
    return connect(url + suffix, max_size=None, compression=None, open_timeout=5)


def slow_reader(url: str) -> Any:
    """A client with a small receive buffer, so that TCP soon stops taking what it does not read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.connect(("127.0.0.1", int(url.split(":")[2].split("/")[0])))
    return connect(url, sock=sock, max_size=None, compression=None, open_timeout=5)


async def receive(ws: ClientConnection, count: int, timeout: float = 10.0) -> list[bytes]:
    frames = []
    for _ in range(count):
        frame = await asyncio.wait_for(ws.recv(), timeout)
        assert isinstance(frame, bytes)
        frames.append(frame)
    return frames


async def nothing_more(ws: ClientConnection, wait: float = 0.3) -> bool:
    try:
        await asyncio.wait_for(ws.recv(), wait)
    except TimeoutError:
        return True
    return False


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_it_streams_live_events_then_resumes_after_a_cursor() -> None:
    entries = synthetic(3, 300)
    frames = [frame for _, frame in entries]

    async def scenario() -> None:
        async with relay(entries) as (_, url):
            async with subscribe(url) as live:
                assert await receive(live, 300) == frames
                assert await nothing_more(live)
            async with subscribe(url, 250) as resumed:
                assert await receive(resumed, 50) == frames[250:]
                assert await nothing_more(resumed)
            async with subscribe(url, 0) as everything:
                assert await receive(everything, 300) == frames

    run(scenario())


def test_it_serves_several_clients_at_once() -> None:
    entries = synthetic(3, 2000)

    async def scenario() -> None:
        async with (
            relay(entries) as (_, url),
            subscribe(url, 0) as one,
            subscribe(url, 0) as two,
            subscribe(url, 1000) as three,
        ):
            got = await asyncio.gather(receive(one, 2000), receive(two, 2000), receive(three, 1000))
        assert got[0] == got[1] == [frame for _, frame in entries]
        assert got[2] == got[0][1000:]

    run(scenario())


def test_it_paces_events_at_the_requested_rate() -> None:
    async def scenario() -> float:
        async with relay(synthetic(3, 100), rate=200.0) as (_, url), subscribe(url) as ws:
            started = time.monotonic()
            await receive(ws, 100)
            return time.monotonic() - started

    assert 0.35 < run(scenario()) < 2.0


def test_it_sends_outdated_cursor_then_the_oldest_event_it_kept() -> None:
    entries = synthetic(3, 500)

    async def scenario() -> None:
        async with relay(entries, backlog_bytes=60_000, start_immediately=True) as (simulator, url):
            await asyncio.wait_for(simulator.finished.wait(), 10)
            async with subscribe(url, 0) as ws:
                info = decode_frame(await ws.recv())
                assert (info.op, info.type, info.body["name"]) == (1, "#info", "OutdatedCursor")
                oldest = event_of(decode_frame(await ws.recv())).seq
                assert 400 < oldest < 500
                rest = await receive(ws, 500 - oldest)
                assert rest == [frame for _, frame in entries[oldest:]]
            # A cursor inside the backlog resumes without the notice.
            async with subscribe(url, 480) as ws:
                assert await receive(ws, 20) == [frame for _, frame in entries[480:]]

    run(scenario())


def test_it_refuses_a_future_cursor_and_a_cursor_that_is_not_a_number() -> None:
    async def scenario() -> None:
        async with relay(synthetic(3, 100)) as (_, url):
            async with subscribe(url) as ws:
                await receive(ws, 100)
            refused = (
                (101, "FutureCursor"),
                ("abc", "InvalidRequest"),
                ("-5", "InvalidRequest"),
                ("", "InvalidRequest"),
            )
            for cursor, error in refused:
                async with subscribe(url, cursor) as ws:
                    frame = decode_frame(await ws.recv())
                    assert frame.is_error and frame.body["error"] == error
                    with pytest.raises(ConnectionClosed):
                        await asyncio.wait_for(ws.recv(), 5)

    run(scenario())


def test_it_answers_404_on_other_paths() -> None:
    async def scenario() -> None:
        async with relay(synthetic(3, 10)) as (_, url):
            with pytest.raises(InvalidStatus) as caught:
                async with connect(url.replace("subscribeRepos", "getRepo")):
                    pass
            assert caught.value.response.status_code == 404
            http_root = url.replace("ws://", "http://").replace(PATH, "/")
            with pytest.raises(urllib.error.HTTPError) as http_error:
                await asyncio.to_thread(urllib.request.urlopen, http_root, timeout=5)
            http_error.value.close()
            assert http_error.value.code == 404

    run(scenario())


def test_it_cuts_off_a_client_the_backlog_left_behind() -> None:
    entries = synthetic(3, 20_000)

    async def scenario() -> None:
        async with relay(entries, rate=20_000.0, backlog_bytes=1_000_000) as (_, url), slow_reader(url) as ws:
            await ws.recv()
            await asyncio.sleep(1.0)  # the relay keeps emitting and evicts what this client has not read
            seqs = []
            with contextlib.suppress(ConnectionClosed):
                while True:
                    frame = decode_frame(await asyncio.wait_for(ws.recv(), 5))
                    if frame.is_error:
                        assert frame.body["error"] == "ConsumerTooSlow"
                        break
                    seqs.append(event_of(frame).seq)
            assert seqs == list(range(2, len(seqs) + 2))
            assert 0 < len(seqs) < 19_000
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)

    run(scenario())


def test_it_waits_for_the_slowest_client_at_rate_zero() -> None:
    entries = synthetic(3, 20_000)  # about 18 MB

    async def scenario() -> list[bytes]:
        async with relay(entries, backlog_bytes=1_000_000) as (simulator, url), slow_reader(url) as ws:
            first = await ws.recv()
            await asyncio.sleep(0.5)
            assert simulator.emitted < 15_000  # held back by the client, not evicted under it
            assert simulator.backlog.bytes < 2_000_000
            return [first, *await receive(ws, 19_999)]

    assert run(scenario()) == [frame for _, frame in entries]


@pytest.mark.parametrize("path", fixture_files(SCENARIOS, "*.json"), ids=lambda path: path.stem)
def test_it_replays_each_fixture_scenario(path: Path) -> None:
    messages = load_scenario(path)
    forwarded = [message.frame for message in messages if not message.dropped]

    async def replay(include_dropped: bool) -> list[bytes]:
        entries = [(entry.seq, entry.frame) for entry in load_replay(path, include_dropped=include_dropped)]
        async with relay(entries) as (_, url), subscribe(url) as ws:
            frames = await receive(ws, len(entries))
            assert await nothing_more(ws, 0.1)
            return frames

    assert run(replay(False)) == forwarded
    assert run(replay(True)) == [message.frame for message in messages]


def test_it_replays_a_recording_with_cursor_semantics(tmp_path: Path) -> None:
    path = tmp_path / "frames.bin"
    write_recording(path, (frame for _, frame in synthetic(3, 100)))

    async def scenario() -> None:
        entries = [(entry.seq, entry.frame) for entry in load_replay(path)]
        async with relay(entries) as (_, url):
            async with subscribe(url) as ws:
                assert await receive(ws, 100) == [frame for _, frame in synthetic(3, 100)]
            async with subscribe(url, 90) as ws:
                assert [event_of(decode_frame(frame)).seq for frame in await receive(ws, 10)] == list(range(91, 101))

    run(scenario())


# -- fault injection ----------------------------------------------------------------------------------


def test_it_drops_the_connection_after_every_n_events() -> None:
    entries = synthetic(3, 200)

    async def scenario() -> list[bytes]:
        got: list[bytes] = []
        async with relay(entries, faults=Faults(drop_every=40)) as (_, url):
            cursor = None
            for _ in range(5):
                async with subscribe(url, cursor) as ws:
                    got += await receive(ws, 40)
                    with pytest.raises(ConnectionClosedError) as closed:
                        await asyncio.wait_for(ws.recv(), 5)
                    assert closed.value.rcvd is None  # no close frame: the connection just dropped
                cursor = event_of(decode_frame(got[-1])).seq
        return got

    assert run(scenario()) == [frame for _, frame in synthetic(3, 200)]


def test_it_sends_a_bad_frame_before_every_nth_event() -> None:
    entries = synthetic(3, 60)

    async def scenario() -> list[bytes]:
        async with relay(entries, faults=Faults(malformed_every=5)) as (_, url), subscribe(url) as ws:
            frames = await receive(ws, 72)
            assert await nothing_more(ws)
            return frames

    frames = run(scenario())
    good, bad = [], []
    for index, frame in enumerate(frames):
        try:
            event_of(decode_frame(frame))
        except FrameError:
            bad.append((index, frame))
        else:
            good.append(frame)
    assert good == [frame for _, frame in entries]
    # Before the 5th, 10th, ... event, and rotating through every kind of bad frame.
    assert [index for index, _ in bad] == [4 + 6 * n for n in range(12)]
    assert len(MALFORMED_KINDS) == 6
    assert sum(len(frame) > MAX_FRAME_BYTES for _, frame in bad) == 2


def test_it_stalls_after_n_events_with_the_socket_open() -> None:
    async def scenario() -> None:
        faults = Faults(stall_after=10, stall_seconds=1.0)
        async with relay(synthetic(3, 20), faults=faults) as (_, url), subscribe(url) as ws:
            await receive(ws, 10)
            started = time.monotonic()
            assert await nothing_more(ws, 0.5)
            await receive(ws, 10)
            assert time.monotonic() - started > 0.9

    run(scenario())


def test_it_sends_consumer_too_slow_after_n_events_and_closes() -> None:
    async def scenario() -> None:
        async with relay(synthetic(3, 50), faults=Faults(error_after=15)) as (_, url), subscribe(url) as ws:
            assert await receive(ws, 15) == [frame for _, frame in synthetic(3, 15)]
            error = decode_frame(await ws.recv())
            assert error.is_error and error.body["error"] == "ConsumerTooSlow"
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)

    run(scenario())


def test_it_sends_the_last_events_again_after_every_n() -> None:
    async def scenario() -> list[int]:
        async with relay(synthetic(3, 30), faults=Faults(rewind_every=10)) as (_, url), subscribe(url) as ws:
            return [event_of(decode_frame(frame)).seq for frame in await receive(ws, 39)]

    seqs = run(scenario())
    expected: list[int] = []
    for block in range(3):
        expected += list(range(block * 10 + 1, block * 10 + 11)) + list(range(block * 10 + 8, block * 10 + 11))
    assert seqs == expected


def test_it_serves_the_same_events_through_faults_as_without() -> None:
    """A client that reconnects from its last seq, skips bad frames and repeated seqs ends up with
    exactly the fault-free stream."""
    entries = synthetic(8, 400)

    async def resilient_client(url: str) -> list[bytes]:
        got: list[bytes] = []
        last = 0
        while last < 400:
            with contextlib.suppress(ConnectionClosed):
                async with subscribe(url, last or None) as ws:
                    while last < 400:
                        frame = await asyncio.wait_for(ws.recv(), 5)
                        try:
                            seq = event_of(decode_frame(frame)).seq
                        except FrameError:
                            continue
                        if seq > last:
                            got.append(frame)
                            last = seq
        return got

    async def scenario() -> list[bytes]:
        faults = Faults(drop_every=37, malformed_every=11, rewind_every=23)
        async with relay(entries, faults=faults) as (_, url):
            return await resilient_client(url)

    assert run(scenario()) == [frame for _, frame in entries]


# -- the command --------------------------------------------------------------------------------------


def start_command(*args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "manage.py", "run_relay_sim", "--port", "0", *args],
        cwd=settings.BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"ws://\S+", line)
    if match is None:
        process.kill()
        raise AssertionError(f"no listening line: {line!r} {process.communicate(timeout=5)}")
    return process, match.group(0)


@contextlib.contextmanager
def reaped(process: subprocess.Popen[str]) -> Iterator[None]:
    try:
        yield
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_it_runs_as_a_command_and_stops_cleanly_on_sigterm() -> None:
    process, url = start_command("--events", "300", "--rate", "0", "--seed", "4", "--log-interval", "0.2")
    with reaped(process):

        async def scenario() -> list[bytes]:
            async with subscribe(url, 0) as ws:
                frames = await receive(ws, 300)
                await asyncio.sleep(0.5)
                return frames

        assert run(scenario()) == [frame for _, frame in SyntheticFirehose(seed=4).frames(300)]
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
        assert process.returncode == 0
        assert "300 frames sent" in stderr
        assert "stopping" in stderr


def test_it_records_frames_with_the_command(tmp_path: Path) -> None:
    path = tmp_path / "sim.bin"
    subprocess.run(
        [sys.executable, "manage.py", "run_relay_sim", "--record", str(path), "--events", "50", "--seed", "2"],
        cwd=settings.BASE_DIR,
        check=True,
        capture_output=True,
        timeout=30,
    )
    assert read_recording(path) == [frame for _, frame in SyntheticFirehose(seed=2).frames(50)]


def test_it_rejects_bad_options_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "run_relay_sim", "--replay", "/nonexistent/file.json"],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "cannot replay /nonexistent/file.json" in result.stderr
    assert "Traceback" not in result.stderr
