"""Typed columns of the app.bsky.feed.* records."""

from typing import Any

from appview import models
from appview.indexing.sanitize import Fields, RecordError
from appview.indexing.tables import TableSpec, is_post_uri
from protocol import syntax

# Lexicon bounds (in bytes, so at most as many characters): post text 3000, descriptions 3000 (feed
# generator) and names 640 bytes; anything longer is invalid and is stored truncated.
POST_TEXT_MAX = 3000
NAME_MAX = 640
DESCRIPTION_MAX = 3000
TYPE_MAX = 256
MAX_LANGS = 3


def _post(f: Fields) -> tuple[Any, ...]:
    text = f.text("text", POST_TEXT_MAX, required=True) or ""
    langs = _langs(f)
    root_uri = parent_uri = None
    reply = f.record.get("reply")
    if reply is not None:
        # A reply whose thread cannot be placed is refused: stored without it, it would show as a top-level post.
        if not isinstance(reply, dict):
            raise RecordError("reply is not an object")
        root_uri = _post_ref(reply.get("root"), "reply.root")
        parent_uri = _post_ref(reply.get("parent"), "reply.parent")
    embed_type, quote_uri = _embed(f)
    return text, langs, root_uri, parent_uri, quote_uri, embed_type


def _post_ref(value: Any, name: str) -> str:
    """The URI of a com.atproto.repo.strongRef to a post (its repo named by DID, its CID valid)."""
    if not isinstance(value, dict) or not is_post_uri(value.get("uri")) or not syntax.is_cid(value.get("cid")):
        raise RecordError(f"{name} is not a strong reference to a post")
    return value["uri"]


def _langs(f: Fields) -> list[str]:
    value = f.record.get("langs")
    if value is None:
        return []
    if not isinstance(value, list):
        f.bad = True
        return []
    langs = [lang for lang in value if syntax.is_language(lang)]
    if len(langs) != len(value) or len(langs) > MAX_LANGS:
        f.bad = True
    return langs[:MAX_LANGS]


def _embed(f: Fields) -> tuple[str | None, str | None]:
    """The embed's $type, and the URI of the record it quotes (embed.record or recordWithMedia)."""
    embed = f.record.get("embed")
    if embed is None:
        return None, None
    embed_type = embed.get("$type") if isinstance(embed, dict) else None
    if not isinstance(embed_type, str) or not embed_type or len(embed_type) > TYPE_MAX or "\x00" in embed_type:
        f.bad = True
        return None, None
    quoted: Any = None
    if embed_type == "app.bsky.embed.record":
        quoted = embed.get("record")
    elif embed_type == "app.bsky.embed.recordWithMedia":
        outer = embed.get("record")
        quoted = outer.get("record") if isinstance(outer, dict) else None
        if quoted is None:
            f.bad = True
    if quoted is None:
        return embed_type, None
    uri, _ = f.strong_ref(quoted)
    if uri is None:
        f.bad = True
    return embed_type, uri


def _subject(f: Fields) -> tuple[Any, ...]:
    subject = f.record.get("subject")
    uri, cid = f.strong_ref(subject)
    if uri is None:
        raise RecordError("subject is not a strong reference with a valid AT-URI")
    return uri, cid


def _generator(f: Fields) -> tuple[Any, ...]:
    service = f.record.get("did")
    if not syntax.is_did(service):
        f.bad = True
        service = ""
    display_name = f.text("displayName", NAME_MAX, required=True) or ""
    return service, display_name, f.text("description", DESCRIPTION_MAX)


def _gate(f: Fields) -> tuple[Any, ...]:
    post = f.record.get("post")
    if not is_post_uri(post):
        raise RecordError("post is not the AT-URI of a post")
    return (post,)


TABLES = (
    TableSpec(
        models.Post,
        ("text", "langs", "reply_root_uri", "reply_parent_uri", "quote_uri", "embed_type"),
        _post,
        post_columns=("reply_parent_uri", "quote_uri"),
    ),
    TableSpec(models.Like, ("subject_uri", "subject_cid"), _subject, post_columns=("subject_uri",)),
    TableSpec(models.Repost, ("subject_uri", "subject_cid"), _subject, post_columns=("subject_uri",)),
    TableSpec(models.FeedGenerator, ("service_did", "display_name", "description"), _generator),
    TableSpec(models.Threadgate, ("post_uri",), _gate, own_post_column="post_uri"),
    TableSpec(models.Postgate, ("post_uri",), _gate, own_post_column="post_uri"),
)
