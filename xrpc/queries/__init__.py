"""The queries of the read API by NSID: each takes the checked parameters and returns the output its
lexicon describes, or raises an XrpcError."""

from collections.abc import Callable
from typing import Any

from xrpc.queries import actor, feed, graph, repo

Query = Callable[[dict[str, Any]], dict[str, Any]]

QUERIES: dict[str, Query] = {**actor.QUERIES, **feed.QUERIES, **graph.QUERIES, **repo.QUERIES}
