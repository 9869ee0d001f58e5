"""One DID resolved over the network: its document fetched and checked, its handle confirmed.

did:plc documents come from ``{PLC_URL}/{did}``, did:web ones from ``https://<host>/.well-known/did.json``
(a did:web with a port or a path is refused). The document must be a JSON object of at most 64 KB whose
``id`` is the DID and whose DID Core fields have their types. The handle it names (``alsoKnownAs``) counts only
when the handle's domain points back at the DID: a TXT record ``_atproto.<handle>`` holding ``did=<did>``, or
else ``https://<handle>/.well-known/atproto-did`` answering the DID.
"""

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dns.exception
import dns.nameserver
import dns.resolver
from django.conf import settings

from identity.outbound import Outbound, OutboundError, is_public_hostname
from protocol.crypto import PublicKey, atproto_signing_key, handle_of, pds_endpoint

INVALID_HANDLE = "handle.invalid"
DOCUMENT_MAX_BYTES = 64 * 1024
ATPROTO_DID_MAX_BYTES = 2048
PLC_DID = re.compile(r"did:plc:[a-z2-7]{24}")
WEB_DID_PREFIX = "did:web:"
# The answer for this DID is known and final until it expires; any other failure may pass on a retry.
DEFINITIVE_REASONS = frozenset({"not-found", "invalid-document"})
# The DID Core members we read, and the type each must have when present.
LIST_MEMBERS = ("alsoKnownAs", "verificationMethod", "service")


class IdentityError(Exception):
    """A DID that could not be resolved. ``reason``: "not-found" (unknown, tombstoned or unsupported),
    "invalid-document", "timeout", "unavailable" or "backing-off" (a host or this DID is waiting out failures
    or a rate limit)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Identity:
    did: str
    handle: str | None  # confirmed, INVALID_HANDLE when the one named did not confirm, None when none is named
    signing_key: PublicKey | None  # the #atproto key; None when the document has no usable one
    pds: str | None
    fetched_at: datetime
    document: dict[str, Any]  # empty when served from the in-process cache (PostgreSQL keeps the whole document)


def check_did(did: str) -> None:
    """IdentityError("not-found") for a DID this resolver cannot resolve."""
    if not isinstance(did, str) or not (PLC_DID.fullmatch(did) or _web_host(did)):
        raise IdentityError("not-found", f"not a resolvable did:plc or did:web: {str(did)[:100]!r}")


def _web_host(did: str) -> str | None:
    """The host of a did:web without port or path (``%3A`` and ``:`` in the identifier), else None."""
    if not did.startswith(WEB_DID_PREFIX):
        return None
    host = did[len(WEB_DID_PREFIX):]
    return host if is_public_hostname(host) or host.lower() in settings.IDENTITY_HOST_OVERRIDES else None


def fetch_document(did: str, client: Outbound) -> dict[str, Any]:
    """The checked DID document of ``did``; IdentityError otherwise."""
    check_did(did)
    web_host = _web_host(did)
    if web_host is None:
        url, trusted = f"{settings.PLC_URL}/{did}", True
    else:
        url, trusted = f"https://{web_host}/.well-known/did.json", False
    try:
        document = client.get_json_object(url, max_bytes=DOCUMENT_MAX_BYTES, trusted=trusted)
    except OutboundError as exc:
        raise _identity_error(did, exc) from None
    problem = document_problem(did, document)
    if problem:
        raise IdentityError("invalid-document", f"{did}: {problem}")
    return document


def _identity_error(did: str, exc: OutboundError) -> IdentityError:
    if exc.reason == "not-found":
        gone = " (tombstoned)" if exc.status == 410 else ""
        return IdentityError("not-found", f"{did}: no DID document{gone}: {exc.message}")
    if exc.reason in ("too-large", "invalid-json", "refused"):
        return IdentityError("invalid-document", f"{did}: {exc.message}")
    return IdentityError(exc.reason, f"{did}: {exc.message}")


def document_problem(did: str, document: dict[str, Any]) -> str | None:
    """What makes ``document`` unusable as the DID document of ``did``, or None."""
    if document.get("id") != did:
        return f"its id is {str(document.get('id'))[:100]!r}, not the DID"
    for member in LIST_MEMBERS:
        if member in document and not isinstance(document[member], list):
            return f"{member} is not a list"
    if not all(isinstance(alias, str) for alias in document.get("alsoKnownAs", [])):
        return "alsoKnownAs holds a value that is not a string"
    for member in ("verificationMethod", "service"):
        if not all(isinstance(entry, dict) for entry in document.get(member, [])):
            return f"{member} holds a value that is not an object"
    return None


def resolve_from_network(did: str, client: Outbound, *,
                         on_key: Callable[[PublicKey | None], None] | None = None) -> Identity:
    """The identity of ``did``, fetched now. ``on_key`` gets the signing key as soon as the document is
    checked, before the handle is confirmed (which can take two timeouts)."""
    document = fetch_document(did, client)
    signing_key = atproto_signing_key(document, did)
    if on_key is not None:
        on_key(signing_key)
    return Identity(did=did, handle=confirmed_handle(document, did, client), signing_key=signing_key,
                    pds=pds_endpoint(document), fetched_at=datetime.now(UTC), document=document)


def confirmed_handle(document: dict[str, Any], did: str, client: Outbound) -> str | None:
    """The handle ``document`` names if its domain confirms it, INVALID_HANDLE if not, None if it names none."""
    claimed = handle_of(document)
    if claimed is None:
        return None
    return claimed if confirm_handle(claimed, did, client) else INVALID_HANDLE


def confirm_handle(handle: str, did: str, client: Outbound) -> bool:
    """Whether ``handle``'s domain names ``did``: by DNS when it has a TXT answer, else over HTTPS."""
    if handle == INVALID_HANDLE or not (is_public_hostname(handle) or handle in settings.IDENTITY_HOST_OVERRIDES):
        return False
    named = did_in_dns(handle)
    if named is None:
        named = did_over_https(handle, client)
    return named == did


def did_in_dns(handle: str) -> str | None:
    """The DID of the one ``did=`` TXT record of ``_atproto.<handle>``; None when there is none, several or
    the lookup failed."""
    try:
        answer = shared_dns_resolver().resolve(f"_atproto.{handle}.", "TXT", raise_on_no_answer=False)
    except dns.exception.DNSException:
        return None
    values = [b"".join(record.strings).decode("ascii", "replace") for record in answer]
    dids = [value[len("did="):] for value in values if value.startswith("did=")]
    return dids[0] if len(dids) == 1 else None


def did_over_https(handle: str, client: Outbound) -> str | None:
    try:
        body = client.get(f"https://{handle}/.well-known/atproto-did", max_bytes=ATPROTO_DID_MAX_BYTES,
                          accept="text/plain")
    except OutboundError:
        return None
    try:
        return body.decode("ascii").strip()
    except UnicodeDecodeError:
        return None


_dns_lock = threading.Lock()
_dns: tuple[tuple[Any, ...], dns.resolver.Resolver] | None = None


def shared_dns_resolver() -> dns.resolver.Resolver:
    """The resolver for handle TXT lookups: ``DNS_NAMESERVERS`` when set, else the system's; rebuilt when its
    settings change. Raises dns.exception.DNSException when the system has no resolver configured."""
    global _dns
    key = (tuple(settings.DNS_NAMESERVERS), settings.IDENTITY_TIMEOUT)
    with _dns_lock:
        if _dns is None or _dns[0] != key:
            if settings.DNS_NAMESERVERS:
                resolver = dns.resolver.Resolver(configure=False)
                resolver.nameservers = [dns.nameserver.Do53Nameserver(address, port)
                                        for address, port in settings.DNS_NAMESERVERS]
            else:
                resolver = dns.resolver.Resolver()
            resolver.timeout = resolver.lifetime = settings.IDENTITY_TIMEOUT
            _dns = (key, resolver)
        return _dns[1]
