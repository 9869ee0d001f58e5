from django.db import connection
from django.http import HttpRequest, JsonResponse

from appview import redis_store


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
