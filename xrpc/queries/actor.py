"""app.bsky.actor.* queries."""

from typing import Any

from xrpc import hydration, selectors


def get_profile(params: dict[str, Any]) -> dict[str, Any]:
    row = selectors.visible_actor(params["actor"])
    return hydration.profile_views([row.did], detailed=True)[row.did]


def get_profiles(params: dict[str, Any]) -> dict[str, Any]:
    named = selectors.actors(params["actors"])
    dids = [named[identifier].did for identifier in params["actors"] if identifier in named]
    views = hydration.profile_views(dids, detailed=True)
    return {"profiles": [views[did] for did in dict.fromkeys(dids) if did in views]}


def _search_prefix(params: dict[str, Any]) -> str:
    return (params.get("q") or params.get("term") or "").strip().lower().removeprefix("@")


def search_actors(params: dict[str, Any]) -> dict[str, Any]:
    prefix = _search_prefix(params)
    if not prefix:
        return {"actors": []}
    after = params["cursor"]
    dids = selectors.search_actors(prefix, limit=params["limit"], after=after)
    views = hydration.profile_views(dids)
    result: dict[str, Any] = {"actors": [views[did] for did in dids if did in views]}
    if len(dids) == params["limit"] and result["actors"]:
        result["cursor"] = result["actors"][-1]["handle"]
    return result


def search_actors_typeahead(params: dict[str, Any]) -> dict[str, Any]:
    prefix = _search_prefix(params)
    if not prefix:
        return {"actors": []}
    dids = selectors.search_actors(prefix, limit=params["limit"], after=None)
    views = hydration.profile_views(dids, basic=True)
    return {"actors": [views[did] for did in dids if did in views]}


QUERIES = {
    "app.bsky.actor.getProfile": get_profile,
    "app.bsky.actor.getProfiles": get_profiles,
    "app.bsky.actor.searchActors": search_actors,
    "app.bsky.actor.searchActorsTypeahead": search_actors_typeahead,
}
