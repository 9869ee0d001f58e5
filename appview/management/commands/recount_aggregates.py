"""``manage.py recount_aggregates``: set every post's and actor's counts to what the stored rows say.

Workers keep the counts exact by moving them with the rows each batch changes; nothing corrects a count
that went wrong outside them (a database restored from a backup while workers ran, rows edited by hand).
This walks posts, then actors, in key order, one chunk per transaction under the same locks as a batch,
so workers may keep running. SIGTERM stops after the current chunk; ``--after`` resumes.
"""

import logging
import signal
import time
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from appview.indexing import services
from appview.selectors import estimated_rows

logger = logging.getLogger(__name__)

PROGRESS_SECONDS = 5.0


class Command(BaseCommand):
    help = "Recount the likes, reposts, replies and quotes of every post and the followers, follows and posts " \
           "of every actor from the stored rows, correcting those that differ."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--chunk", type=int, default=5000, help="keys per transaction (default 5000)")
        parser.add_argument("--only", choices=sorted(services.COUNTED_TABLES), default=None,
                            help="recount only posts or only actors")
        parser.add_argument("--after", default="", help="start after this key (to resume an interrupted run)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["chunk"] < 1:
            self.stderr.write("--chunk must be at least 1")
            raise SystemExit(2)
        self.shutdown = False

        def stop(signum: int, frame: FrameType | None) -> None:
            self.shutdown = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        kinds = [options["only"]] if options["only"] else list(services.COUNTED_TABLES)
        for kind in kinds:
            if not self.recount(kind, after=options["after"], chunk=options["chunk"]):
                break

    def recount(self, kind: str, *, after: str, chunk: int) -> bool:
        """Recounts every ``kind`` above ``after``; False when stopped by a signal."""
        total = estimated_rows(services.COUNTED_TABLES[kind][0])
        read = corrected = 0
        started = last_report = time.monotonic()
        while not self.shutdown:
            count, fixed, last = services.recount_chunk(kind=kind, after=after, limit=chunk)
            if last is None:
                self.stdout.write(f"{kind}: {read:,} recounted, {corrected:,} corrected"
                                  f" in {time.monotonic() - started:.1f} s")
                return True
            read, corrected, after = read + count, corrected + fixed, last
            now = time.monotonic()
            if now - last_report >= PROGRESS_SECONDS:
                last_report = now
                logger.info("%s: %s of about %s recounted (%.0f/s), %s corrected, last %s", kind, f"{read:,}",
                            f"{max(total, read):,}", read / (now - started), f"{corrected:,}", after)
        self.stdout.write(f"{kind}: stopped after {read:,} ({corrected:,} corrected); resume with --after {after}")
        return False
