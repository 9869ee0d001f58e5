"""Typed columns of the records about an actor: profile, status, declarations, labeler service."""

from typing import Any

from appview import models
from appview.indexing.sanitize import Fields
from appview.indexing.tables import TableSpec

DISPLAY_NAME_MAX = 640
DESCRIPTION_MAX = 2560
TOKEN_MAX = 256
# Lexicon: durationMinutes is a positive integer; PostgreSQL integer bounds the rest.
DURATION_MAX = 2**31 - 1


def _profile(f: Fields) -> tuple[Any, ...]:
    pinned = f.record.get("pinnedPost")
    pinned_uri, _ = f.strong_ref(pinned)
    return (
        f.text("displayName", DISPLAY_NAME_MAX),
        f.text("description", DESCRIPTION_MAX),
        f.blob_cid("avatar"),
        f.blob_cid("banner"),
        pinned_uri,
    )


def _status(f: Fields) -> tuple[Any, ...]:
    return f.text("status", TOKEN_MAX, required=True) or "", f.integer("durationMinutes", 1, DURATION_MAX)


def _labeler(f: Fields) -> tuple[Any, ...]:
    return ()


def _notification_declaration(f: Fields) -> tuple[Any, ...]:
    return (f.text("allowSubscriptions", TOKEN_MAX, required=True) or "",)


def _chat_declaration(f: Fields) -> tuple[Any, ...]:
    return (f.text("allowIncoming", TOKEN_MAX, required=True) or "",)


TABLES = (
    TableSpec(
        models.Profile,
        ("display_name", "description", "avatar_cid", "banner_cid", "pinned_post_uri"),
        _profile,
        created_at_required=False,
    ),
    TableSpec(models.ActorStatusRecord, ("status", "duration_minutes"), _status),
    TableSpec(models.LabelerService, (), _labeler),
    TableSpec(models.NotificationDeclaration, ("allow_subscriptions",), _notification_declaration,
              created_at_required=False),
    TableSpec(models.ChatDeclaration, ("allow_incoming",), _chat_declaration, created_at_required=False),
)
