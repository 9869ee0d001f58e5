"""Reads of the index for the read API: who an actor parameter names, and pages of feeds, graphs, lists
and search results. Pages are keyset reads on ``(sort_at, uri)`` (newest first) through an index that
holds that order; they return keys and sort keys, which ``xrpc.hydration`` turns into views."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from appview.models import Block, Follow, Like, List, ListItem, Post, Repost, StarterPack
from xrpc import hydration
from xrpc.errors import XrpcError, invalid_request
from xrpc.hydration import ACTOR, POST, ActorRow, query, visible_sql

# The error a reader gets for an account that is not shown, by its status.
HIDDEN_ERRORS = {
    "deactivated": ("AccountDeactivated", "Account is deactivated"),
    "takendown": ("AccountTakedown", "Account has been taken down"),
    "suspended": ("AccountTakedown", "Account has been suspended"),
}
# Replies and threads: at most this many posts are read below one post.
THREAD_REPLIES_MAX = 1000
SEARCH_VECTOR = "to_tsvector('simple'::regconfig, COALESCE(p.text, ''::text))"


def _media_kind(embed: str) -> str:
    """A post whose embed is ``embed``, alone or beside a quoted record."""
    return (f"AND (p.embed_type = '{embed}' OR (p.embed_type = 'app.bsky.embed.recordWithMedia'"
            f" AND p.raw -> 'embed' -> 'media' ->> '$type' = '{embed}'))")


# getAuthorFeed's filters: the condition on the author's posts.
FEED_KINDS = {
    "posts_with_replies": "",
    "posts_no_replies": "AND p.reply_parent_uri IS NULL",
    "posts_with_media": _media_kind("app.bsky.embed.images"),
    "posts_with_video": _media_kind("app.bsky.embed.video"),
    "posts_and_author_threads": "AND (p.reply_root_uri IS NULL OR p.reply_root_uri LIKE 'at://' || p.did || '/%%')",
}
FEEDS_WITH_REPOSTS = ("posts_with_replies", "posts_no_replies", "posts_and_author_threads")


def actor(identifier: str) -> ActorRow | None:
    """The actor a DID or a handle names (hidden ones included), or None."""
    if identifier.startswith("did:"):
        return hydration.actors([identifier]).get(identifier)
    return hydration.actor_by_handle(identifier)


def actors(identifiers: list[str]) -> dict[str, ActorRow]:
    """The actors named by DIDs or handles (hidden ones included), by the identifier; two queries at most."""
    dids = [identifier for identifier in identifiers if identifier.startswith("did:")]
    handles = [identifier for identifier in identifiers if not identifier.startswith("did:")]
    found: dict[str, ActorRow] = dict(hydration.actors(dids))
    if handles:
        by_handle = query(f"SELECT DISTINCT ON (handle) handle, did FROM {ACTOR} WHERE handle = ANY(%s)"
                          " ORDER BY handle, did", [handles])
        rows = hydration.actors(did for _, did in by_handle)
        found.update({handle: rows[did] for handle, did in by_handle if did in rows})
    return found


def visible_actor(identifier: str) -> ActorRow:
    """The actor a parameter names, or the XRPC error a reader gets for it."""
    row = actor(identifier)
    if row is None or row.status == "deleted":
        raise invalid_request("Profile not found")
    if not row.visible:
        name, message = HIDDEN_ERRORS.get(row.status, ("AccountDeactivated", "Account is deactivated"))
        raise XrpcError(name, message)
    return row


@dataclass(frozen=True, slots=True)
class FeedItem:
    sort_at: datetime
    key: str  # the post's URI, or the repost's for a repost
    post_uri: str
    repost_uri: str | None


def _after(cursor: tuple[datetime, str] | None, alias: str) -> tuple[str, list[Any]]:
    if cursor is None:
        return "", []
    return f"AND ({alias}.sort_at, {alias}.uri) < (%s, %s)", [cursor[0], cursor[1]]


def author_feed(did: str, *, kind: str, limit: int, cursor: tuple[datetime, str] | None) -> list[FeedItem]:
    """Posts (and reposts, for the feeds that show them) of one author, newest first."""
    after_post, post_params = _after(cursor, "p")
    sql = (f"(SELECT p.sort_at, p.uri, p.uri, NULL FROM {POST} p WHERE p.did = %s {FEED_KINDS[kind]} {after_post}"
           " ORDER BY p.sort_at DESC, p.uri DESC LIMIT %s)")
    params: list[Any] = [did, *post_params, limit]
    if kind in FEEDS_WITH_REPOSTS:
        after_repost, repost_params = _after(cursor, "r")
        sql += (f" UNION ALL (SELECT r.sort_at, r.uri, r.subject_uri, r.uri FROM {Repost._meta.db_table} r"
                f" WHERE r.did = %s {after_repost} ORDER BY r.sort_at DESC, r.uri DESC LIMIT %s)")
        params += [did, *repost_params, limit]
    rows = query(f"SELECT * FROM ({sql}) AS items ORDER BY 1 DESC, 2 DESC LIMIT %s", [*params, limit])
    return [FeedItem(*row) for row in rows]


def _page(sql: str, params: list[Any], alias: str, *, limit: int,
          cursor: tuple[datetime, str] | None) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (which selects ``alias``.sort_at and ``alias``.uri first, and ends with its WHERE
    conditions) after the cursor, newest first."""
    after, after_params = _after(cursor, alias)
    return query(f"{sql} {after} ORDER BY {alias}.sort_at DESC, {alias}.uri DESC LIMIT %s",
                 [*params, *after_params, limit])


def _accounts_page(model: type[Any], key_column: str, key: str, account_column: str, *, limit: int,
                   cursor: tuple[datetime, str] | None, columns: str = "") -> list[tuple[Any, ...]]:
    """(sort_at, uri, account, *columns) of the rows of ``model`` whose ``key_column`` is ``key`` and whose
    ``account_column`` names a visible account, newest first."""
    return _page(f"SELECT x.sort_at, x.uri, x.{account_column}{columns} FROM {model._meta.db_table} x"
                 f" JOIN {ACTOR} a ON a.did = x.{account_column} WHERE x.{key_column} = %s AND {visible_sql('a')}",
                 [key], "x", limit=limit, cursor=cursor)


def likes(subject: str, *, limit: int, cursor: tuple[datetime, str] | None) -> list[tuple[Any, ...]]:
    """(sort_at, uri, liker, created_at, indexed_at) of a post's likes by visible accounts."""
    return _accounts_page(Like, "subject_uri", subject, "did", limit=limit, cursor=cursor,
                          columns=", x.created_at, x.indexed_at")


def reposters(subject: str, *, limit: int, cursor: tuple[datetime, str] | None) -> list[tuple[Any, ...]]:
    return _accounts_page(Repost, "subject_uri", subject, "did", limit=limit, cursor=cursor)


def quotes(subject: str, *, limit: int, cursor: tuple[datetime, str] | None) -> list[tuple[Any, ...]]:
    return _accounts_page(Post, "quote_uri", subject, "did", limit=limit, cursor=cursor)


def followers(did: str, *, limit: int, cursor: tuple[datetime, str] | None) -> list[tuple[Any, ...]]:
    return _accounts_page(Follow, "subject_did", did, "did", limit=limit, cursor=cursor)


def follows(did: str, *, limit: int, cursor: tuple[datetime, str] | None) -> list[tuple[Any, ...]]:
    return _accounts_page(Follow, "did", did, "subject_did", limit=limit, cursor=cursor)


def list_items(list_uri: str, *, limit: int, cursor: tuple[datetime, str] | None) -> list[tuple[Any, ...]]:
    return _accounts_page(ListItem, "list_uri", list_uri, "subject_did", limit=limit, cursor=cursor)


def records_of(model: type[Any], did: str, *, limit: int, cursor: tuple[datetime, str] | None,
               extra: str = "", extra_params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """(sort_at, uri, cid, raw, indexed_at) of one author's records of a table (lists, feed generators,
    starter packs)."""
    return _page(f"SELECT x.sort_at, x.uri, x.cid, x.raw, x.indexed_at FROM {model._meta.db_table} x"
                 f" WHERE x.did = %s {extra}", [did, *extra_params], "x", limit=limit, cursor=cursor)


def record_rows(model: type[Any], uris: list[str]) -> dict[str, tuple[Any, ...]]:
    """uri -> (uri, cid, raw, indexed_at, did) of these records of a table."""
    if not uris:
        return {}
    rows = query(f"SELECT uri, cid, raw, indexed_at, did FROM {model._meta.db_table} WHERE uri = ANY(%s)", [uris])
    return {row[0]: row for row in rows}


def thread_ancestors(uri: str, height: int) -> list[str]:
    """The URIs above a post, nearest first, up to ``height`` (a missing one ends the walk, included)."""
    if height <= 0:
        return []
    rows = query(
        f"WITH RECURSIVE up(uri, parent, height) AS ("
        f" SELECT uri, reply_parent_uri, 0 FROM {POST} WHERE uri = %s"
        f" UNION ALL SELECT p.uri, p.reply_parent_uri, up.height + 1 FROM up JOIN {POST} p ON p.uri = up.parent"
        " WHERE up.height < %s) SELECT uri, parent, height FROM up ORDER BY height", [uri, height])
    chain = [row[0] for row in rows[1:]]
    last_parent = rows[-1][1] if rows else None
    if last_parent and len(chain) < height:
        chain.append(last_parent)  # not indexed: shown as not found
    return chain


def thread_replies(uri: str, depth: int) -> list[tuple[str, str, datetime, str]]:
    """(uri, parent, sort_at, author) of the replies below a post, down to ``depth`` levels."""
    if depth <= 0:
        return []
    return query(
        f"WITH RECURSIVE down(uri, parent, sort_at, did, depth) AS ("
        f" SELECT uri, reply_parent_uri, sort_at, did, 1 FROM {POST} WHERE reply_parent_uri = %s"
        f" UNION ALL SELECT p.uri, p.reply_parent_uri, p.sort_at, p.did, down.depth + 1 FROM down"
        f" JOIN {POST} p ON p.reply_parent_uri = down.uri WHERE down.depth < %s)"
        " SELECT uri, parent, sort_at, did FROM down LIMIT %s", [uri, depth, THREAD_REPLIES_MAX])


def search_posts(*, text: str, author: str | None, lang: str | None, since: datetime | None,
                 until: datetime | None, limit: int, cursor: tuple[datetime, str] | None) -> list[tuple[Any, ...]]:
    """(sort_at, uri) of posts by visible accounts holding every word of ``text``, newest first. The
    condition is the expression of the full-text index (``post_text_search``), so the index answers it."""
    conditions = [f"{SEARCH_VECTOR} @@ plainto_tsquery('simple'::regconfig, %s)", visible_author("p")]
    params: list[Any] = [text]
    for condition, value in (("p.did = %s", author), ("p.langs @> jsonb_build_array(%s::text)", lang),
                             ("p.sort_at >= %s", since), ("p.sort_at < %s", until)):
        if value is not None:
            conditions.append(condition)
            params.append(value)
    return _page(f"SELECT p.sort_at, p.uri FROM {POST} p WHERE {' AND '.join(conditions)}", params, "p",
                 limit=limit, cursor=cursor)


def visible_author(alias: str) -> str:
    return f"EXISTS (SELECT 1 FROM {ACTOR} a WHERE a.did = {alias}.did AND {visible_sql('a')})"


def search_actors(prefix: str, *, limit: int, after: str | None) -> list[str]:
    """DIDs of visible actors whose handle starts with ``prefix``, in handle order after ``after``."""
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else "\uffff"
    rows = query(f"SELECT a.did, a.handle FROM {ACTOR} a WHERE a.handle >= %s AND a.handle < %s"
                 f" AND a.handle LIKE %s AND a.handle > %s AND {visible_sql('a')} ORDER BY a.handle LIMIT %s",
                 [prefix, upper, _like_prefix(prefix), after or "", limit])
    return [did for did, _ in rows]


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def lists_of(did: str, *, purposes: list[str], limit: int,
             cursor: tuple[datetime, str] | None) -> list[tuple[Any, ...]]:
    extra, params = ("AND x.purpose = ANY(%s)", (purposes,)) if purposes else ("", ())
    return records_of(List, did, limit=limit, cursor=cursor, extra=extra, extra_params=params)


def starter_packs_of(did: str, *, limit: int, cursor: tuple[datetime, str] | None) -> list[tuple[Any, ...]]:
    return records_of(StarterPack, did, limit=limit, cursor=cursor)


def relationships(did: str, others: list[str]) -> dict[str, dict[str, str]]:
    """For each other DID: the URIs of the follows and blocks between it and ``did``, either way."""
    if not others:
        return {}
    follow, block = Follow._meta.db_table, Block._meta.db_table
    rows = query(
        f"SELECT subject_did, 'following', uri FROM {follow} WHERE did = %s AND subject_did = ANY(%s)"
        f" UNION ALL SELECT did, 'followedBy', uri FROM {follow} WHERE subject_did = %s AND did = ANY(%s)"
        f" UNION ALL SELECT subject_did, 'blocking', uri FROM {block} WHERE did = %s AND subject_did = ANY(%s)"
        f" UNION ALL SELECT did, 'blockedBy', uri FROM {block} WHERE subject_did = %s AND did = ANY(%s)",
        [did, others] * 4)
    found: dict[str, dict[str, str]] = {}
    for other, kind, uri in rows:
        found.setdefault(other, {}).setdefault(kind, uri)
    return found
