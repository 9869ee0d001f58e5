"""``manage.py run_relay_sim``: a local relay serving subscribeRepos (see relaysim.relay_server); with
``--signed``, also the PLC directory, PDS and DNS server of the simulated accounts (relaysim.signed,
relaysim.pds), and with ``--mirror-port`` a second relay serving the same events under other seqs."""

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from relaysim.pds import LocalNetwork
from relaysim.relay_server import PATH, PREFETCH_EVENTS, Faults, RelayOptions, RelaySimulator
from relaysim.signed import COMMIT_FAULTS, CommitFault, SignedFirehose
from relaysim.simulation import SyntheticFirehose, load_replay, write_recording

logger = logging.getLogger("relaysim")

# Signed events change the repositories the PDS serves as they are made: encoding few ahead keeps the PDS
# close to what the relay has sent, as a real PDS is.
SIGNED_PREFETCH_EVENTS = 1000


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
        parser.add_argument("--signed", action="store_true",
                            help="real signed repositories, served by a local PLC directory, PDS and DNS server")
        parser.add_argument("--pds-port", type=count, default=0, help="with --signed (0: a free port)")
        parser.add_argument("--plc-port", type=count, default=0, help="with --signed (0: a free port)")
        parser.add_argument("--dns-port", type=count, default=0, help="with --signed, UDP (0: a free port)")
        parser.add_argument(
            "--commit-fault", action="append", default=[], metavar="KIND=every:N|at:N",
            help=f"with --signed, spoil every Nth commit or the Nth only; KIND: {', '.join(COMMIT_FAULTS)}",
        )
        parser.add_argument("--mirror-port", type=count, default=None,
                            help="a second relay on this port serving the same events (a relay switch)")
        parser.add_argument("--mirror-seq-offset", type=int, default=1_000_000,
                            help="added to the seqs of the second relay's events")

    def handle(self, *args: Any, **options: Any) -> None:
        # Ctrl-C before the event loop's signal handlers are in place (during start-up) is a stop too.
        with contextlib.suppress(KeyboardInterrupt):
            self._run(options)

    def _run(self, options: dict[str, Any]) -> None:
        if options["start_seq"] < 1:
            raise CommandError("--start-seq must be at least 1")
        if options["replay"] is not None and options["signed"]:
            raise CommandError("--signed makes synthetic events: it does not go with --replay")
        if options["commit_fault"] and not options["signed"]:
            raise CommandError("--commit-fault needs --signed")
        mirror = options["mirror_port"] is not None
        if mirror and options["start_seq"] + options["mirror_seq_offset"] < 1:
            raise CommandError("--start-seq plus --mirror-seq-offset must be at least 1")
        if options["record"] is not None:
            self._record(options)
            return
        generator = None if options["replay"] is not None else self._synthetic(options)
        source, first_seq = self._source(options, generator)
        prefetch = SIGNED_PREFETCH_EVENTS if options["signed"] else PREFETCH_EVENTS
        relay_options = RelayOptions(
            rate=options["rate"],
            backlog_bytes=max(1, int(options["backlog_mb"] * 1024 * 1024)),
            # Two relays draw on one source: both emit from the start, so that neither holds back the other.
            start_immediately=options["start_immediately"] or mirror,
            log_interval=max(options["log_interval"], 0.1),
            prefetch_events=0 if options["wall_clock"] else prefetch,
            faults=Faults(
                drop_every=options["drop_every"],
                malformed_every=options["malformed_every"],
                stall_after=options["stall_after"],
                stall_seconds=options["stall_seconds"],
                error_after=options["error_after"],
                rewind_every=options["rewind_every"],
            ),
        )
        relays: list[tuple[RelaySimulator, int]] = []
        if mirror:
            source, mirrored = itertools.tee(source)
            offset = options["mirror_seq_offset"]
            mirror_options = dataclasses.replace(relay_options, seq_offset=offset)
            relays.append((RelaySimulator(mirrored, options=mirror_options, first_seq=first_seq + offset),
                           options["mirror_port"]))
        relays.insert(0, (RelaySimulator(source, options=relay_options, first_seq=first_seq), options["port"]))
        prefill = (options["events"] is not None or options["replay"] is not None) and not options["wall_clock"]
        if not isinstance(generator, SignedFirehose):
            asyncio.run(self._serve(relays, options["host"], prefill=prefill))
            return
        with self._network(generator, options):
            asyncio.run(self._serve(relays, options["host"], prefill=prefill))

    def _network(self, generator: SignedFirehose, options: dict[str, Any]) -> LocalNetwork:
        """The PLC directory, PDS and DNS server of the signed accounts, listening (``with`` starts them)."""
        try:
            network = LocalNetwork(generator.accounts, pds_port=options["pds_port"], plc_port=options["plc_port"],
                                   dns_port=options["dns_port"])
        except OSError as exc:
            raise CommandError(f"cannot start the PLC, PDS and DNS servers: {exc.strerror or exc}") from None
        self.stdout.write(f"relay-sim PLC directory at {network.plc.url}")
        self.stdout.write(f"relay-sim PDS at {network.pds.url}, named {network.accounts.pds_url} in DID documents")
        self.stdout.write("relay-sim DNS (TXT _atproto.<handle>) at udp://{}:{}".format(*network.dns.address))
        environment = " ".join(f"{name}={value}" for name, value in network.indexer_environment().items())
        self.stdout.write(f"relay-sim indexer environment: {environment}")
        return network

    def _source(self, options: dict[str, Any],
                generator: SyntheticFirehose | None) -> tuple[Iterator[tuple[int | None, bytes]], int]:
        replay: Path | None = options["replay"]
        if generator is not None:
            return generator.frames(options["events"]), options["start_seq"]
        assert replay is not None
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
            if options["signed"]:
                return SignedFirehose(
                    seed=options["seed"],
                    start_seq=options["start_seq"],
                    actors=options["actors"],
                    wall_clock=options["wall_clock"],
                    faults=[CommitFault.parse(text) for text in options["commit_fault"]],
                )
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

    async def _serve(self, relays: list[tuple[RelaySimulator, int]], host: str, *, prefill: bool) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        if prefill:
            # A bounded stream is encoded before the port opens: once it accepts connections,
            # serving costs only the sending.
            encoding = asyncio.gather(*(relay.prefill(max_events=None) for relay, _ in relays))
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait((encoding, stopping), return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if stop.is_set():
                encoding.cancel()
                logger.info("relay-sim: stopped while encoding ahead")
                return
            logger.info("relay-sim: %d events encoded ahead", encoding.result()[0])
        started: list[RelaySimulator] = []
        try:
            for relay, port in relays:
                try:
                    actual_port = await relay.start(host, port)
                except OSError as exc:
                    raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
                started.append(relay)
                offset = relay.options.seq_offset
                numbering = f" (seqs {offset:+d})" if offset else ""
                self.stdout.write(f"relay-sim listening on ws://{host}:{actual_port}{PATH}{numbering}")
            self.stdout.flush()
            await stop.wait()
            logger.info("relay-sim: stopping")
        finally:
            for relay in started:
                await relay.stop()
