"""Counts and times the HTTP requests of this web process for Prometheus (served at ``/metrics``).

The counters live in the process's memory: with several daphne processes behind one address, each keeps
its own and a scrape sees the process that answered it (scrape each process, or run one). The cluster's
own figures (``cluster:metrics``, the queue, the workers) are read from Redis and PostgreSQL at scrape
time instead, and are the same whichever process answers.

Requests are labelled by route kind (``dashboard``, ``api``, ``admin``, ``xrpc``, ``metrics``, ``health``,
``static``, ``other``) and, for ``xrpc``, by NSID when the read API serves it (any other name is
``unknown``): labels come from a fixed set, never from what a client sends, so the number of series
stays bounded.
"""

import time
from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.utils.decorators import sync_and_async_middleware
from prometheus_client import Counter, Histogram, disable_created_metrics

from xrpc.queries import QUERIES

# The "_created" series (a timestamp per labelled child) double the output and no dashboard uses them.
disable_created_metrics()

REQUESTS = Counter("appview_http_requests", "HTTP requests this web process answered, by route kind and status class",
                   ["kind", "nsid", "status"])
DURATION = Histogram("appview_http_request_duration_seconds",
                     "Time this web process took to answer an HTTP request, by route kind", ["kind", "nsid"],
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))

# Django URL names of the dashboard app -> route kind.
KIND_BY_URL_NAME = {"dashboard": "dashboard", "api-metrics": "api", "healthz": "health", "metrics": "metrics"}


def route_kind(request: HttpRequest) -> tuple[str, str]:
    """The (kind, nsid) labels of a request, once Django has routed it (or not)."""
    match = request.resolver_match
    if match is None:
        # Not routed: a static file (WhiteNoise answers before routing), a 404, or refused earlier.
        return ("static", "") if request.path.startswith(settings.STATIC_URL) else ("other", "")
    if "admin" in match.namespaces:
        return "admin", ""
    if match.route.startswith("xrpc/"):
        nsid = match.kwargs.get("nsid", "")
        return "xrpc", nsid if nsid in QUERIES else "unknown"
    return KIND_BY_URL_NAME.get(match.url_name or "", "other"), ""


def observe(request: HttpRequest, response: HttpResponseBase, seconds: float) -> None:
    kind, nsid = route_kind(request)
    REQUESTS.labels(kind, nsid, f"{response.status_code // 100}xx").inc()
    DURATION.labels(kind, nsid).observe(seconds)


@sync_and_async_middleware
def request_metrics_middleware(
    get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]],
) -> Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]:
    # Async under daphne, so that the chain below it stays async; sync under the test client and WSGI.
    if iscoroutinefunction(get_response):
        async def timed_async(request: HttpRequest) -> HttpResponseBase:
            started = time.perf_counter()
            response = await get_response(request)  # type: ignore[misc]
            observe(request, response, time.perf_counter() - started)
            return response

        return markcoroutinefunction(timed_async)

    def timed(request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        response = get_response(request)
        observe(request, response, time.perf_counter() - started)  # type: ignore[arg-type]
        return response  # type: ignore[return-value]

    return timed
