import hmac
import json
import logging

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from dashboard import selectors
from dashboard.prometheus import ClusterCollector
from pipeline import redis_store

logger = logging.getLogger(__name__)


@require_safe
def index(request: HttpRequest) -> HttpResponse:
    """The dashboard page, with the latest snapshot inlined so that it shows data before its websocket opens."""
    try:
        snapshot = json.loads(selectors.latest_snapshot_json())
    except (redis.RedisError, DatabaseError) as exc:
        # The page still loads: it shows its data as stale and keeps trying to reach the server.
        logger.warning("dashboard page without a snapshot: %s: %s", type(exc).__name__, exc)
        snapshot = None
    return render(request, "dashboard/index.html", {"snapshot": snapshot})


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers and compose: both stores must answer."""
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as exc:  # any failure to reach the store is what this endpoint reports
        checks["postgres"] = f"error: {type(exc).__name__}"
    try:
        redis_store.connect().ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if healthy else "error", **checks}, status=200 if healthy else 503)


@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics in the text exposition format: this process's requests, then the cluster's figures.

    With ``METRICS_TOKEN`` set, only for ``Authorization: Bearer <METRICS_TOKEN>``."""
    if not _metrics_authorized(request):
        response = HttpResponse("401 Unauthorized: send Authorization: Bearer <METRICS_TOKEN>\n", status=401,
                                content_type="text/plain; charset=utf-8")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body = generate_latest(REGISTRY) + generate_latest(ClusterCollector())
    return HttpResponse(body, content_type=CONTENT_TYPE_PLAIN_0_0_4, headers={"Cache-Control": "no-store"})


def _metrics_authorized(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return True
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    # In constant time, so that the answer's timing does not tell how much of a guess was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode())
