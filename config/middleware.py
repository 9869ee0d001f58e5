"""Middleware that keeps what a client sends from reaching a 500, a traceback or a long query (SPEC section 14).

- ``RejectMalformedRequestsMiddleware`` answers 400 to a NUL character in the path or the query string before
  anything reads them (PostgreSQL refuses NUL in text, so it would surface as a server error deep in a view),
  and turns the client errors a view raises (a refused admin lookup, a value the database refuses, a
  forbidden action) into 4xx answers logged as one warning line, where Django would log a traceback.
- ``WebStatementTimeoutMiddleware`` runs every query of a request to a synchronous view (the admin, the
  dashboard, ``/api/metrics``, ``/healthz``) under ``statement_timeout = WEB_STATEMENT_TIMEOUT_MS``, and answers
  504 when one is cancelled.
- ``StaticFilesMiddleware`` serves the static files (WhiteNoise) without taking async requests out of the
  event loop.
- ``ReadApiMiddleware`` hands the read API's requests (``/xrpc/``) to its view past Django's own middlewares,
  giving their answers the same security headers.
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core.exceptions import (
    BadRequest,
    DisallowedHost,
    PermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.db import DatabaseError, DataError, OperationalError, connection
from django.http import HttpRequest, HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.urls import Resolver404, ResolverMatch, resolve
from django.views import defaults
from whitenoise.middleware import WhiteNoiseMiddleware

from config import security
from xrpc.views import json_response

logger = logging.getLogger(__name__)

GetResponse = Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]

# The read API answers every input itself, NUL included, with an XRPC error body (MethodNotImplemented for a
# NUL in the method name), and runs its queries with its own timeout: both middlewares leave it alone.
SELF_GUARDED_PATH_PREFIXES = ("/xrpc/",)


def _plain_response(status: int, text: str) -> HttpResponse:
    return HttpResponse(text + "\n", status=status, content_type="text/plain; charset=utf-8")


def _has_nul(request: HttpRequest) -> bool:
    query = request.META.get("QUERY_STRING", "")
    return "\x00" in request.path or "%00" in query or "\x00" in query


class DualModeMiddleware:
    """A middleware that runs in a synchronous chain (WSGI) and in an asynchronous one (ASGI) alike, so that
    Django never moves a request to a thread for it."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)


class RejectMalformedRequestsMiddleware(DualModeMiddleware):
    """Placed first in ``MIDDLEWARE``, so that no other middleware or view sees a NUL."""

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        return self._refusal(request) or self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        return self._refusal(request) or await self.get_response(request)  # type: ignore[misc]

    @staticmethod
    def _refusal(request: HttpRequest) -> HttpResponse | None:
        if request.path.startswith(SELF_GUARDED_PATH_PREFIXES) or not _has_nul(request):
            return None
        return _plain_response(400, "Bad Request: the URL contains a NUL character.")

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, SuspiciousOperation):
            if isinstance(exception, (RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent)):
                # What Django does too: the body cannot be read again, so nothing may try.
                request._mark_post_parse_error()  # type: ignore[attr-defined]
            # The security logger Django uses, at the level of a refused request rather than a server fault.
            logging.getLogger(f"django.security.{type(exception).__name__}").warning(
                "%s: %s", request.path[:200], exception
            )
            response = defaults.bad_request(request, exception)
        elif isinstance(exception, BadRequest):
            logger.warning("bad request %s: %s", request.path[:200], exception)
            response = defaults.bad_request(request, exception)
        elif isinstance(exception, DataError):
            # A value the database cannot take (an invalid regular expression, a number out of range): the
            # client's input, not a fault of the server.
            logger.warning("bad request %s: the database refused a value: %s", request.path[:200],
                           str(exception).splitlines()[0] if str(exception) else type(exception).__name__)
            response = _plain_response(400, "Bad Request: a value in this request is not valid here.")
        elif isinstance(exception, PermissionDenied):
            logger.warning("forbidden %s: %s", request.path[:200], exception or "permission denied")
            response = defaults.permission_denied(request, exception)
        else:
            return None
        response._has_been_logged = True  # type: ignore[attr-defined]  # logged above, in one line
        return response


class WebStatementTimeoutMiddleware(DualModeMiddleware):
    """Sets ``statement_timeout`` on the request's connection just before a synchronous view runs, and resets
    it once the response is complete (the connection outlives the request and may serve other work).

    Asynchronous views are left alone: their queries run on other threads' connections (the read API sets
    its own timeout inside each transaction). The setting is made in the thread that then runs the view
    (Django calls ``process_view`` there, under ASGI too), so it holds for the view's queries and those of
    the template it renders.
    """

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        try:
            return self.get_response(request)
        finally:
            self._reset(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        try:
            return await self.get_response(request)  # type: ignore[misc]
        finally:
            if getattr(request, "_statement_timeout_set", False):
                await sync_to_async(self._reset, thread_sensitive=True)(request)

    def process_view(self, request: HttpRequest, view_func: Callable[..., Any], view_args: Any,
                     view_kwargs: Any) -> None:
        if iscoroutinefunction(view_func) or request.path.startswith(SELF_GUARDED_PATH_PREFIXES):
            return
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('statement_timeout', %s, false)",
                               [str(settings.WEB_STATEMENT_TIMEOUT_MS)])
        except DatabaseError:
            return  # PostgreSQL is unreachable: the view reports that its own way (healthz, the dashboard)
        request._statement_timeout_set = True  # type: ignore[attr-defined]

    @staticmethod
    def _reset(request: HttpRequest) -> None:
        if not getattr(request, "_statement_timeout_set", False):
            return
        request._statement_timeout_set = False  # type: ignore[attr-defined]
        try:
            with connection.cursor() as cursor:
                cursor.execute("RESET statement_timeout")
        except DatabaseError:
            pass  # a broken connection is replaced before its next use, without the setting

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not (isinstance(exception, OperationalError)
                and isinstance(exception.__cause__, psycopg.errors.QueryCanceled)):
            return None
        seconds = settings.WEB_STATEMENT_TIMEOUT_MS / 1000
        logger.warning("query cancelled after %g s: %s", seconds, request.get_full_path()[:300])
        response = _plain_response(
            504, f"Gateway Timeout: a database query of this page took longer than {seconds:g} s and was cancelled. "
                 "Narrow the filter or the search (an exact DID, handle or AT-URI is always fast).")
        response._has_been_logged = True  # type: ignore[attr-defined]
        return response


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise, able to run in an async chain. WhiteNoise's middleware is synchronous only, and under
    daphne Django then runs it, and every request behind it, through its one thread for synchronous code:
    the read API's requests waited for each other there. Finding a static file is a dictionary lookup, done
    in place; only serving one goes to a thread."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse, settings: Any = settings) -> None:
        super().__init__(get_response, settings)
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self._call_async(request)
        return super().__call__(request)

    async def _call_async(self, request: HttpRequest) -> HttpResponse:
        static_file = self.find_file(request.path_info) if self.autorefresh else self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve, thread_sensitive=False)(static_file, request)
        return await self.get_response(request)  # type: ignore[misc]


class ReadApiMiddleware(DualModeMiddleware):
    """Sends each read API request (``/xrpc/``) straight to its view, past the middlewares after this one.

    Under daphne, Django runs each hook of each of its own middlewares (security, sessions, common, CSRF,
    authentication, messages, frame options) in a thread and comes back: a dozen thread hops per request,
    which cost the read API more CPU than its queries (docs/benchmarks.md, "Read API: findings"). The read API
    uses no session, cookie, user or message; what it does need of them is done here, in place: the Host check and
    Content-Length (``CommonMiddleware``'s), ``SecurityMiddleware``'s redirect and headers, frame denial and the
    Content-Security-Policy, so that its answers carry the headers every other answer carries."""

    def __init__(self, get_response: GetResponse) -> None:
        super().__init__(get_response)
        # Used for their hooks only, which read the request and set headers.
        self.security = SecurityMiddleware(get_response)
        self.frame_options = XFrameOptionsMiddleware(get_response)
        self.policy = security.policy_header(settings.SECURE_CSP)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        match = _read_api_route(request)
        if match is None:
            return self.get_response(request)
        response = self._before(request) or async_to_sync(match.func)(request, **match.kwargs)
        return self._after(request, response)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        match = _read_api_route(request)
        if match is None:
            return await self.get_response(request)  # type: ignore[misc]
        response = self._before(request) or await match.func(request, **match.kwargs)
        return self._after(request, response)

    def _before(self, request: HttpRequest) -> HttpResponse | None:
        try:
            request.get_host()
        except DisallowedHost as exc:
            logging.getLogger("django.security.DisallowedHost").warning("%s: %s", request.path[:200], exc)
            return json_response({"error": "InvalidRequest", "message": "This server does not serve that host"}, 400)
        return self.security.process_request(request)

    def _after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if not response.streaming and not response.has_header("Content-Length"):  # as CommonMiddleware does
            response.headers["Content-Length"] = str(len(response.content))
        response = self.security.process_response(request, response)
        response = self.frame_options.process_response(request, response)
        response.headers.setdefault(security.HEADER, self.policy)
        return response


def _read_api_route(request: HttpRequest) -> ResolverMatch | None:
    if not request.path_info.startswith(SELF_GUARDED_PATH_PREFIXES):
        return None
    try:
        match = resolve(request.path_info)
    except Resolver404:
        return None
    request.resolver_match = match  # for the request metrics' labels
    return match
