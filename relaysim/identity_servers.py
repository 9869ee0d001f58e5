"""Local stand-ins for the identity services of the network, on loopback, for tests and the simulator.

``HttpService`` is what the local HTTP servers share: a thread per connection, a port of their own (0: a free
one), fault knobs (a delay before every answer, 429 with ``Retry-After`` or 500 for the next N requests) and a
log of the requests; ``relaysim.pds.LocalPds`` is one too. ``LocalPlc`` answers as a PLC directory
(``GET /<did>``: the document, 404 for an unknown DID, 410 for a tombstoned one) and, by the request's Host
header, as the web hosts of did:web DIDs (``/.well-known/did.json``) and of handles
(``/.well-known/atproto-did``); point ``IDENTITY_HOST_OVERRIDES`` at it for those host names. ``LocalDns`` is
a UDP DNS server answering TXT queries for ``_atproto.<handle>``. All are mutable while they run and are
context managers.
"""

import contextlib
import json
import socketserver
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset

LOOPBACK = "127.0.0.1"
TXT_STRING_MAX = 255  # bytes in one character-string of a TXT record
UDP_ANSWER_MAX = 512  # without EDNS


@dataclass(frozen=True)
class Request:
    at: float  # time.monotonic() when it arrived
    host: str
    path: str
    query: str = ""  # what followed the "?"


Answer = tuple[int, dict[str, str], bytes]  # status, headers, body


class Running:
    """Something started and stopped (a server, a set of them): ``with`` starts it and stops it on the way out."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


class _Server(Running):
    """Start and stop of a socketserver run in a thread."""

    def __init__(self, server: socketserver.BaseServer) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a client opening more connections at once (an indexer resolving a
    # batch's DIDs on 16 threads) has the others' SYNs dropped, and each waits a second for its retransmission.
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (a timeout, a body too large for it) is not the server's error."""
        if not isinstance(sys.exception(), OSError):
            super().handle_error(request, client_address)


class HttpService(_Server):
    """An HTTP server on 127.0.0.1 (``port`` 0: a free one) that answers GET requests through ``_answer``, with
    the fault knobs every local stand-in shares: a delay before every answer, 429 (with ``Retry-After``) or
    500 for the next N requests, a log of the requests (``requests``) and the most it answered at once
    (``peak_concurrency``)."""

    def __init__(self, *, port: int = 0) -> None:
        self.delay = 0.0  # seconds slept before every answer
        self.requests: list[Request] = []
        self.peak_concurrency = 0
        self._answering = 0
        self._lock = threading.Lock()
        self._faults: list[tuple[int, dict[str, str]]] = []  # (status, headers) of the next answers
        super().__init__(_QuietHTTPServer((LOOPBACK, port), self._handler()))

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    @property
    def request_count(self) -> int:
        return len(self.requests)

    def answer_429(self, count: int, *, retry_after: int | None = None, ratelimit_reset: int | None = None) -> None:
        """The next ``count`` requests get 429, with these headers when given."""
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if ratelimit_reset is not None:
            headers["RateLimit-Reset"] = str(ratelimit_reset)
        with self._lock:
            self._faults.extend([(HTTPStatus.TOO_MANY_REQUESTS, headers)] * count)

    def answer_500(self, count: int) -> None:
        """The next ``count`` requests get 500."""
        with self._lock:
            self._faults.extend([(HTTPStatus.INTERNAL_SERVER_ERROR, {})] * count)

    def _respond(self, host: str, path: str, query: str) -> Answer:
        with self._lock:
            self.requests.append(Request(at=time.monotonic(), host=host, path=path, query=query))
            if self._faults:
                status, headers = self._faults.pop(0)
                return status, headers, b"{}"
        return self._answer(host, path, query)

    def _answer(self, host: str, path: str, query: str) -> Answer:
        """(status, headers, body) of a GET of ``path`` (``query`` is what followed the ``?``) on ``host``."""
        raise NotImplementedError

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: with Nagle's algorithm the body waits for the client's
            # delayed ACK, 40 ms per answer.
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                with service._lock:
                    service._answering += 1
                    service.peak_concurrency = max(service.peak_concurrency, service._answering)
                try:
                    if service.delay:
                        time.sleep(service.delay)
                    host = (self.headers.get("Host") or "").rsplit(":", 1)[0].lower()
                    path, _, query = self.path.partition("?")
                    status, headers, body = service._respond(host, path, query)
                finally:
                    with service._lock:
                        service._answering -= 1
                # The client may have given up during the delay.
                with contextlib.suppress(OSError):
                    self.send_response(status)
                    for name, value in {"Content-Length": str(len(body)), **headers}.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: tests read ``requests`` instead."""

        return Handler


class LocalPlc(HttpService):
    """A PLC directory, did:web host and atproto-did host in one. Values of ``documents`` and
    ``web_documents`` are served as JSON, unless they are bytes or str (served as they are, to test what
    malformed documents do)."""

    def __init__(self, *, port: int = 0) -> None:
        self.documents: dict[str, Any] = {}  # did -> its document at GET /<did>
        self.tombstoned: set[str] = set()  # DIDs answered with 410
        self.web_documents: dict[str, Any] = {}  # host -> its /.well-known/did.json
        self.atproto_dids: dict[str, str] = {}  # host -> the body of its /.well-known/atproto-did
        super().__init__(port=port)

    def _answer(self, host: str, path: str, query: str) -> Answer:
        if path == "/.well-known/did.json":
            return self._document(self.web_documents.get(host))
        if path == "/.well-known/atproto-did":
            body = self.atproto_dids.get(host)
            if body is None:
                return HTTPStatus.NOT_FOUND, {}, b"not found"
            return HTTPStatus.OK, {"Content-Type": "text/plain"}, body.encode()
        did = path.lstrip("/")
        if did in self.tombstoned:
            return HTTPStatus.GONE, {}, b'{"message": "DID not available: tombstoned"}'
        return self._document(self.documents.get(did))

    @staticmethod
    def _document(document: Any) -> Answer:
        if document is None:
            return HTTPStatus.NOT_FOUND, {}, b'{"message": "DID not registered"}'
        if isinstance(document, str):
            document = document.encode()
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        return HTTPStatus.OK, {"Content-Type": "application/did+ld+json"}, body


class LocalDns(_Server):
    """Answers TXT queries for ``_atproto.<handle>`` from ``txt`` (handle -> TXT values, e.g.
    ``["did=did:plc:..."]``), else from ``handles`` (handle -> DID, answered as ``did=<DID>``); any other name
    is NXDOMAIN. ``delay`` seconds pass before each answer."""

    def __init__(self, *, port: int = 0, handles: Mapping[str, str] | None = None) -> None:
        self.txt: dict[str, list[str]] = {}
        self.handles: Mapping[str, str] = {} if handles is None else handles
        self.delay = 0.0
        self.queries: list[str] = []  # the names asked, in order
        server = socketserver.ThreadingUDPServer((LOOPBACK, port), self._handler())
        server.daemon_threads = True
        super().__init__(server)

    def _response(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        self.queries.append(name)
        values = self._txt_values(name.removeprefix("_atproto.")) if name.startswith("_atproto.") else None
        if values is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT and values:
            rrset = dns.rrset.RRset(question.name, dns.rdataclass.IN, dns.rdatatype.TXT)
            for value in values:
                data = value.encode()
                strings = [data[start:start + TXT_STRING_MAX] for start in range(0, len(data), TXT_STRING_MAX)]
                rrset.add(dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings or [b""]), ttl=60)
            response.answer.append(rrset)
        try:
            return response.to_wire(max_size=query.payload if query.edns >= 0 else UDP_ANSWER_MAX)
        except dns.exception.TooBig:
            response.answer.clear()
            response.flags |= dns.flags.TC
            return response.to_wire()

    def _txt_values(self, handle: str) -> list[str] | None:
        values = self.txt.get(handle)
        if values is None:
            did = self.handles.get(handle)
            return None if did is None else [f"did={did}"]
        return values

    def _handler(self) -> type[socketserver.BaseRequestHandler]:
        local_dns = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                wire, sock = self.request
                if local_dns.delay:
                    time.sleep(local_dns.delay)
                answer = local_dns._response(wire)
                if answer is not None:
                    sock.sendto(answer, self.client_address)

        return Handler
