"""Which collections the index stores (``COLLECTION_FILTERS``, SPEC section 2): the same answer for backfill and
for live indexing, so that a repository loaded whole and one followed commit by commit hold the same records."""

WILDCARD = ".*"


def is_stored(collection: str, filters: tuple[str, ...]) -> bool:
    """Whether records of ``collection`` are stored under ``filters``: NSIDs (``app.bsky.feed.post``) and
    namespaces (``app.bsky.graph.*``: every collection whose NSID starts with ``app.bsky.graph.``). No filters:
    every collection."""
    if not filters:
        return True
    for pattern in filters:
        if pattern.endswith(WILDCARD):
            if collection.startswith(pattern[:-1]):
                return True
        elif collection == pattern:
            return True
    return False
