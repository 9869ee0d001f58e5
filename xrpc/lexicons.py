"""The official Lexicon schemas in ``lexicons/``, read once: each query's parameters and output."""

import json
from functools import cache
from pathlib import Path
from typing import Any

DIRECTORY = Path(__file__).resolve().parent / "lexicons"


@cache
def documents() -> dict[str, dict[str, Any]]:
    """Every lexicon document by its NSID."""
    docs = {}
    for path in sorted(DIRECTORY.rglob("*.json")):
        doc = json.loads(path.read_text())
        docs[doc["id"]] = doc
    if not docs:
        raise FileNotFoundError(f"no lexicon in {DIRECTORY}")
    return docs


def main_definition(nsid: str) -> dict[str, Any] | None:
    doc = documents().get(nsid)
    return None if doc is None else doc["defs"].get("main")


def query_parameters(nsid: str) -> dict[str, Any]:
    """The ``parameters`` schema of a query (``{"type": "params", "properties": {...}}``)."""
    main = main_definition(nsid)
    if main is None or main.get("type") != "query":
        raise KeyError(f"{nsid} is not a query lexicon")
    return main.get("parameters") or {"type": "params", "properties": {}}


def query_errors(nsid: str) -> set[str]:
    main = main_definition(nsid) or {}
    return {error["name"] for error in main.get("errors", ())}


def resolve(ref: str, *, context: str) -> dict[str, Any]:
    """The definition a ``ref`` names (``nsid#name``, ``#name`` inside ``context``, or ``nsid`` for main)."""
    nsid, _, name = ref.partition("#")
    doc = documents()[nsid or context]
    return doc["defs"][name or "main"]
