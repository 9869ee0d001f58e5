"""Every record table by its collection NSID; records of any other collection go to the generic table."""

from appview.indexing import actor, feed, graph
from appview.indexing.tables import TableSpec
from appview.models import MODEL_BY_COLLECTION

TABLE_BY_COLLECTION: dict[str, TableSpec] = {spec.collection: spec for spec in (*feed.TABLES, *graph.TABLES,
                                                                              *actor.TABLES)}

if set(TABLE_BY_COLLECTION) != set(MODEL_BY_COLLECTION):
    raise RuntimeError("appview.indexing has no extractor for: "
                       + ", ".join(sorted(set(MODEL_BY_COLLECTION) - set(TABLE_BY_COLLECTION))))
