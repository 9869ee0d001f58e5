"""``manage.py index_stats [--json]``: what is indexed (SPEC section 4)."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from appview.selectors import index_stats


class Command(BaseCommand):
    help = "Exact counts of stored records per collection and of actors by status, the durable cursor and " \
           "the cluster:metrics counters."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        stats = index_stats()
        if options["json"]:
            self.stdout.write(json.dumps(stats, separators=(",", ":")))
            return
        sections: list[tuple[str, dict[str, Any]]] = [
            ("Records by collection", stats["records"]),  # type: ignore[list-item]
            ("Actors", stats["actors"]),  # type: ignore[list-item]
            ("cluster:metrics", stats["metrics"]),  # type: ignore[list-item]
        ]
        for title, values in sections:
            self.stdout.write(title)
            width = max((len(name) for name in values), default=0)
            for name, value in values.items():
                self.stdout.write(f"  {name:<{width}}  {value:>12,}")
            if not values:
                self.stdout.write("  (none)")
        cursor = stats["cursor"]
        self.stdout.write(f"Durable cursor: {'(none)' if cursor is None else cursor}")
