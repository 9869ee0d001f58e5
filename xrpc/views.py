"""The one HTTP entry point of the read API: ``GET /xrpc/<NSID>``.

Each call is rate-limited per client IP (a fixed window counted in Redis, with ``RateLimit-*`` headers),
has its parameters checked against the lexicon, and runs in a read-only transaction whose statements are
cut off after ``XRPC_STATEMENT_TIMEOUT_MS``. Queries run in a thread pool (each thread its own database
connection), so that slow ones do not queue the others behind them. Every failure is an XRPC error body
``{"error", "message"}``; nothing a client sends produces a traceback.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import SuspiciousOperation
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.http import HttpRequest, HttpResponse

from pipeline import redis_store
from xrpc import params
from xrpc.errors import XrpcError
from xrpc.queries import QUERIES

logger = logging.getLogger(__name__)


def json_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse(orjson.dumps(body), status=status, content_type="application/json; charset=utf-8")
    for name, value in (headers or {}).items():
        response[name] = value
    return response


@dataclass(frozen=True, slots=True)
class RateLimit:
    allowed: bool
    headers: dict[str, str]


def _rate_limit(address: str) -> RateLimit:
    """Counts this call against the client's window; a Redis outage lets calls through."""
    limit, window = settings.XRPC_RATE_LIMIT, settings.XRPC_RATE_WINDOW_SECONDS
    now = time.time()
    bucket = int(now // window)
    key = redis_store.key(f"xrpc:rate:{address}:{bucket}")
    try:
        pipe = redis_store.connect().pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, window + 1)
        used = int(pipe.execute()[0])
    except redis.RedisError as exc:
        logger.warning("rate limit not counted (Redis: %s)", exc)
        used = 0
    reset = max(int((bucket + 1) * window - now), 0)
    headers = {"RateLimit-Limit": str(limit), "RateLimit-Remaining": str(max(limit - used, 0)),
               "RateLimit-Reset": str(reset), "RateLimit-Policy": f"{limit};w={window}"}
    return RateLimit(allowed=used <= limit, headers=headers)


def _run(query: Callable[[dict[str, Any]], dict[str, Any]], values: dict[str, Any]) -> dict[str, Any]:
    # A pool thread's connection lives as Django's request connections do: kept for DB_CONN_MAX_AGE, closed
    # after the call when that is 0, replaced when it broke.
    close_old_connections()
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION READ ONLY")
            # No parallel workers: each costs a process start, which made these millisecond queries 4-7 times
            # slower and pushed the planner to sequential scans (docs/benchmarks.md, "Read API: findings").
            cursor.execute("SELECT set_config('statement_timeout', %s, true),"
                           " set_config('max_parallel_workers_per_gather', '0', true)",
                           [str(settings.XRPC_STATEMENT_TIMEOUT_MS)])
            return query(values)
    finally:
        close_old_connections()


def _call(nsid: str, query: Callable[[dict[str, Any]], dict[str, Any]], request: HttpRequest) -> HttpResponse:
    limit = _rate_limit(request.META.get("REMOTE_ADDR") or "unknown")
    if not limit.allowed:
        return json_response({"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"}, 429, limit.headers)
    try:
        values = params.parse(nsid, request.GET)
        return json_response(_run(query, values), headers=limit.headers)
    except XrpcError as exc:
        return json_response(exc.body(), exc.status, limit.headers)
    except SuspiciousOperation as exc:  # a query string Django refuses to parse (TooManyFieldsSent)
        return json_response({"error": "InvalidRequest", "message": str(exc)}, 400, limit.headers)
    except DatabaseError as exc:
        if isinstance(exc.__cause__, psycopg.errors.QueryCanceled):
            return json_response({"error": "UpstreamTimeout", "message": "The query took too long"}, 504, limit.headers)
        logger.warning("%s: database unavailable: %s", nsid, exc)
        return json_response({"error": "InternalServerError", "message": "The index is unavailable"}, 503,
                         limit.headers)


async def xrpc(request: HttpRequest, nsid: str) -> HttpResponse:
    query = QUERIES.get(nsid)
    if query is None:
        response = json_response({"error": "MethodNotImplemented", "message": "Method Not Implemented"}, 501)
        # A client's typo, not a server fault: keep django.request from logging this 5xx as an ERROR.
        response._has_been_logged = True  # type: ignore[attr-defined]
        return response
    if request.method not in ("GET", "HEAD"):
        return json_response({"error": "InvalidRequest", "message": "Incorrect HTTP method (GET expected)"}, 405)
    try:
        return await sync_to_async(_call, thread_sensitive=False)(nsid, query, request)
    except Exception:
        logger.exception("%s failed", nsid)
        return json_response({"error": "InternalServerError", "message": "Internal Server Error"}, 500)
