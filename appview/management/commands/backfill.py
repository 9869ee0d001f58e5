"""``manage.py backfill``: load whole repositories from their PDSes for a chosen scope (SPEC section 12)."""

import signal
from pathlib import Path
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from appview.sync.backfill import Backfill, BackfillError, Scope, relay_http_url
from protocol import syntax


class Command(BaseCommand):
    help = ("Load whole repositories from their PDSes: the DIDs given, every repository holding a collection, or "
            "the full network (both listed by the relay). Resumable: the queue and the listing's cursor live in "
            "PostgreSQL; run it again to continue. Without a scope, loads what earlier runs left queued.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--did", nargs="+", default=[], metavar="DID", help="repositories to load")
        parser.add_argument("--did-file", type=Path, help="a file of DIDs, one per line (# starts a comment)")
        parser.add_argument("--signal-collection", metavar="NSID",
                            help="every repository holding this collection (the relay's listReposByCollection)")
        parser.add_argument("--full-network", action="store_true",
                            help="every repository the relay lists (com.atproto.sync.listRepos)")
        parser.add_argument("--relay", default=settings.RELAY_URL,
                            help=f"the relay that lists repositories (default RELAY_URL, {settings.RELAY_URL})")
        parser.add_argument("--concurrency", type=int, default=settings.BACKFILL_CONCURRENCY,
                            help=f"repositories loaded at once (default BACKFILL_CONCURRENCY, "
                                 f"{settings.BACKFILL_CONCURRENCY})")
        parser.add_argument("--processes", type=int, default=settings.BACKFILL_PROCESSES,
                            help=f"processes that verify and stage repositories, 0 for none (default "
                                 f"BACKFILL_PROCESSES, {settings.BACKFILL_PROCESSES})")
        parser.add_argument("--retry-failed", action="store_true",
                            help="try again the repositories that failed all their tries")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["concurrency"] < 1:
            raise CommandError("--concurrency must be at least 1")
        if options["processes"] < 0:
            raise CommandError("--processes must be 0 or more")
        if options["signal_collection"] and options["full_network"]:
            raise CommandError("--signal-collection and --full-network are two scopes: give one")
        collection = options["signal_collection"]
        if collection is not None and not syntax.is_nsid(collection):
            raise CommandError(f"--signal-collection {collection!r} is not an NSID")
        dids = list(options["did"])
        if options["did_file"] is not None:
            try:
                lines = options["did_file"].read_text().splitlines()
            except OSError as exc:
                raise CommandError(f"--did-file: {exc}") from None
            dids += [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]
        invalid = [did for did in dids if not syntax.is_did(did)]
        if invalid:
            raise CommandError(f"not DIDs: {', '.join(invalid[:5])}")
        scope = Scope(dids=tuple(dids), signal_collection=collection, full_network=options["full_network"],
                      relay=relay_http_url(options["relay"]))
        backfill = Backfill(concurrency=options["concurrency"], processes=options["processes"])
        if options["retry_failed"]:
            backfill.retry_failed()

        def stop(signum: int, frame: FrameType | None) -> None:
            backfill.stop_loading()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            backfill.run(scope)
        except BackfillError as exc:
            raise CommandError(f"{exc.reason}: {exc}") from None
