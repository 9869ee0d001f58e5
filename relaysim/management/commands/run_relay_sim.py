"""``manage.py run_relay_sim``: a local relay serving subscribeRepos (see relaysim.relay_server)."""

import asyncio
import contextlib
import itertools
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from relaysim.relay_server import PATH, PREFETCH_EVENTS, Faults, RelayOptions, RelaySimulator
from relaysim.simulation import SyntheticFirehose, load_replay, write_recording

logger = logging.getLogger("relaysim")


def _non_negative(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(text) from None
        if value < 0:
            raise ValueError(text)
        return value

    parse.__name__ = f"non-negative {kind.__name__}"
    return parse


class Command(BaseCommand):
    help = (
        "Serve com.atproto.sync.subscribeRepos locally: synthetic events (reproducible by --seed) or a "
        "replayed scenario/recording, with the relay's cursor semantics and optional fault injection. "
        "Events start flowing when the first client subscribes (--start-immediately: at once)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        count = _non_negative(int)
        real = _non_negative(float)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=count, default=5010, help="0 picks a free port (printed at start)")
        parser.add_argument("--rate", type=real, default=500.0, help="events per second; 0 = as fast as possible")
        parser.add_argument("--events", type=count, default=None, help="stop after N events (then stay up, idle)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--start-seq", type=count, default=1)
        parser.add_argument("--actors", type=count, default=5000, help="size of the synthetic actor population")
        parser.add_argument(
            "--wall-clock", action="store_true", help="stamp events with the real time (not reproducible)"
        )
        parser.add_argument("--replay", type=Path, help="serve a scenario (.json) or a recording instead")
        parser.add_argument("--replay-all", action="store_true", help="also send scenario messages a relay drops")
        parser.add_argument("--record", type=Path, help="write --events synthetic frames to FILE and exit")
        parser.add_argument("--backlog-mb", type=real, default=512.0, help="memory bound of the event backlog")
        parser.add_argument("--start-immediately", action="store_true")
        parser.add_argument("--drop-every", type=count, default=0, help="close the connection after every N events")
        parser.add_argument("--malformed-every", type=count, default=0, help="a bad frame before every Nth event")
        parser.add_argument("--stall-after", type=count, default=0, help="stop sending after N events ...")
        parser.add_argument("--stall-seconds", type=real, default=30.0, help="... for this long (socket open)")
        parser.add_argument("--error-after", type=count, default=0, help="ConsumerTooSlow and close after N events")
        parser.add_argument("--rewind-every", type=count, default=0, help="re-send the last 3 events every N")
        parser.add_argument("--log-interval", type=real, default=5.0)

    def handle(self, *args: Any, **options: Any) -> None:
        # Ctrl-C before the event loop's signal handlers are in place (during start-up) is a stop too.
        with contextlib.suppress(KeyboardInterrupt):
            self._run(options)

    def _run(self, options: dict[str, Any]) -> None:
        if options["start_seq"] < 1:
            raise CommandError("--start-seq must be at least 1")
        if options["record"] is not None:
            self._record(options)
            return
        source, first_seq = self._source(options)
        relay_options = RelayOptions(
            rate=options["rate"],
            backlog_bytes=max(1, int(options["backlog_mb"] * 1024 * 1024)),
            start_immediately=options["start_immediately"],
            log_interval=max(options["log_interval"], 0.1),
            prefetch_events=0 if options["wall_clock"] else PREFETCH_EVENTS,
            faults=Faults(
                drop_every=options["drop_every"],
                malformed_every=options["malformed_every"],
                stall_after=options["stall_after"],
                stall_seconds=options["stall_seconds"],
                error_after=options["error_after"],
                rewind_every=options["rewind_every"],
            ),
        )
        simulator = RelaySimulator(source, options=relay_options, first_seq=first_seq)
        asyncio.run(
            self._serve(
                simulator,
                options["host"],
                options["port"],
                prefill=(options["events"] is not None or options["replay"] is not None) and not options["wall_clock"],
            )
        )

    def _source(self, options: dict[str, Any]) -> tuple[Iterator[tuple[int | None, bytes]], int]:
        replay: Path | None = options["replay"]
        if replay is None:
            generator = self._synthetic(options)
            return generator.frames(options["events"]), options["start_seq"]
        try:
            frames = load_replay(replay, include_dropped=options["replay_all"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CommandError(f"cannot replay {replay}: {exc}") from None
        entries: Iterator[tuple[int | None, bytes]] = ((frame.seq, frame.frame) for frame in frames)
        if options["events"] is not None:
            entries = itertools.islice(entries, options["events"])
        logger.info("relay-sim: replaying %d frames from %s", len(frames), replay)
        return entries, 1

    @staticmethod
    def _synthetic(options: dict[str, Any]) -> SyntheticFirehose:
        try:
            return SyntheticFirehose(
                seed=options["seed"],
                start_seq=options["start_seq"],
                actors=options["actors"],
                wall_clock=options["wall_clock"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None

    def _record(self, options: dict[str, Any]) -> None:
        if options["events"] is None:
            raise CommandError("--record needs --events N")
        generator = self._synthetic(options)
        written = write_recording(options["record"], (frame for _, frame in generator.frames(options["events"])))
        self.stdout.write(f"recorded {written} frames to {options['record']}")

    async def _serve(self, simulator: RelaySimulator, host: str, port: int, *, prefill: bool) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        if prefill:
            # A bounded stream is encoded before the port opens: once it accepts connections,
            # serving costs only the sending.
            encoding = asyncio.create_task(simulator.prefill(max_events=None))
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait((encoding, stopping), return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if stop.is_set():
                encoding.cancel()
                logger.info("relay-sim: stopped while encoding ahead")
                return
            logger.info("relay-sim: %d events encoded ahead", encoding.result())
        try:
            actual_port = await simulator.start(host, port)
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.stdout.write(f"relay-sim listening on ws://{host}:{actual_port}{PATH}")
        self.stdout.flush()
        await stop.wait()
        logger.info("relay-sim: stopping")
        await simulator.stop()
