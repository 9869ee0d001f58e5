"""manage.py run_firehose: the relay's events into the Redis Stream (SPEC sections 4, 5 and 7)."""

import asyncio
import signal
from typing import Any

import uvloop
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from firehose.client import Firehose, FirehoseConfig, RelayUrlError, relay_base_url
from pipeline import redis_store
from protocol.frames import MAX_SEQ


def _seq(value: str) -> int:
    seq = int(value)
    if not 0 <= seq <= MAX_SEQ:
        raise ValueError(value)
    return seq


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(value)
    return number


class Command(BaseCommand):
    help = "Reads the relay's com.atproto.sync.subscribeRepos and pushes each event to firehose:events."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--relay", help="relay URL or bare host (default: RELAY_URL)")
        parser.add_argument("--cursor", type=_seq, help="start after this seq, whatever the stored cursors say")
        parser.add_argument("--stall-timeout", type=_positive,
                            help="reconnect when no frame arrives for this many seconds "
                                 "(default: FIREHOSE_STALL_SECONDS)")
        parser.add_argument("--backoff", type=_positive, default=0.5,
                            help="first reconnect delay in seconds; it doubles up to 30 s (default 0.5)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            relay_url = relay_base_url(options["relay"] or settings.RELAY_URL)
        except RelayUrlError as exc:
            raise CommandError(str(exc)) from None
        config = FirehoseConfig(
            relay_url=relay_url,
            cursor=options["cursor"],
            high_water=settings.STREAM_HIGH_WATER,
            low_water=settings.STREAM_LOW_WATER,
            stall_seconds=options["stall_timeout"] or settings.FIREHOSE_STALL_SECONDS,
            max_frame_bytes=settings.FIREHOSE_MAX_FRAME_BYTES,
            backoff_base=options["backoff"],
            # What was read is pushed even while paused: keep that overshoot small next to the mark.
            buffer_events=min(FirehoseConfig.buffer_events, max(settings.STREAM_HIGH_WATER // 2, 1)),
            batch_size=min(FirehoseConfig.batch_size, max(settings.STREAM_HIGH_WATER // 4, 1)),
        )
        uvloop.run(self._run(config))

    async def _run(self, config: FirehoseConfig) -> None:
        async_client = redis_store.connect_async()
        firehose = Firehose(config, redis_store.connect(), async_client)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, firehose.stop)
        try:
            await firehose.run()
        finally:
            await async_client.aclose()
