"""What the batch code needs to know of each record table: its typed columns and how to fill them."""

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.db import connection

from appview.indexing.sanitize import Fields
from appview.models import Post, RepoRecord

Extractor = Callable[[Fields], tuple[Any, ...]]

_POST_URI_PREFIX = "at://did:"
_POST_PATH = "/" + Post.collection + "/"


def post_author(uri: str | None) -> str | None:
    """The DID of the repo holding a post URI (None when the URI is not a post's or names a handle)."""
    if uri is None or not uri.startswith(_POST_URI_PREFIX):
        return None
    authority, sep, rest = uri[5:].partition("/")
    if not sep or not ("/" + rest).startswith(_POST_PATH):
        return None
    return authority


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


@cache
def _typed_columns(model: type[RepoRecord], fields: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((model._meta.get_field(name).column, model._meta.get_field(name).db_type(connection))
                 for name in fields)


@cache
def _column_positions(fields: tuple[str, ...]) -> dict[str, int]:
    return {name: position for position, name in enumerate(fields)}
