"""Views of the read API built from rows, as the official AppView hydrates them: profiles, posts with
their embeds and counts, lists, feed generators, starter packs.

Every function here loads what a whole page needs at once: a page of any length costs the same few
queries (no N+1). Accounts that are deactivated, taken down, suspended or deleted are hidden: their
profiles and posts are left out (quoted, they show as not found), and what they liked, reposted, replied,
quoted or followed is taken out of the counts readers see.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from django.conf import settings
from django.db import connection
from django.utils import timezone

from appview.models import (
    HIDDEN_STATUSES,
    Actor,
    Block,
    FeedGenerator,
    HiddenShare,
    LabelerService,
    List,
    ListItem,
    Post,
    Postgate,
    Profile,
    StarterPack,
    Threadgate,
)
from protocol import syntax

SHARE = HiddenShare._meta.db_table
INVALID_HANDLE = "handle.invalid"
POST = Post._meta.db_table
ACTOR = Actor._meta.db_table
PROFILE = Profile._meta.db_table
_RECORD_EMBED = "app.bsky.embed.record"
_RECORD_WITH_MEDIA = "app.bsky.embed.recordWithMedia"
IMAGES_MAX = 4


def query(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def visible_sql(alias: str) -> str:
    """A condition on actor rows ``alias``: the account is shown to readers. (An inactive account always has
    one of the hidden statuses, so the status alone decides.)"""
    return f"{alias}.status NOT IN {HIDDEN_STATUSES!r}"


def hidden_sql(alias: str) -> str:
    """The opposite of ``visible_sql``, in the form the partial index on inactive actors answers."""
    return f"{alias}.status IN {HIDDEN_STATUSES!r}"


def image_url(preset: str, did: str, cid: str) -> str:
    return f"{settings.IMAGE_CDN_URL}/img/{preset}/plain/{did}/{cid}@jpeg"


def bounded_text(value: Any, *, max_bytes: int, max_graphemes: int | None = None) -> str | None:
    """A string field of a record as a view may carry it: a string, cut to the lexicon's bounds (records
    are stored as their repos sent them, limits or not). Cutting to ``max_graphemes`` code points keeps
    within as many graphemes."""
    if not isinstance(value, str):
        return None
    if max_graphemes is not None:
        value = value[:max_graphemes]
    encoded = value.encode()
    if len(encoded) > max_bytes:
        value = encoded[:max_bytes].decode(errors="ignore")
    return value


def _blob_cid(blob: Any) -> str | None:
    """The CID of a blob in the data model's JSON (``{"$type": "blob", "ref": {"$link": cid}}``, or the legacy
    ``{"cid": ...}`` form)."""
    if not isinstance(blob, dict):
        return None
    ref = blob.get("ref")
    cid = ref.get("$link") if isinstance(ref, dict) else blob.get("cid")
    return cid if syntax.is_cid(cid) else None


def did_of(uri: str) -> str:
    return uri[5:].split("/", 1)[0]


def gate_of(post_uri: str, collection: str) -> str:
    """The URI a threadgate or postgate of a post has: the post's repo and record key."""
    return f"at://{did_of(post_uri)}/{collection}/{post_uri.rsplit('/', 1)[-1]}"


def _collection_of(uri: str) -> str:
    parts = uri[5:].split("/")
    return parts[1] if len(parts) > 1 else ""


# -- Actors ----------------------------------------------------------------------------------------

@dataclass(slots=True)
class ActorRow:
    did: str
    handle: str | None
    visible: bool
    status: str
    display_name: str | None
    description: str | None
    avatar_cid: str | None
    banner_cid: str | None
    pinned: dict[str, str] | None
    created_at: str | None
    indexed_at: str | None
    followers: int
    follows: int
    posts: int

    def basic(self) -> dict[str, Any]:
        view: dict[str, Any] = {"did": self.did, "handle": self.handle or INVALID_HANDLE}
        if self.display_name:
            view["displayName"] = self.display_name
        if self.avatar_cid:
            view["avatar"] = image_url("avatar", self.did, self.avatar_cid)
        view["labels"] = []
        if self.created_at:
            view["createdAt"] = self.created_at
        return view

    def view(self) -> dict[str, Any]:
        view = self.basic()
        if self.description:
            view["description"] = self.description
        if self.indexed_at:
            view["indexedAt"] = self.indexed_at
        return view


ACTOR_COLUMNS = (
    f"a.did, a.handle, ({visible_sql('a')}), a.status, p.display_name, p.description, p.avatar_cid, p.banner_cid,"
    " p.raw -> 'pinnedPost', p.created_at, p.indexed_at, a.followers_count, a.follows_count, a.posts_count"
)
ACTOR_FROM = (f"{ACTOR} a LEFT JOIN {PROFILE} p"
              f" ON p.uri = 'at://' || a.did || '/{Profile.collection}/self'")


def _actor_row(row: tuple[Any, ...]) -> ActorRow:
    (did, handle, visible, status, display_name, description, avatar, banner, pinned, created_at, indexed_at,
     followers, follows, posts) = row
    pinned_ref = None
    if isinstance(pinned, str):
        pinned = orjson.loads(pinned)
    if isinstance(pinned, dict) and syntax.is_at_uri(pinned.get("uri")) and syntax.is_cid(pinned.get("cid")):
        pinned_ref = {"uri": pinned["uri"], "cid": pinned["cid"]}
    return ActorRow(did=did, handle=handle, visible=visible, status=status,
                    display_name=bounded_text(display_name, max_bytes=640, max_graphemes=64),
                    description=bounded_text(description, max_bytes=2560, max_graphemes=256),
                    avatar_cid=avatar, banner_cid=banner, pinned=pinned_ref,
                    created_at=iso(created_at), indexed_at=iso(indexed_at), followers=followers, follows=follows,
                    posts=posts)


def actors(dids: Iterable[str]) -> dict[str, ActorRow]:
    """Every known actor of ``dids`` (hidden ones included: callers decide), by DID; one query."""
    wanted = sorted(set(dids))
    if not wanted:
        return {}
    rows = query(f"SELECT {ACTOR_COLUMNS} FROM {ACTOR_FROM} WHERE a.did = ANY(%s)", [wanted])
    return {row[0]: _actor_row(row) for row in rows}


def actor_by_handle(handle: str) -> ActorRow | None:
    rows = query(f"SELECT {ACTOR_COLUMNS} FROM {ACTOR_FROM} WHERE a.handle = %s ORDER BY a.did LIMIT 1", [handle])
    return _actor_row(rows[0]) if rows else None


def profile_views(dids: Sequence[str], *, detailed: bool = False, basic: bool = False) -> dict[str, dict[str, Any]]:
    """Views of the visible actors among ``dids``: profileView (default), profileViewBasic or, with
    ``detailed``, profileViewDetailed (counts without hidden accounts' follows, what the actor created)."""
    rows = {did: row for did, row in actors(dids).items() if row.visible}
    if basic:
        return {did: row.basic() for did, row in rows.items()}
    if not detailed:
        return {did: row.view() for did, row in rows.items()}
    hidden = _hidden_follow_counts(list(rows))
    associated = _associated(list(rows))
    views = {}
    for did, row in rows.items():
        view = row.view()
        if row.banner_cid:
            view["banner"] = image_url("banner", did, row.banner_cid)
        hidden_followers, hidden_follows = hidden.get(did, (0, 0))
        view["followersCount"] = max(row.followers - hidden_followers, 0)
        view["followsCount"] = max(row.follows - hidden_follows, 0)
        view["postsCount"] = row.posts
        view["associated"] = associated.get(did, {"lists": 0, "feedgens": 0, "starterPacks": 0, "labeler": False})
        if row.pinned:
            view["pinnedPost"] = row.pinned
        views[did] = view
    return views


def _hidden_follow_counts(dids: list[str]) -> dict[str, tuple[int, int]]:
    """Per actor: follows of it by hidden accounts, and its follows of hidden accounts (``HiddenShare``)."""
    if not dids:
        return {}
    rows = query(f"SELECT key, followers_count, follows_count FROM {SHARE} WHERE key = ANY(%s)", [dids])
    return {did: (followers, follows) for did, followers, follows in rows}


def _associated(dids: list[str]) -> dict[str, dict[str, Any]]:
    """What each actor created: lists, feed generators, starter packs, a labeler service (one query)."""
    if not dids:
        return {}
    parts = " UNION ALL ".join(
        f"SELECT did, '{name}' AS kind, count(*) FROM {model._meta.db_table} WHERE did = ANY(%s) GROUP BY did"
        for name, model in (("lists", List), ("feedgens", FeedGenerator), ("starterPacks", StarterPack),
                            ("labeler", LabelerService))
    )
    result: dict[str, dict[str, Any]] = {did: {"lists": 0, "feedgens": 0, "starterPacks": 0, "labeler": False}
                                         for did in dids}
    for did, kind, n in query(parts, [dids] * 4):
        result[did][kind] = bool(n) if kind == "labeler" else n
    return result


# -- Posts -----------------------------------------------------------------------------------------

@dataclass(slots=True)
class PostRow:
    uri: str
    cid: str
    did: str
    record: dict[str, Any]
    indexed_at: str
    sort_at: datetime
    reply_root: str | None
    reply_parent: str | None
    likes: int
    reposts: int
    replies: int
    quotes: int


POST_COLUMNS = ("uri, cid, did, raw, indexed_at, sort_at, reply_root_uri, reply_parent_uri, like_count, repost_count,"
                " reply_count, quote_count")


def posts(uris: Iterable[str]) -> dict[str, PostRow]:
    wanted = sorted(set(uris))
    if not wanted:
        return {}
    rows = query(f"SELECT {POST_COLUMNS} FROM {POST} WHERE uri = ANY(%s)", [wanted])
    return {row[0]: PostRow(row[0], row[1], row[2], json_value(row[3]), iso(row[4]) or "", row[5], row[6], row[7],
                            row[8], row[9], row[10], row[11]) for row in rows}


def json_value(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _quoted_uri(record: dict[str, Any]) -> str | None:
    embed = record.get("embed")
    if not isinstance(embed, dict):
        return None
    target: Any = None
    if embed.get("$type") == _RECORD_EMBED:
        target = embed.get("record")
    elif embed.get("$type") == _RECORD_WITH_MEDIA:
        outer = embed.get("record")
        target = outer.get("record") if isinstance(outer, dict) else None
    uri = target.get("uri") if isinstance(target, dict) else None
    return uri if syntax.is_at_uri(uri) and uri.startswith("at://did:") else None


@dataclass(slots=True)
class PostHydration:
    """Everything a set of post views needs, loaded in a fixed number of queries."""

    posts: dict[str, PostRow] = field(default_factory=dict)
    actors: dict[str, ActorRow] = field(default_factory=dict)
    hidden_counts: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    detached: set[tuple[str, str]] = field(default_factory=set)  # (quoted, quoting) pairs a postgate detached
    blocked: set[frozenset[str]] = field(default_factory=set)  # pairs of DIDs where one blocks the other
    records: dict[str, tuple[str, str, dict[str, Any], str]] = field(default_factory=dict)  # other quoted records


def hydrate_posts(uris: Iterable[str], *, extra_dids: Iterable[str] = (), reply_refs: bool = False) -> PostHydration:
    """Loads the posts (with ``reply_refs``, their thread roots and parents too), what they quote (two
    levels, as the official AppView shows), every author and ``extra_dids``, the counts of hidden accounts,
    postgates and blocks between quoting and quoted authors."""
    found = posts(uris)
    if reply_refs:
        found.update(posts({uri for row in found.values() for uri in (row.reply_root, row.reply_parent)
                            if uri and uri not in found}))
    quoted: set[str] = set()
    for _level in range(2):
        wanted = set()
        for row in list(found.values()):
            uri = _quoted_uri(row.record)
            if uri is not None:
                quoted.add(uri)
                if uri not in found and _collection_of(uri) == Post.collection:
                    wanted.add(uri)
        if not wanted:
            break
        found.update(posts(wanted))
    hydration = PostHydration(posts=found)
    other = [uri for uri in quoted if _collection_of(uri) != Post.collection]
    hydration.records = _other_records(other)
    dids = {row.did for row in found.values()} | {did_of(uri) for uri in quoted} | set(extra_dids)
    dids |= {record[3] for record in hydration.records.values()}
    hydration.actors = actors(dids)
    hydration.hidden_counts = _hidden_post_counts(list(found))
    quoting_pairs = [(uri, row.uri) for row in found.values() if (uri := _quoted_uri(row.record))]
    hydration.detached = _detached(quoting_pairs)
    hydration.blocked = blocks_between([(row.did, did_of(uri)) for uri, row in
                                        ((_quoted_uri(r.record), r) for r in found.values()) if uri])
    return hydration


def _other_records(uris: list[str]) -> dict[str, tuple[str, str, dict[str, Any], str]]:
    """Quoted feed generators, lists, starter packs and labelers: uri -> (collection, cid, record, did)."""
    if not uris:
        return {}
    models = (FeedGenerator, List, StarterPack, LabelerService)
    sql = " UNION ALL ".join(f"SELECT uri, '{m.collection}', cid, raw, did FROM {m._meta.db_table} WHERE uri = ANY(%s)"
                             for m in models)
    return {uri: (collection, cid, json_value(raw), did) for uri, collection, cid, raw, did in query(sql, [uris] * 4)}


def _hidden_post_counts(uris: list[str]) -> dict[str, tuple[int, int, int, int]]:
    """Per post: likes, reposts, replies and quotes by hidden accounts (taken out of its counts), as the
    worker keeps them (``HiddenShare``): one lookup by key."""
    if not uris:
        return {}
    rows = query(f"SELECT key, like_count, repost_count, reply_count, quote_count FROM {SHARE} WHERE key = ANY(%s)",
                 [uris])
    return {uri: (likes, reposts, replies, quotes) for uri, likes, reposts, replies, quotes in rows}


def _detached(pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (quoted, quoting) pairs whose quoted post's postgate detached the quoting post."""
    quoted = sorted({uri for uri, _ in pairs if _collection_of(uri) == Post.collection})
    if not quoted:
        return set()
    gates = query(f"SELECT uri, post_uri, raw -> 'detachedEmbeddingUris' FROM {Postgate._meta.db_table}"
                  " WHERE post_uri = ANY(%s)", [quoted])
    detached_by = {}
    for gate_uri, post_uri, uris in gates:
        uris = json_value(uris)
        # A postgate counts only in the post's own repo, under the post's record key.
        if gate_uri == gate_of(post_uri, Postgate.collection) and isinstance(uris, list):
            detached_by[post_uri] = {u for u in uris if isinstance(u, str)}
    return {(q, quoting) for q, quoting in pairs if quoting in detached_by.get(q, ())}


def blocks_between(pairs: Iterable[tuple[str, str]]) -> set[frozenset[str]]:
    """Which of these pairs of DIDs have a block between them, in either direction (one query)."""
    wanted = {frozenset(pair) for pair in pairs if pair[0] != pair[1]}
    if not wanted:
        return set()
    firsts, seconds = [], []
    for pair in wanted:
        a, b = sorted(pair)
        firsts += [a, b]
        seconds += [b, a]
    rows = query(f"SELECT DISTINCT b.did, b.subject_did FROM {Block._meta.db_table} b"
                 " JOIN unnest(%s::text[], %s::text[]) AS p(did, subject)"
                 " ON b.did = p.did AND b.subject_did = p.subject", [firsts, seconds])
    return {frozenset(row) for row in rows}


def post_view(hydration: PostHydration, uri: str) -> dict[str, Any] | None:
    """The postView of ``uri``, or None when it is not indexed or its author is hidden."""
    row = hydration.posts.get(uri)
    if row is None:
        return None
    author = hydration.actors.get(row.did)
    if author is None or not author.visible:
        return None
    hidden = hydration.hidden_counts.get(uri, (0, 0, 0, 0))
    view: dict[str, Any] = {
        "uri": row.uri,
        "cid": row.cid,
        "author": author.basic(),
        "record": row.record,
    }
    embed = _embed_view(hydration, row, depth=0)
    if embed is not None:
        view["embed"] = embed
    view.update({
        "bookmarkCount": 0,
        "replyCount": max(row.replies - hidden[2], 0),
        "repostCount": max(row.reposts - hidden[1], 0),
        "likeCount": max(row.likes - hidden[0], 0),
        "quoteCount": max(row.quotes - hidden[3], 0),
        "indexedAt": row.indexed_at,
        "labels": [],
    })
    return view


def _embed_view(hydration: PostHydration, row: PostRow, *, depth: int) -> dict[str, Any] | None:
    embed = row.record.get("embed")
    if not isinstance(embed, dict):
        return None
    kind = embed.get("$type")
    if kind == _RECORD_EMBED:
        record = _record_view(hydration, row, embed.get("record"), depth)
        return None if record is None else {"$type": f"{_RECORD_EMBED}#view", "record": record}
    if kind == _RECORD_WITH_MEDIA:
        outer = embed.get("record")
        media = _media_view(row.did, embed.get("media"))
        record = _record_view(hydration, row, outer.get("record") if isinstance(outer, dict) else None, depth)
        if media is None or record is None:
            return media
        return {"$type": f"{_RECORD_WITH_MEDIA}#view", "record": {"$type": f"{_RECORD_EMBED}#view", "record": record},
                "media": media}
    return _media_view(row.did, embed)


def _media_view(did: str, embed: Any) -> dict[str, Any] | None:
    """images#view, external#view or video#view of an embed (None for anything else or a malformed one)."""
    if not isinstance(embed, dict):
        return None
    kind = embed.get("$type")
    if kind == "app.bsky.embed.images":
        images = []
        listed = embed.get("images")
        for image in listed if isinstance(listed, list) else ():
            cid = _blob_cid(image.get("image")) if isinstance(image, dict) else None
            if cid is None:
                continue
            view: dict[str, Any] = {"thumb": image_url("feed_thumbnail", did, cid),
                                    "fullsize": image_url("feed_fullsize", did, cid),
                                    "alt": image.get("alt") if isinstance(image.get("alt"), str) else ""}
            ratio = _aspect_ratio(image.get("aspectRatio"))
            if ratio:
                view["aspectRatio"] = ratio
            images.append(view)
        if not images:
            return None
        return {"$type": "app.bsky.embed.images#view", "images": images[:IMAGES_MAX]}
    if kind == "app.bsky.embed.external":
        external = embed.get("external")
        if not isinstance(external, dict) or not syntax.is_uri(external.get("uri")):
            return None
        view = {key: external.get(key) if isinstance(external.get(key), str) else ""
                for key in ("uri", "title", "description")}
        thumb = _blob_cid(external.get("thumb"))
        if thumb:
            view["thumb"] = image_url("feed_thumbnail", did, thumb)
        return {"$type": "app.bsky.embed.external#view", "external": view}
    if kind == "app.bsky.embed.video":
        cid = _blob_cid(embed.get("video"))
        if cid is None:
            return None
        view = {"$type": "app.bsky.embed.video#view", "cid": cid,
                "playlist": f"{settings.VIDEO_CDN_URL}/watch/{did}/{cid}/playlist.m3u8",
                "thumbnail": f"{settings.VIDEO_CDN_URL}/watch/{did}/{cid}/thumbnail.jpg"}
        alt = bounded_text(embed.get("alt"), max_bytes=10_000, max_graphemes=1000)
        if alt:
            view["alt"] = alt
        ratio = _aspect_ratio(embed.get("aspectRatio"))
        if ratio:
            view["aspectRatio"] = ratio
        return view
    return None


def _aspect_ratio(value: Any) -> dict[str, int] | None:
    if isinstance(value, dict):
        width, height = value.get("width"), value.get("height")
        if type(width) is int and type(height) is int and width > 0 and height > 0:
            return {"width": width, "height": height}
    return None


def _record_view(hydration: PostHydration, quoting: PostRow, ref: Any, depth: int) -> dict[str, Any] | None:
    """The view of a quoted record, or None when the quote names no valid AT-URI (nothing to show)."""
    uri = ref.get("uri") if isinstance(ref, dict) else None
    if not syntax.is_at_uri(uri) or not uri.startswith("at://did:"):
        return None
    not_found = {"$type": f"{_RECORD_EMBED}#viewNotFound", "uri": uri, "notFound": True}
    if (uri, quoting.uri) in hydration.detached:
        return {"$type": f"{_RECORD_EMBED}#viewDetached", "uri": uri, "detached": True}
    author = hydration.actors.get(did_of(uri))
    if author is None or not author.visible:
        return not_found
    if frozenset((quoting.did, author.did)) in hydration.blocked:
        return {"$type": f"{_RECORD_EMBED}#viewBlocked", "uri": uri, "blocked": True,
                "author": {"did": author.did}}
    if _collection_of(uri) != Post.collection:
        return _quoted_record_view(hydration, uri) or not_found
    row = hydration.posts.get(uri)
    if row is None:
        return not_found
    hidden = hydration.hidden_counts.get(uri, (0, 0, 0, 0))
    view: dict[str, Any] = {"$type": f"{_RECORD_EMBED}#viewRecord", "uri": row.uri, "cid": row.cid,
                            "author": author.basic(), "value": row.record, "labels": [],
                            "replyCount": max(row.replies - hidden[2], 0),
                            "repostCount": max(row.reposts - hidden[1], 0),
                            "likeCount": max(row.likes - hidden[0], 0),
                            "quoteCount": max(row.quotes - hidden[3], 0)}
    if depth == 0:
        inner = _embed_view(hydration, row, depth=1)
        if inner is not None:
            view["embeds"] = [inner]
    view["indexedAt"] = row.indexed_at
    return view


def _quoted_record_view(hydration: PostHydration, uri: str) -> dict[str, Any] | None:
    found = hydration.records.get(uri)
    if found is None:
        return None
    collection, cid, record, did = found
    creator = hydration.actors[did]
    if collection == FeedGenerator.collection:
        generator = generator_fields(uri, cid, record, creator)
        return None if generator is None else {"$type": "app.bsky.feed.defs#generatorView", **generator}
    if collection == List.collection:
        listed = list_fields(uri, cid, record, creator)
        return None if listed is None else {"$type": "app.bsky.graph.defs#listView", **listed}
    if collection == StarterPack.collection:
        return {"$type": "app.bsky.graph.defs#starterPackViewBasic", "uri": uri, "cid": cid, "record": record,
                "creator": creator.basic(), "labels": [], "indexedAt": creator.indexed_at or iso_now()}
    return {"$type": "app.bsky.labeler.defs#labelerView", "uri": uri, "cid": cid, "creator": creator.view(),
            "labels": [], "indexedAt": creator.indexed_at or iso_now()}


def iso_now() -> str:
    return iso(timezone.now()) or ""


def _add_description_and_avatar(view: dict[str, Any], record: dict[str, Any], did: str) -> None:
    """A feed generator's or a list's description and avatar, as their views show them."""
    description = bounded_text(record.get("description"), max_bytes=3000, max_graphemes=300)
    if description:
        view["description"] = description
    avatar = _blob_cid(record.get("avatar"))
    if avatar:
        view["avatar"] = image_url("avatar", did, avatar)


def generator_fields(uri: str, cid: str, record: dict[str, Any], creator: ActorRow,
                     indexed_at: str | None = None, likes: int = 0) -> dict[str, Any] | None:
    """The fields of a generatorView, or None for a record that names no valid service DID."""
    if not syntax.is_did(record.get("did")):
        return None
    view: dict[str, Any] = {"uri": uri, "cid": cid, "did": record["did"], "creator": creator.view(),
                            "displayName": bounded_text(record.get("displayName"), max_bytes=240,
                                                        max_graphemes=24) or ""}
    _add_description_and_avatar(view, record, creator.did)
    view.update({"likeCount": likes, "labels": [], "indexedAt": indexed_at or creator.indexed_at or iso_now()})
    return view


def list_fields(uri: str, cid: str, record: dict[str, Any], creator: ActorRow, indexed_at: str | None = None,
                items: int | None = None) -> dict[str, Any] | None:
    """The fields of a listView, or None for a record without a name or a purpose."""
    name = bounded_text(record.get("name"), max_bytes=64)
    purpose = record.get("purpose")
    if not name or not isinstance(purpose, str) or not purpose:
        return None
    view: dict[str, Any] = {"uri": uri, "cid": cid, "creator": creator.view(), "name": name, "purpose": purpose}
    _add_description_and_avatar(view, record, creator.did)
    if items is not None:
        view["listItemCount"] = items
    view.update({"labels": [], "indexedAt": indexed_at or creator.indexed_at or iso_now()})
    return view


def list_item_counts(uris: list[str]) -> dict[str, int]:
    if not uris:
        return {}
    rows = query(f"SELECT i.list_uri, count(*) FROM {ListItem._meta.db_table} i JOIN {ACTOR} a ON a.did = i.subject_did"
                 f" WHERE i.list_uri = ANY(%s) AND {visible_sql('a')} GROUP BY 1", [uris])
    return dict(rows)


def threadgate_view(uri: str) -> dict[str, Any] | None:
    """The threadgate of a root post (same repo and record key), as a threadgateView."""
    gate_uri = gate_of(uri, Threadgate.collection)
    rows = query(f"SELECT uri, cid, raw FROM {Threadgate._meta.db_table} WHERE uri = %s AND post_uri = %s",
                 [gate_uri, uri])
    if not rows:
        return None
    gate_uri, cid, raw = rows[0]
    return {"uri": gate_uri, "cid": cid, "record": json_value(raw), "lists": []}
