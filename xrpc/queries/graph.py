"""app.bsky.graph.* queries."""

from typing import Any

from appview.models import List, StarterPack
from xrpc import cursors, hydration, selectors
from xrpc.errors import XrpcError, invalid_request

GRAPH_DEFS = "app.bsky.graph.defs"
LIST_SAMPLE = 12


def _profiles_result(params: dict[str, Any], key: str, rows: list[Any], *, subject: str | None) -> dict[str, Any]:
    views = hydration.profile_views([row[2] for row in rows] + ([subject] if subject else []))
    extra = {"subject": views[subject]} if subject else {}
    return cursors.page(key, [views[row[2]] for row in rows if row[2] in views], rows, params["limit"], **extra)


def get_followers(params: dict[str, Any]) -> dict[str, Any]:
    subject = selectors.visible_actor(params["actor"])
    rows = selectors.followers(subject.did, limit=params["limit"], cursor=cursors.decode(params["cursor"]))
    return _profiles_result(params, "followers", rows, subject=subject.did)


def get_follows(params: dict[str, Any]) -> dict[str, Any]:
    subject = selectors.visible_actor(params["actor"])
    rows = selectors.follows(subject.did, limit=params["limit"], cursor=cursors.decode(params["cursor"]))
    return _profiles_result(params, "follows", rows, subject=subject.did)


def _list_views(rows: list[tuple[Any, ...]]) -> dict[str, dict[str, Any]]:
    """listViews of list rows (uri, cid, raw, indexed_at, did) whose creators are visible."""
    creators = {did: row for did, row in hydration.actors(row[4] for row in rows).items() if row.visible}
    counts = hydration.list_item_counts([row[0] for row in rows])
    views = {}
    for uri, cid, raw, indexed_at, did in rows:
        if did in creators:
            view = hydration.list_fields(uri, cid, hydration.json_value(raw), creators[did], hydration.iso(indexed_at),
                                         counts.get(uri, 0))
            if view is not None:
                views[uri] = {"$type": f"{GRAPH_DEFS}#listView", **view}
    return views


def get_lists(params: dict[str, Any]) -> dict[str, Any]:
    creator = selectors.visible_actor(params["actor"])
    purposes = [p if p.startswith(GRAPH_DEFS) else f"{GRAPH_DEFS}#{p}" for p in params["purposes"]]
    rows = selectors.lists_of(creator.did, purposes=purposes, limit=params["limit"],
                              cursor=cursors.decode(params["cursor"]))
    views = _list_views([(row[1], row[2], row[3], row[4], creator.did) for row in rows])
    return cursors.page("lists", [views[row[1]] for row in rows if row[1] in views], rows, params["limit"])


def get_list(params: dict[str, Any]) -> dict[str, Any]:
    found = selectors.record_rows(List, [params["list"]])
    views = _list_views(list(found.values()))
    if params["list"] not in views:
        raise invalid_request("List not found")
    rows = selectors.list_items(params["list"], limit=params["limit"], cursor=cursors.decode(params["cursor"]))
    profiles = hydration.profile_views([row[2] for row in rows])
    items = [{"uri": row[1], "subject": profiles[row[2]]} for row in rows if row[2] in profiles]
    return cursors.page("items", items, rows, params["limit"], list=views[params["list"]])


def _starter_pack_rows(uris: list[str]) -> tuple[dict[str, tuple[Any, ...]], dict[str, hydration.ActorRow]]:
    rows = selectors.record_rows(StarterPack, uris)
    creators = {did: row for did, row in hydration.actors(row[4] for row in rows.values()).items() if row.visible}
    return {uri: row for uri, row in rows.items() if row[4] in creators}, creators


def get_starter_pack(params: dict[str, Any]) -> dict[str, Any]:
    rows, creators = _starter_pack_rows([params["starterPack"]])
    row = rows.get(params["starterPack"])
    if row is None:
        raise invalid_request("Starter pack not found")
    uri, cid, raw, indexed_at, did = row
    record = hydration.json_value(raw)
    view: dict[str, Any] = {"uri": uri, "cid": cid, "record": record, "creator": creators[did].basic()}
    list_uri = record.get("list") if isinstance(record.get("list"), str) else None
    if list_uri:
        lists = _list_views(list(selectors.record_rows(List, [list_uri]).values()))
        if list_uri in lists:
            view["list"] = {key: value for key, value in lists[list_uri].items()
                            if key not in ("creator", "description", "descriptionFacets")}
            view["list"]["$type"] = f"{GRAPH_DEFS}#listViewBasic"
            sample = selectors.list_items(list_uri, limit=LIST_SAMPLE, cursor=None)
            profiles = hydration.profile_views([item[2] for item in sample])
            view["listItemsSample"] = [{"uri": item[1], "subject": profiles[item[2]]} for item in sample
                                       if item[2] in profiles]
    view.update({"joinedWeekCount": 0, "joinedAllTimeCount": 0, "labels": [], "indexedAt": hydration.iso(indexed_at)})
    return {"starterPack": view}


def get_actor_starter_packs(params: dict[str, Any]) -> dict[str, Any]:
    creator = selectors.visible_actor(params["actor"])
    rows = selectors.starter_packs_of(creator.did, limit=params["limit"], cursor=cursors.decode(params["cursor"]))
    packs = [{"uri": uri, "cid": cid, "record": hydration.json_value(raw), "creator": creator.basic(),
              "joinedWeekCount": 0, "joinedAllTimeCount": 0, "labels": [], "indexedAt": hydration.iso(indexed_at)}
             for _, uri, cid, raw, indexed_at in rows]
    return cursors.page("starterPacks", packs, rows, params["limit"])


def get_relationships(params: dict[str, Any]) -> dict[str, Any]:
    named = selectors.actors([params["actor"], *params["others"]])
    subject = named.get(params["actor"])
    if subject is None:
        raise XrpcError("ActorNotFound", "Actor not found")
    others = [named[other].did for other in params["others"] if other in named]
    links = selectors.relationships(subject.did, others)
    relationships: list[dict[str, Any]] = []
    for other in params["others"]:
        row = named.get(other)
        if row is None:
            relationships.append({"$type": f"{GRAPH_DEFS}#notFoundActor", "actor": other, "notFound": True})
            continue
        relationships.append({"$type": f"{GRAPH_DEFS}#relationship", "did": row.did, **links.get(row.did, {})})
    return {"actor": subject.did, "relationships": relationships}


QUERIES = {
    "app.bsky.graph.getFollowers": get_followers,
    "app.bsky.graph.getFollows": get_follows,
    "app.bsky.graph.getLists": get_lists,
    "app.bsky.graph.getList": get_list,
    "app.bsky.graph.getStarterPack": get_starter_pack,
    "app.bsky.graph.getActorStarterPacks": get_actor_starter_packs,
    "app.bsky.graph.getRelationships": get_relationships,
}
