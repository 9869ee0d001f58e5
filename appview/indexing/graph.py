"""Typed columns of the app.bsky.graph.* records."""

from typing import Any

from appview import models
from appview.indexing.sanitize import Fields, RecordError
from appview.indexing.tables import TableSpec
from protocol import syntax

NAME_MAX = 640
DESCRIPTION_MAX = 3000
TOKEN_MAX = 256


def _did_subject(f: Fields) -> tuple[Any, ...]:
    subject = f.record.get("subject")
    if not syntax.is_did(subject):
        raise RecordError("subject is not a valid DID")
    return (subject,)


def _list(f: Fields) -> tuple[Any, ...]:
    return (
        f.text("name", NAME_MAX, required=True) or "",
        f.text("purpose", TOKEN_MAX, required=True) or "",
        f.text("description", DESCRIPTION_MAX),
    )


def _list_item(f: Fields) -> tuple[Any, ...]:
    list_uri = f.record.get("list")
    if not syntax.is_at_uri(list_uri):
        raise RecordError("list is not a valid AT-URI")
    return list_uri, *_did_subject(f)


def _list_block(f: Fields) -> tuple[Any, ...]:
    subject = f.record.get("subject")
    if not syntax.is_at_uri(subject):
        raise RecordError("subject is not a valid AT-URI")
    return (subject,)


def _starter_pack(f: Fields) -> tuple[Any, ...]:
    list_uri = f.at_uri(f.record.get("list")) or ""
    if not list_uri:
        f.bad = True
    return f.text("name", NAME_MAX, required=True) or "", list_uri


def _verification(f: Fields) -> tuple[Any, ...]:
    (subject,) = _did_subject(f)
    handle = f.record.get("handle")
    if syntax.is_handle(handle):
        handle = handle.lower()
    else:
        f.bad = True
        handle = ""
    return subject, handle, f.text("displayName", NAME_MAX, required=True) or ""


TABLES = (
    TableSpec(models.Follow, ("subject_did",), _did_subject, did_columns=("subject_did",)),
    TableSpec(models.Block, ("subject_did",), _did_subject, did_columns=("subject_did",)),
    TableSpec(models.List, ("name", "purpose", "description"), _list),
    TableSpec(models.ListItem, ("list_uri", "subject_did"), _list_item, did_columns=("subject_did",)),
    TableSpec(models.ListBlock, ("subject_uri",), _list_block),
    TableSpec(models.StarterPack, ("name", "list_uri"), _starter_pack),
    TableSpec(models.Verification, ("subject_did", "handle", "display_name"), _verification,
              did_columns=("subject_did",)),
)
