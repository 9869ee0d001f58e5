"""app.bsky.feed.* queries."""

from collections import defaultdict
from datetime import datetime
from typing import Any

from appview.models import FeedGenerator, Like, Post, Repost
from protocol import syntax
from xrpc import cursors, hydration, selectors
from xrpc.errors import XrpcError, invalid_request
from xrpc.hydration import PostHydration, post_view

DEFS = "app.bsky.feed.defs"


def _in_union(view: dict[str, Any], name: str) -> dict[str, Any]:
    return {"$type": f"{DEFS}#{name}", **view}


def _not_found(uri: str) -> dict[str, Any]:
    return {"$type": f"{DEFS}#notFoundPost", "uri": uri, "notFound": True}


def _reply_ref(hydrated: PostHydration, row: hydration.PostRow) -> dict[str, Any] | None:
    if not row.reply_parent or not row.reply_root:
        return None
    refs = {}
    for name, uri in (("root", row.reply_root), ("parent", row.reply_parent)):
        view = post_view(hydrated, uri)
        refs[name] = _in_union(view, "postView") if view is not None else _not_found(uri)
    return refs


def get_author_feed(params: dict[str, Any]) -> dict[str, Any]:
    author = selectors.visible_actor(params["actor"])
    kind = params["filter"]
    if kind not in selectors.FEED_KINDS:
        raise invalid_request(f"Error: filter must be one of {', '.join(selectors.FEED_KINDS)}")
    cursor = cursors.decode(params["cursor"])
    items = selectors.author_feed(author.did, kind=kind, limit=params["limit"], cursor=cursor)
    pinned = author.pinned["uri"] if params["includePins"] and cursor is None and author.pinned else None
    if pinned is not None and not pinned.startswith(f"at://{author.did}/{Post.collection}/"):
        pinned = None
    reposts = selectors.record_rows(Repost, [item.repost_uri for item in items if item.repost_uri])
    hydrated = hydration.hydrate_posts([item.post_uri for item in items] + ([pinned] if pinned else []),
                                       extra_dids=[author.did], reply_refs=True)
    feed: list[dict[str, Any]] = []
    if pinned is not None and (view := post_view(hydrated, pinned)) is not None:
        feed.append({"post": view, "reason": {"$type": f"{DEFS}#reasonPin"}})
    for item in items:
        view = post_view(hydrated, item.post_uri)
        if view is None:
            continue
        entry: dict[str, Any] = {"post": view}
        if item.repost_uri is not None:
            repost = reposts.get(item.repost_uri)
            if repost is None:
                continue
            entry["reason"] = {"$type": f"{DEFS}#reasonRepost", "by": hydrated.actors[author.did].basic(),
                               "uri": repost[0], "cid": repost[1], "indexedAt": hydration.iso(repost[3])}
        else:
            reply = _reply_ref(hydrated, hydrated.posts[item.post_uri])
            if reply is not None:
                entry["reply"] = reply
        feed.append(entry)
    rows = [(item.sort_at, item.key) for item in items]
    return cursors.page("feed", feed, rows, params["limit"])


def get_posts(params: dict[str, Any]) -> dict[str, Any]:
    uris = params["uris"]
    hydrated = hydration.hydrate_posts(uris)
    views = [view for uri in dict.fromkeys(uris) if (view := post_view(hydrated, uri)) is not None]
    return {"posts": views}


def get_post_thread(params: dict[str, Any]) -> dict[str, Any]:
    uri = params["uri"]
    anchor_rows = hydration.posts([uri])
    anchor = anchor_rows.get(uri)
    if anchor is None:
        raise XrpcError("NotFound", f"Post not found: {uri}")
    ancestors = selectors.thread_ancestors(uri, params["parentHeight"])
    replies = selectors.thread_replies(uri, params["depth"])
    root_uri = anchor.reply_root or uri
    gate = hydration.threadgate_view(root_uri)
    hidden_replies = set()
    if gate is not None and isinstance(gate["record"].get("hiddenReplies"), list):
        hidden_replies = {u for u in gate["record"]["hiddenReplies"] if isinstance(u, str)}
    hydrated = hydration.hydrate_posts([uri, root_uri, *ancestors, *(row[0] for row in replies)])
    anchor_view = post_view(hydrated, uri)
    if anchor_view is None:
        raise XrpcError("NotFound", f"Post not found: {uri}")
    root_author = hydration.did_of(root_uri)
    children: dict[str, list[tuple[str, datetime, str]]] = defaultdict(list)
    for reply_uri, parent, sort_at, did in replies:
        if reply_uri not in hidden_replies:
            children[parent].append((reply_uri, sort_at, did))

    def with_gate(view: dict[str, Any], post_uri: str) -> dict[str, Any]:
        if post_uri == root_uri and gate is not None:
            view["threadgate"] = gate
        return view

    def below(parent_uri: str, depth: int) -> list[dict[str, Any]]:
        if depth <= 0:
            return []
        ordered = sorted(children.get(parent_uri, ()), key=lambda c: (c[2] != root_author, c[1], c[0]))
        nodes = []
        for child_uri, _, _ in ordered:
            view = post_view(hydrated, child_uri)
            if view is None:
                continue
            node: dict[str, Any] = {"$type": f"{DEFS}#threadViewPost", "post": with_gate(view, child_uri)}
            node["replies"] = below(child_uri, depth - 1)
            nodes.append(node)
        return nodes

    thread: dict[str, Any] = {"$type": f"{DEFS}#threadViewPost", "post": with_gate(anchor_view, uri)}
    parent_node: dict[str, Any] | None = None
    for ancestor in reversed(ancestors):
        view = post_view(hydrated, ancestor)
        node = (_not_found(ancestor) if view is None
                else {"$type": f"{DEFS}#threadViewPost", "post": with_gate(view, ancestor)})
        if parent_node is not None and view is not None:
            node["parent"] = parent_node
        parent_node = node
    if parent_node is not None:
        thread["parent"] = parent_node
    thread["replies"] = below(uri, params["depth"])
    return {"thread": thread}


def _subject_page(params: dict[str, Any], key: str, rows: list[Any], items: list[Any]) -> dict[str, Any]:
    extra = {"uri": params["uri"]}
    if params.get("cid"):
        extra["cid"] = params["cid"]
    return cursors.page(key, items, rows, params["limit"], **extra)


def get_likes(params: dict[str, Any]) -> dict[str, Any]:
    rows = selectors.likes(params["uri"], limit=params["limit"], cursor=cursors.decode(params["cursor"]))
    views = hydration.profile_views([row[2] for row in rows])
    likes = [{"indexedAt": hydration.iso(indexed_at), "createdAt": hydration.iso(created_at or indexed_at),
              "actor": views[did]} for _, _, did, created_at, indexed_at in rows if did in views]
    return _subject_page(params, "likes", rows, likes)


def get_reposted_by(params: dict[str, Any]) -> dict[str, Any]:
    rows = selectors.reposters(params["uri"], limit=params["limit"], cursor=cursors.decode(params["cursor"]))
    views = hydration.profile_views([row[2] for row in rows])
    return _subject_page(params, "repostedBy", rows, [views[row[2]] for row in rows if row[2] in views])


def get_quotes(params: dict[str, Any]) -> dict[str, Any]:
    rows = selectors.quotes(params["uri"], limit=params["limit"], cursor=cursors.decode(params["cursor"]))
    hydrated = hydration.hydrate_posts(row[1] for row in rows)
    views = [view for row in rows if (view := post_view(hydrated, row[1])) is not None]
    return _subject_page(params, "posts", rows, views)


def search_posts(params: dict[str, Any]) -> dict[str, Any]:
    text = params["q"].strip()
    if not text:
        raise XrpcError("BadQueryString", "q must hold at least one word")
    author = None
    if params["author"]:
        found = selectors.actor(params["author"])
        if found is None:
            return {"posts": []}
        author = found.did
    since, until = (_search_time(params, name) for name in ("since", "until"))
    rows = selectors.search_posts(text=text, author=author, lang=params["lang"], since=since, until=until,
                                  limit=params["limit"], cursor=cursors.decode(params["cursor"]))
    hydrated = hydration.hydrate_posts(row[1] for row in rows)
    views = [view for row in rows if (view := post_view(hydrated, row[1])) is not None]
    return cursors.page("posts", views, rows, params["limit"])


def _search_time(params: dict[str, Any], name: str) -> datetime | None:
    value = params[name]
    if value is None:
        return None
    parsed = syntax.parse_datetime(value)
    if parsed is None:
        raise invalid_request(f"Error: {name} must be a datetime (YYYY-MM-DDTHH:mm:ssZ)")
    return parsed


def _generator_views(uris: list[str]) -> dict[str, dict[str, Any]]:
    rows = selectors.record_rows(FeedGenerator, uris)
    creators = {did: row for did, row in hydration.actors(row[4] for row in rows.values()).items() if row.visible}
    likes = dict(hydration.query(f"SELECT subject_uri, count(*) FROM {Like._meta.db_table}"
                                 " WHERE subject_uri = ANY(%s) GROUP BY 1", [list(rows)])) if rows else {}
    views = {}
    for uri, (_, cid, raw, indexed_at, did) in rows.items():
        if did in creators:
            view = hydration.generator_fields(uri, cid, hydration.json_value(raw), creators[did],
                                              hydration.iso(indexed_at), likes.get(uri, 0))
            if view is not None:
                views[uri] = view
    return views


def get_feed_generator(params: dict[str, Any]) -> dict[str, Any]:
    views = _generator_views([params["feed"]])
    if params["feed"] not in views:
        raise invalid_request("could not find feed")
    return {"view": views[params["feed"]], "isOnline": True, "isValid": True}


def get_feed_generators(params: dict[str, Any]) -> dict[str, Any]:
    views = _generator_views(params["feeds"])
    return {"feeds": [views[uri] for uri in dict.fromkeys(params["feeds"]) if uri in views]}


def get_actor_feeds(params: dict[str, Any]) -> dict[str, Any]:
    creator = selectors.visible_actor(params["actor"])
    rows = selectors.records_of(FeedGenerator, creator.did, limit=params["limit"],
                                cursor=cursors.decode(params["cursor"]))
    views = _generator_views([row[1] for row in rows])
    return cursors.page("feeds", [views[row[1]] for row in rows if row[1] in views], rows, params["limit"])


QUERIES = {
    "app.bsky.feed.getAuthorFeed": get_author_feed,
    "app.bsky.feed.getPosts": get_posts,
    "app.bsky.feed.getPostThread": get_post_thread,
    "app.bsky.feed.getLikes": get_likes,
    "app.bsky.feed.getRepostedBy": get_reposted_by,
    "app.bsky.feed.getQuotes": get_quotes,
    "app.bsky.feed.searchPosts": search_posts,
    "app.bsky.feed.getFeedGenerator": get_feed_generator,
    "app.bsky.feed.getFeedGenerators": get_feed_generators,
    "app.bsky.feed.getActorFeeds": get_actor_feeds,
}
