"""``manage.py run_resync``: fetch the repositories queued for resync from their PDSes (SPEC section 12)."""

import signal
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from appview.sync.resyncer import Resyncer


class Command(BaseCommand):
    help = "Resync the repositories queued by the workers: fetch each from its PDS, verify it, store it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--concurrency", type=int, default=settings.RESYNC_CONCURRENCY,
                            help=f"repositories fetched at once (default {settings.RESYNC_CONCURRENCY})")
        parser.add_argument("--until-idle", action="store_true",
                            help="exit once no repository is due (for scripts and tests)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["concurrency"] < 1:
            self.stderr.write("--concurrency must be at least 1")
            raise SystemExit(2)
        resyncer = Resyncer(concurrency=options["concurrency"])

        def stop(signum: int, frame: FrameType | None) -> None:
            resyncer.stop = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        resyncer.run(until_idle=options["until_idle"])
