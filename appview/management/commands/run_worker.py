"""``manage.py run_worker``: index firehose:events into PostgreSQL (SPEC sections 3, 4, 6, 7)."""

import signal
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from appview.indexing.worker import Worker, default_consumer_name, settle_garbage_collector


class Command(BaseCommand):
    help = "Index the events of the Redis Stream firehose:events into PostgreSQL, in batches."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--consumer", default=None, help="consumer name in the group (default: host-pid)")
        parser.add_argument("--batch-size", type=int, default=settings.WORKER_BATCH_SIZE,
                            help=f"entries per batch (default {settings.WORKER_BATCH_SIZE})")
        parser.add_argument("--drain", action="store_true",
                            help="exit 0 once the stream has no undelivered and no pending entries")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            self.stderr.write("--batch-size must be at least 1")
            raise SystemExit(2)
        worker = Worker(
            consumer=options["consumer"] or default_consumer_name(),
            batch_size=options["batch_size"],
            claim_idle_ms=settings.WORKER_CLAIM_IDLE_MS,
            max_attempts=settings.WORKER_MAX_ATTEMPTS,
        )

        def stop(signum: int, frame: FrameType | None) -> None:
            worker.stop = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        settle_garbage_collector()
        worker.run(drain=options["drain"])
