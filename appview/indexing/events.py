"""Turns entries of firehose:events into what a batch applies: record writes with their typed columns,
and actor changes. Parsing never raises: a bad frame, event or record is counted in ``errors`` and
leaves out only what it spoils. A commit that breaks the sync protocol (``sync_problem``) is applied not
at all: its repo is queued for resync, which brings the repository's true state.
"""

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import libipld
from django.conf import settings

from appview.indexing.collection_filter import is_stored
from appview.indexing.collections import TABLE_BY_COLLECTION
from appview.indexing.sanitize import Fields, RecordError, record_json
from appview.indexing.tables import TableSpec, check_record_key, post_author
from protocol import syntax
from protocol.commit import RecordOp, commit_ops, commit_spans
from protocol.dagcbor import decode_record
from protocol.frames import Frame, FrameError, decode_frame, event_of
from protocol.repo import SignedCommit, SyncError, verify_commit_event

logger = logging.getLogger(__name__)

STATUS_MAX = 64
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


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
    rev: str  # the commit's: writes of a URI apply in rev order
    cid: str = ""
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
    filtered: int = 0  # record writes of collections COLLECTION_FILTERS leaves out
    writes: list[RecordWrite] = field(default_factory=list)
    dids: set[str] = field(default_factory=set)  # every DID the event names, for actor rows
    # Where an #account event stands among those of its repo: its time, then its seq (for events of one relay
    # with the same time), as text that sorts in that order. A relay switch cannot roll state back.
    position: str = ""
    rev: str | None = None  # #commit and #sync: the repo's rev after the event
    since: str | None = None  # #commit: the rev it follows
    sync_problem: str | None = None  # why the commit is not applied and its repo is to be resynced
    signed: SignedCommit | None = None  # a verified commit whose signature is still to be checked
    identity_changed: bool = False  # #identity: the DID document is to be resolved again
    account: tuple[bool, str] | None = None  # #account: (active, status)
    purge_rev: str = ""  # #account deleted: the TID of its time (records older than it are the account's)
    out_of_scope: bool = False  # of a repository live indexing does not follow (LIVE_SCOPE): skipped

    @property
    def usable(self) -> bool:
        return bool(self.did)


def parse_entry(entry_id: bytes, fields: dict[bytes, bytes], *, verify: bool = False) -> ParsedEvent:
    """``verify``: check each commit as Sync v1.1 says (CIDs, blocks, the signed commit, the MST inversion);
    its signature is checked later, for the whole batch, once the keys are known (``signed``)."""
    event, frame = read_entry(entry_id, fields)
    if frame is not None:
        parse_body(event, frame, verify=verify)
    return event


def read_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> tuple[ParsedEvent, Frame | None]:
    """The event with only its type, seq and DID read, and its frame (None when the frame is unusable: the
    event counts an error). ``parse_body`` reads the rest: a worker that follows only some repositories parses
    no more of the others' events than this."""
    entry_type = fields.get(b"t", b"").decode("utf-8", "replace")[:32]
    event = ParsedEvent(entry_id=entry_id, fields=fields, type=entry_type)
    try:
        frame = decode_frame(fields.get(b"frame", b""))
        header = event_of(frame)
    except FrameError as exc:
        logger.warning("entry %s: %s", entry_id.decode(), exc)
        event.errors = 1
        return event, None
    event.type, event.seq, event.did = header.type, header.seq, header.did
    event.dids.add(header.did)
    return event, frame


def parse_body(event: ParsedEvent, frame: Frame, *, verify: bool) -> None:
    """Reads the body of an event ``read_entry`` read the header of (see ``parse_entry``)."""
    body = frame.body
    try:
        if event.type == "#commit":
            _commit(event, body, verify=verify)
        elif event.type == "#identity":
            _identity(event, body)
        elif event.type == "#account":
            _account(event, body)
        else:
            _sync(event, body)
    except FrameError as exc:
        logger.warning("%s seq %d: %s", event.type, event.seq, exc)
        event.errors += 1


def writes_collection(frame: Frame, collection: str) -> bool:
    """Whether the event is a commit that creates or updates a record of ``collection``."""
    ops = frame.body.get("ops") if frame.type == "#commit" else None
    if type(ops) is not list:
        return False
    prefix = collection + "/"
    return any(type(op) is dict and op.get("action") in ("create", "update") and type(op.get("path")) is str
               and op["path"].startswith(prefix) for op in ops)


def _commit(event: ParsedEvent, body: dict[str, Any], *, verify: bool) -> None:
    rev, since = body.get("rev"), body.get("since")
    if not syntax.is_tid(rev):
        event.sync_problem = "rev-mismatch"
        return
    event.rev = rev
    event.since = since if syntax.is_tid(since) else None
    if body.get("tooBig") is True:
        event.sync_problem = "too-big"
        return
    try:
        spans = commit_spans(body)
        if verify:
            event.signed = verify_commit_event(body, spans, None)
        ops = commit_ops(body, spans)
    except SyncError as exc:  # a CommitError too
        logger.warning("#commit seq %d of %s not applied: %s: %s", event.seq, event.did, exc.reason, exc)
        event.sync_problem = exc.reason
        return
    for order, op in enumerate(ops):
        write, errors = record_write(event.did, op, rev=rev, seq=event.seq, order=order)
        event.errors += errors
        if write is not None:
            event.writes.append(write)
            event.dids.update(named_dids(write))
        elif not errors:
            event.filtered += 1


def record_write(did: str, op: RecordOp, *, rev: str, seq: int, order: int) -> tuple[RecordWrite | None, int]:
    """The write of one record op of ``did``'s repo, and the errors found in its record: (None, 1) when the
    record is refused, (write, 1) when it is stored sanitised, (None, 0) when its collection is not stored
    (``COLLECTION_FILTERS``). Never raises."""
    if not is_stored(op.collection, settings.COLLECTION_FILTERS):
        return None, 0
    uri = op.uri(did)
    write = RecordWrite(uri=uri, did=did, collection=op.collection, rkey=op.rkey, seq=seq, order=order,
                        spec=TABLE_BY_COLLECTION.get(op.collection), rev=rev)
    if op.action == "delete":
        return write, 0
    try:
        bad = _fill(write, op.record or {}, op.cid or "")
    except RecordError as exc:
        logger.debug("%s skipped: %s", uri, exc)
        return None, 1
    except Exception:
        logger.exception("%s skipped: its record broke the extractor", uri)
        return None, 1
    return write, int(bad)


def stored_record_op(collection: str, rkey: str, cid: bytes, block: bytes) -> RecordOp | None:
    """A record a repository holds, as the op that creates it; None when its block is no DAG-CBOR map (the
    record is refused)."""
    try:
        record = decode_record(block)
    except (ValueError, RecursionError, OverflowError):
        return None
    if not isinstance(record, dict):
        return None
    return RecordOp(action="create", collection=collection, rkey=rkey, cid=libipld.encode_cid(cid), record=record)


def named_dids(write: RecordWrite) -> Iterator[str]:
    """The DIDs a stored record names (subjects, post authors): each gets an actor row."""
    spec = write.spec
    if spec is None or write.values is None:
        return
    for column in spec.did_columns:
        yield write.values[spec.index(column)]
    for column in spec.post_columns:
        author = post_author(write.values[spec.index(column)])
        if author is not None:
            yield author


def _fill(write: RecordWrite, record: dict[str, Any], cid: str) -> bool:
    """Fills the write from its record; True when the record was stored sanitised."""
    check_record_key(write.collection, write.rkey)
    fields = Fields(record)
    spec = write.spec
    if spec is not None:
        record_type = record.get("$type")
        if record_type is not None and record_type != write.collection:
            raise RecordError(f"$type {str(record_type)[:100]!r} is not the collection")
        fields.bad = record_type is None
        write.values = spec.extract(fields)
        spec.check_owner(write.did, write.rkey, write.values)
        write.created_at = fields.created_at(required=spec.created_at_required)
    else:
        write.values = ()
        write.created_at = fields.created_at(required=False)
    write.cid = cid
    write.raw, altered = record_json(record)
    return fields.bad or altered


def _identity(event: ParsedEvent, body: dict[str, Any]) -> None:
    # The handle in the event is a hint: the DID document is the authority, resolved again by the worker.
    event.identity_changed = True


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
    time = _microseconds(body.get("time"))
    event.position = f"{time:017d}.{event.seq:020d}"
    if event.account[1] == "deleted":
        event.purge_rev = syntax.tid_of(time)


def _sync(event: ParsedEvent, body: dict[str, Any]) -> None:
    rev = body.get("rev")
    if syntax.is_tid(rev):
        event.rev = rev
    else:
        event.errors += 1


def _microseconds(value: object) -> int:
    """An event's ``time`` in microseconds since the epoch; 0 when it is missing, not a datetime or before 1970."""
    parsed = syntax.parse_datetime(value)
    return max((parsed - _EPOCH) // _MICROSECOND, 0) if parsed is not None else 0
