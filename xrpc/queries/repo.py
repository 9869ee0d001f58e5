"""com.atproto.repo.* and com.atproto.identity.resolveHandle: records exactly as their repos hold them."""

from typing import Any

from appview.models import MODEL_BY_COLLECTION, GenericRecord
from xrpc import hydration, selectors
from xrpc.errors import XrpcError, invalid_request


def _repo(identifier: str) -> hydration.ActorRow | None:
    row = selectors.actor(identifier)
    return row if row is not None and row.visible else None


def _table(collection: str) -> tuple[str, str, list[Any]]:
    """The table holding a collection's records, and the condition (with its parameters) that selects them."""
    model = MODEL_BY_COLLECTION.get(collection)
    if model is not None:
        return model._meta.db_table, "", []
    return GenericRecord._meta.db_table, "AND collection = %s", [collection]


def get_record(params: dict[str, Any]) -> dict[str, Any]:
    repo = _repo(params["repo"])
    uri = f"at://{repo.did if repo else params['repo']}/{params['collection']}/{params['rkey']}"
    if repo is None:
        raise XrpcError("RecordNotFound", f"Could not locate record: {uri}")
    table, condition, extra = _table(params["collection"])
    rows = hydration.query(f"SELECT cid, raw FROM {table} WHERE uri = %s {condition}", [uri, *extra])
    if not rows or (params["cid"] and rows[0][0] != params["cid"]):
        raise XrpcError("RecordNotFound", f"Could not locate record: {uri}")
    cid, raw = rows[0]
    return {"uri": uri, "cid": cid, "value": hydration.json_value(raw)}


def list_records(params: dict[str, Any]) -> dict[str, Any]:
    repo = _repo(params["repo"])
    if repo is None:
        raise invalid_request(f"Could not find repo: {params['repo']}")
    table, condition, extra = _table(params["collection"])
    ascending = bool(params["reverse"])
    cursor = params["cursor"]
    after = ""
    if cursor:
        after = f'AND rkey COLLATE "C" {">" if ascending else "<"} %s'
        extra = [*extra, cursor]
    order = "ASC" if ascending else "DESC"
    rows = hydration.query(
        f"SELECT uri, cid, raw, rkey FROM {table} WHERE did = %s {condition} {after}"
        f' ORDER BY rkey COLLATE "C" {order} LIMIT %s',
        [repo.did, *extra, params["limit"]])
    result: dict[str, Any] = {}
    if len(rows) >= params["limit"]:
        result["cursor"] = rows[-1][3]
    result["records"] = [{"uri": uri, "cid": cid, "value": hydration.json_value(raw)} for uri, cid, raw, _ in rows]
    return result


def describe_repo(params: dict[str, Any]) -> dict[str, Any]:
    repo = _repo(params["repo"])
    if repo is None:
        raise invalid_request(f"Could not find repo: {params['repo']}")
    tables = " UNION ALL ".join(
        f"(SELECT '{model.collection}' FROM {model._meta.db_table} WHERE did = %s LIMIT 1)"
        for model in MODEL_BY_COLLECTION.values()
    )
    named = [row[0] for row in hydration.query(tables, [repo.did] * len(MODEL_BY_COLLECTION))]
    generic = hydration.query(f"SELECT DISTINCT collection FROM {GenericRecord._meta.db_table} WHERE did = %s",
                              [repo.did])
    handle = repo.handle or hydration.INVALID_HANDLE
    did_doc = {"@context": ["https://www.w3.org/ns/did/v1"], "id": repo.did}
    if repo.handle:
        did_doc["alsoKnownAs"] = [f"at://{repo.handle}"]
    return {"handle": handle, "did": repo.did, "didDoc": did_doc,
            "collections": sorted(set(named) | {row[0] for row in generic}), "handleIsCorrect": bool(repo.handle)}


def resolve_handle(params: dict[str, Any]) -> dict[str, Any]:
    row = selectors.actor(params["handle"])
    if row is None or not row.visible:
        raise XrpcError("HandleNotFound", "Unable to resolve handle")
    return {"did": row.did}


QUERIES = {
    "com.atproto.repo.getRecord": get_record,
    "com.atproto.repo.listRecords": list_records,
    "com.atproto.repo.describeRepo": describe_repo,
    "com.atproto.identity.resolveHandle": resolve_handle,
}
