"""What the batch code needs to know of each record table: its typed columns and how to fill them."""

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.db import connection

from appview.indexing.sanitize import Fields, RecordError
from appview.models import Post, RepoRecord
from protocol import syntax

Extractor = Callable[[Fields], tuple[Any, ...]]

_POST_URI_PREFIX = "at://did:"
_POST_PATH = "/" + Post.collection + "/"

# The collections whose lexicon has the key "literal:self": a repo holds at most one such record, at rkey
# "self" (bluesky-social/atproto lexicons/; tests/test_worker_record_checks.py compares the two).
SELF_KEYED_COLLECTIONS = frozenset({
    "app.bsky.actor.contentVisibilityDeclaration",
    "app.bsky.actor.profile",
    "app.bsky.actor.status",
    "app.bsky.labeler.service",
    "app.bsky.notification.declaration",
    "chat.bsky.actor.declaration",
    "com.germnetwork.declaration",
})
SELF_KEY = "self"


def post_author(uri: str | None) -> str | None:
    """The DID of the repo holding a post URI (None when the URI is not a post's or names a handle)."""
    if uri is None or not uri.startswith(_POST_URI_PREFIX):
        return None
    authority, sep, rest = uri[5:].partition("/")
    if not sep or not ("/" + rest).startswith(_POST_PATH):
        return None
    return authority


def is_post_uri(value: object) -> bool:
    """Whether ``value`` is a valid AT-URI of an app.bsky.feed.post record in a repo named by its DID."""
    return isinstance(value, str) and syntax.is_at_uri(value) and post_author(value) is not None


def own_post_uri(did: str, rkey: str) -> str:
    """The URI of the post that a record of ``did`` under ``rkey`` belongs to (a threadgate's, a postgate's)."""
    return f"at://{did}{_POST_PATH}{rkey}"


def check_record_key(collection: str, rkey: str) -> None:
    """Raises RecordError for a record of a self-keyed collection under any other key (a second profile)."""
    if rkey != SELF_KEY and collection in SELF_KEYED_COLLECTIONS:
        raise RecordError(f"{collection} records have the key {SELF_KEY!r}, not {rkey[:100]!r}")


@dataclass(frozen=True, slots=True)
class TableSpec:
    model: type[RepoRecord]
    # The model's fields that the extractor fills, in its order.
    fields: tuple[str, ...]
    extract: Extractor
    # Columns holding DIDs that must get an actor row (so that counts about them have a home).
    did_columns: tuple[str, ...] = ()
    # Columns holding post URIs whose authors must get an actor row (it holds the lock of the post's counts).
    post_columns: tuple[str, ...] = ()
    created_at_required: bool = True
    # A column that must hold the URI of the post with the record's own repo and rkey: the lexicon ties a
    # threadgate or a postgate to its post that way, so one naming another post would gate what it does not own.
    own_post_column: str | None = None

    @property
    def table(self) -> str:
        return self.model._meta.db_table

    @property
    def collection(self) -> str:
        return self.model.collection

    @property
    def columns(self) -> tuple[tuple[str, str], ...]:
        """(column, PostgreSQL type) of each field the extractor fills, in its order."""
        return _typed_columns(self.model, self.fields)

    def index(self, column: str) -> int:
        return _column_positions(self.fields)[column]

    def check_owner(self, did: str, rkey: str, values: tuple[Any, ...]) -> None:
        """Raises RecordError when the record names another post than its own (``own_post_column``)."""
        if self.own_post_column is not None and values[self.index(self.own_post_column)] != own_post_uri(did, rkey):
            raise RecordError(f"{self.own_post_column} is not the post at the record's own repo and rkey")


@cache
def _typed_columns(model: type[RepoRecord], fields: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((model._meta.get_field(name).column, model._meta.get_field(name).db_type(connection))
                 for name in fields)


@cache
def _column_positions(fields: tuple[str, ...]) -> dict[str, int]:
    return {name: position for position, name in enumerate(fields)}
