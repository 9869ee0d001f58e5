"""Outbound HTTP to hosts we do not control (the PLC directory, did:web hosts, handles' domains, PDSes).

Every request has connect/read timeouts and an overall deadline, at most ``IDENTITY_CONCURRENCY`` requests
run at once per host, and a response body larger than the caller's limit is abandoned while it is read.
A host that answers 429 is not called again before the time its ``Retry-After`` or ``RateLimit-Reset``
names; one that answers 5xx, times out or refuses connections is left alone for an exponentially growing
while. Meanwhile callers get ``OutboundError("backing-off")`` at once instead of waiting.

Only URLs of the operator's own configuration (``trusted``: the PLC directory) may use plain http or an
IP address. Any other URL must be https to a domain name, unless ``IDENTITY_HOST_OVERRIDES`` (dev and tests)
maps its host to a local address, which is then reached over plain http with the original Host header.
"""

import email.utils
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings

from protocol import syntax

USER_AGENT = "appview-indexer (AT Protocol AppView; identity resolution)"
# Waits after consecutive failures of a host: 1 s, 2 s, 4 s ... up to a minute.
FAILURE_BACKOFF_BASE = 1.0
FAILURES_BEFORE_BACKOFF = 3
FAILURE_BACKOFF_MAX = 60.0
# A 429 without a usable Retry-After or RateLimit-Reset waits like a failure; none waits longer than this.
RATE_LIMIT_WAIT_MAX = 3600.0
# A RateLimit-Reset above this is a Unix time (as Bluesky's PDSes send), below it a number of seconds.
EPOCH_THRESHOLD = 1_000_000_000
READ_CHUNK = 16 * 1024
# Never on the public internet (RFC 6761, RFC 6762, RFC 9476 and ICANN's .internal); .test stays allowed for
# test networks, as the protocol's reference implementations do.
RESERVED_TLDS = frozenset({"alt", "arpa", "example", "internal", "invalid", "local", "localhost", "onion"})


class OutboundError(Exception):
    """A request that gave no usable answer. ``reason``: "not-found" (404, 410), "backing-off" (the host is
    rate limited or failing; ``retry_after`` seconds left), "timeout", "unavailable" (connection failures,
    5xx and other statuses), "too-large", "invalid-json" (not a JSON object) or "refused" (a URL we will not
    call)."""

    def __init__(self, reason: str, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status
        self.retry_after = retry_after


@dataclass
class _HostState:
    slots: threading.BoundedSemaphore
    blocked_until: float = 0.0  # time.monotonic()
    failures: int = 0


@dataclass(frozen=True)
class _Target:
    url: str  # what is requested: the original URL, or http://<override address>/<path>
    host: str  # the host name backoff and concurrency are counted against
    headers: dict[str, str] = field(default_factory=dict)


class Outbound:
    """A thread-safe client; one per process (``shared_outbound``) so that limits and backoff are shared."""

    def __init__(self, *, timeout: float, concurrency: int, host_overrides: dict[str, tuple[str, int]]) -> None:
        self.timeout = timeout
        self.concurrency = concurrency
        self.host_overrides = dict(host_overrides)
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        self._hosts: dict[str, _HostState] = {}
        self._lock = threading.Lock()

    def get(self, url: str, *, max_bytes: int, trusted: bool = False, accept: str = "application/json") -> bytes:
        """The body of a 200 answer to GET ``url``, at most ``max_bytes``; OutboundError otherwise."""
        chunks: list[bytes] = []
        self._request(url, chunks.append, max_bytes=max_bytes, trusted=trusted, accept=accept,
                      deadline=2 * self.timeout)
        return b"".join(chunks)

    def download(self, url: str, sink: BinaryIO, *, max_bytes: int, accept: str) -> int:
        """Writes the body of a 200 answer to GET ``url`` into ``sink`` as it arrives (a repository export may
        be far larger than memory should hold); returns its size. The whole transfer may take up to 60 times
        the timeout; each network operation still has the timeout. OutboundError otherwise."""
        return self._request(url, sink.write, max_bytes=max_bytes, trusted=False, accept=accept,
                             deadline=60 * self.timeout)

    def _request(self, url: str, sink: Callable[[bytes], object], *, max_bytes: int, trusted: bool, accept: str,
                 deadline: float) -> int:
        target = self._target(url, trusted=trusted)
        state = self._host_state(target.host)
        self._refuse_while_backing_off(state, target.host)
        if not state.slots.acquire(timeout=self.timeout):
            raise OutboundError("timeout", f"{target.host}: {self.concurrency} requests already in flight")
        try:
            # A 429 may have come while this call waited for a slot.
            self._refuse_while_backing_off(state, target.host)
            status, headers, size = self._fetch(target, sink, max_bytes=max_bytes, accept=accept, deadline=deadline)
        except httpx.TimeoutException:
            self._record_failure(state)
            raise OutboundError("timeout", f"{target.host}: no answer within {self.timeout} s") from None
        except httpx.HTTPError as exc:
            self._record_failure(state)
            raise OutboundError("unavailable", f"{target.host}: {type(exc).__name__}: {exc}") from None
        finally:
            state.slots.release()
        self._judge(state, target.host, status, headers)
        return size

    def get_json_object(self, url: str, *, max_bytes: int, trusted: bool = False) -> dict[str, Any]:
        body = self.get(url, max_bytes=max_bytes, trusted=trusted)
        try:
            value = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise OutboundError("invalid-json", f"{url}: not JSON ({type(exc).__name__})") from None
        if not isinstance(value, dict):
            raise OutboundError("invalid-json", f"{url}: JSON {type(value).__name__}, not an object")
        return value

    def close(self) -> None:
        self._client.close()

    def _target(self, url: str, *, trusted: bool) -> _Target:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise OutboundError("refused", f"not a URL: {url[:200]!r}") from None
        host = (parts.hostname or "").lower()
        if not host or parts.username is not None or parts.password is not None \
                or parts.scheme not in ("http", "https"):
            raise OutboundError("refused", f"not an http(s) URL with a host and no credentials: {url[:200]!r}")
        override = self.host_overrides.get(host)
        if override is not None:
            address, override_port = override
            netloc = f"[{address}]:{override_port}" if ":" in address else f"{address}:{override_port}"
            local = urlunsplit(("http", netloc, parts.path or "/", parts.query, ""))
            return _Target(url=local, host=host, headers={"Host": parts.netloc})
        if not trusted and (parts.scheme != "https" or not is_public_hostname(host)):
            raise OutboundError("refused", f"only https to a public domain name is allowed: {url[:200]!r}")
        return _Target(url=url, host=host if port is None else f"{host}:{port}")

    def _host_state(self, host: str) -> _HostState:
        with self._lock:
            state = self._hosts.get(host)
            if state is None:
                state = self._hosts[host] = _HostState(slots=threading.BoundedSemaphore(self.concurrency))
            return state

    def _refuse_while_backing_off(self, state: _HostState, host: str) -> None:
        wait = state.blocked_until - time.monotonic()
        if wait > 0:
            raise OutboundError("backing-off", f"{host}: backing off for {wait:.1f} s more", retry_after=wait)

    def _fetch(self, target: _Target, sink: Callable[[bytes], object], *, max_bytes: int, accept: str,
               deadline: float) -> tuple[int, httpx.Headers, int]:
        # The timeouts bound each network operation; the deadline bounds a server that trickles its answer.
        ends_at = time.monotonic() + deadline
        headers = {"Accept": accept, **target.headers}
        with self._client.stream("GET", target.url, headers=headers) as response:
            if response.status_code != 200:
                return response.status_code, response.headers, 0
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise OutboundError("too-large", f"{target.host}: {declared} bytes, more than {max_bytes}")
            size = 0
            for chunk in response.iter_bytes(READ_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise OutboundError("too-large", f"{target.host}: more than {max_bytes} bytes")
                if time.monotonic() > ends_at:
                    raise httpx.ReadTimeout("the answer took longer than its deadline")
                sink(chunk)
            return 200, response.headers, size

    def _judge(self, state: _HostState, host: str, status: int, headers: httpx.Headers) -> None:
        if status == 429:
            wait = self._block(state, rate_limit_wait(headers, now=time.time()))
            raise OutboundError("backing-off", f"{host}: 429, backing off for {wait:.1f} s", status=status,
                                retry_after=wait)
        if status >= 500:
            wait = self._record_failure(state, rate_limit_wait(headers, now=time.time()))
            raise OutboundError("unavailable", f"{host}: HTTP {status}, backing off for {wait:.1f} s",
                                status=status, retry_after=wait)
        with self._lock:
            state.failures = 0
        if status in (404, 410):
            raise OutboundError("not-found", f"{host}: HTTP {status}", status=status)
        if status != 200:
            raise OutboundError("unavailable", f"{host}: HTTP {status}", status=status)

    def _record_failure(self, state: _HostState, wait: float | None = None) -> float:
        """Counts a failure; a host that failed FAILURES_BEFORE_BACKOFF times in a row (or named its wait) is
        not called again for a while. One slow answer of a host that serves every DID (the PLC directory) does
        not stop every resolution at once."""
        with self._lock:
            state.failures += 1
            if wait is None:
                if state.failures < FAILURES_BEFORE_BACKOFF:
                    return 0.0
                wait = min(FAILURE_BACKOFF_BASE * 2 ** (state.failures - FAILURES_BEFORE_BACKOFF),
                           FAILURE_BACKOFF_MAX)
            state.blocked_until = max(state.blocked_until, time.monotonic() + wait)
            return wait

    def _block(self, state: _HostState, wait: float | None) -> float:
        if wait is None:
            return self._record_failure(state)
        with self._lock:
            state.blocked_until = max(state.blocked_until, time.monotonic() + wait)
            return wait


def is_public_hostname(host: str) -> bool:
    """Whether ``host`` is a domain name (not an IP address, not a bare name) outside the top-level domains
    reserved for local or special use."""
    return syntax.is_handle(host) and host.rsplit(".", 1)[-1].lower() not in RESERVED_TLDS


def rate_limit_wait(headers: httpx.Headers, *, now: float) -> float | None:
    """Seconds the answer asks us to wait (``Retry-After``: seconds or an HTTP date; ``RateLimit-Reset``:
    a Unix time or seconds), within 0 .. RATE_LIMIT_WAIT_MAX; None when it names no usable time."""
    retry_after = headers.get("Retry-After", "").strip()
    if retry_after:
        if retry_after.isdigit():
            return min(float(retry_after), RATE_LIMIT_WAIT_MAX)
        try:
            moment = email.utils.parsedate_to_datetime(retry_after)
        except (TypeError, ValueError, IndexError):
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return min(max(moment.timestamp() - now, 0.0), RATE_LIMIT_WAIT_MAX)
    reset = headers.get("RateLimit-Reset", "").strip()
    if reset.isdigit():
        value = float(reset)
        return min(max(value - now if value > EPOCH_THRESHOLD else value, 0.0), RATE_LIMIT_WAIT_MAX)
    return None


_shared_lock = threading.Lock()
_shared: tuple[tuple[Any, ...], Outbound] | None = None


def shared_outbound() -> Outbound:
    """This process's client, rebuilt when its settings change (tests change them)."""
    global _shared
    key = (settings.IDENTITY_TIMEOUT, settings.IDENTITY_CONCURRENCY,
           tuple(sorted(settings.IDENTITY_HOST_OVERRIDES.items())))
    with _shared_lock:
        if _shared is None or _shared[0] != key:
            _shared = (key, Outbound(timeout=settings.IDENTITY_TIMEOUT, concurrency=settings.IDENTITY_CONCURRENCY,
                                     host_overrides=settings.IDENTITY_HOST_OVERRIDES))
        return _shared[1]
