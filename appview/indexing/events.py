"""Turns entries of firehose:events into what a batch applies: record writes with their typed columns,
and actor changes. Parsing never raises: a bad frame, event or record is counted in ``errors`` and
leaves out only what it spoils.
"""

import logging
from dataclasses import dataclass, field
from typing import Any

from appview.indexing.collections import TABLE_BY_COLLECTION
from appview.indexing.sanitize import Fields, RecordError, record_json
from appview.indexing.tables import TableSpec, post_author
from protocol import syntax
from protocol.commit import commit_ops
from protocol.frames import FrameError, decode_frame, event_of

logger = logging.getLogger(__name__)

STATUS_MAX = 64


@dataclass(slots=True)
class RecordWrite:
    """One record operation; ``values`` is None for a delete."""

    uri: str
    did: str
    collection: str
    rkey: str
    seq: int
    order: int  # position of the op in its commit: the later of two ops on one URI in one commit wins
    spec: TableSpec | None  # None: the generic table
    cid: str = ""
    rev: str = ""
    created_at: str | None = None  # ISO 8601
    raw: str = ""
    values: tuple[Any, ...] | None = None

    @property
    def is_delete(self) -> bool:
        return self.values is None


@dataclass(slots=True)
class ParsedEvent:
    entry_id: bytes
    fields: dict[bytes, bytes]
    type: str  # the frame's type, or the entry's t field when the frame is unusable
    seq: int = 0
    did: str = ""
    errors: int = 0
    writes: list[RecordWrite] = field(default_factory=list)
    dids: set[str] = field(default_factory=set)  # every DID the event names, for actor rows
    handle: str | None = None  # #identity with a valid handle (lowercased)
    account: tuple[bool, str] | None = None  # #account: (active, status)
    sync_rev: str | None = None  # #sync

    @property
    def usable(self) -> bool:
        return bool(self.did)


def parse_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> ParsedEvent:
    entry_type = fields.get(b"t", b"").decode("utf-8", "replace")[:32]
    event = ParsedEvent(entry_id=entry_id, fields=fields, type=entry_type)
    try:
        frame = decode_frame(fields.get(b"frame", b""))
        header = event_of(frame)
    except FrameError as exc:
        logger.warning("entry %s: %s", entry_id.decode(), exc)
        event.errors = 1
        return event
    event.type, event.seq, event.did = header.type, header.seq, header.did
    event.dids.add(header.did)
    body = frame.body
    try:
        if header.type == "#commit":
            _commit(event, body)
        elif header.type == "#identity":
            _identity(event, body)
        elif header.type == "#account":
            _account(event, body)
        else:
            _sync(event, body)
    except FrameError as exc:
        logger.warning("%s seq %d: %s", header.type, header.seq, exc)
        event.errors += 1
    return event


def _commit(event: ParsedEvent, body: dict[str, Any]) -> None:
    rev = body.get("rev")
    if not syntax.is_tid(rev):
        event.errors += 1
        rev = ""
    for order, op in enumerate(commit_ops(body)):
        uri = op.uri(event.did)
        spec = TABLE_BY_COLLECTION.get(op.collection)
        write = RecordWrite(uri=uri, did=event.did, collection=op.collection, rkey=op.rkey, seq=event.seq,
                            order=order, spec=spec, rev=rev)
        if op.action == "delete":
            event.writes.append(write)
            continue
        try:
            bad = _fill(write, op.record or {}, op.cid or "")
        except RecordError as exc:
            logger.debug("seq %d %s skipped: %s", event.seq, uri, exc)
            event.errors += 1
            continue
        except Exception:
            logger.exception("seq %d %s skipped: its record broke the extractor", event.seq, uri)
            event.errors += 1
            continue
        event.errors += bad
        event.writes.append(write)
        if spec is not None:
            for column in spec.did_columns:
                event.dids.add(write.values[spec.index(column)])  # type: ignore[index]
            for column in spec.post_columns:
                author = post_author(write.values[spec.index(column)])  # type: ignore[index]
                if author is not None:
                    event.dids.add(author)


def _fill(write: RecordWrite, record: dict[str, Any], cid: str) -> bool:
    """Fills the write from its record; True when the record was stored sanitised."""
    fields = Fields(record)
    spec = write.spec
    if spec is not None:
        record_type = record.get("$type")
        if record_type is not None and record_type != write.collection:
            raise RecordError(f"$type {str(record_type)[:100]!r} is not the collection")
        fields.bad = record_type is None
        write.values = spec.extract(fields)
        write.created_at = fields.timestamp("createdAt", required=spec.created_at_required)
    else:
        write.values = ()
        write.created_at = fields.timestamp("createdAt", required=False)
    write.cid = cid
    write.raw, altered = record_json(record)
    return fields.bad or altered


def _identity(event: ParsedEvent, body: dict[str, Any]) -> None:
    handle = body.get("handle")
    if handle is None:
        return
    if syntax.is_handle(handle):
        event.handle = handle.lower()
    else:
        event.errors += 1


def _account(event: ParsedEvent, body: dict[str, Any]) -> None:
    active = body.get("active")
    if type(active) is not bool:
        event.errors += 1
        return
    status = body.get("status")
    if active:
        status = "active"
    elif not (isinstance(status, str) and 0 < len(status) <= STATUS_MAX and status.isascii() and status.isalpha()):
        # An inactive account without a usable status is still inactive.
        event.errors += status is not None
        status = "deactivated"
    event.account = (active, status.lower())


def _sync(event: ParsedEvent, body: dict[str, Any]) -> None:
    rev = body.get("rev")
    if syntax.is_tid(rev):
        event.sync_rev = rev
    else:
        event.errors += 1
